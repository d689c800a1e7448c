from __future__ import annotations

import tomllib

import pytest

from kdnas_deploy.util.errors import KdnasError
from kdnas_deploy.fingerprint import fingerprint_id, machine_fingerprint
from kdnas_deploy.hardware import Precision, load_profile, parse_profile, profiles_dir, shipped_profiles

GOOD = {
    "name": "x",
    "runtime": {"provider": "CPUExecutionProvider", "intra_op_threads": 2},
    "model": {"precision": "fp32"},
    "shape": {"batch_size": 1, "seq_len": 128},
}


def _with(path: str, value):
    """GOOD with one dotted field replaced (value None deletes it)."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in GOOD.items()}
    *parents, leaf = path.split(".")
    node = data
    for p in parents:
        node = node[p]
    if value is None:
        del node[leaf]
    else:
        node[leaf] = value
    return data


def test_shipped_profiles_load_and_declare_precision():
    assert {"cpu", "cpu-int8", "cuda"} <= set(shipped_profiles())
    assert load_profile("cpu").precision is Precision.fp32
    assert load_profile("cpu-int8").precision is Precision.int8
    cuda = load_profile("cuda")  # validates on any machine, GPU or not
    assert cuda.precision is Precision.fp16 and cuda.uses_gpu
    assert cuda.runtime.provider == "CUDAExecutionProvider"
    assert load_profile(profiles_dir() / "cpu.toml") == load_profile("cpu")


@pytest.mark.parametrize(
    "path, value, words",
    [
        ("runtime.provider", "TPUExecutionProvider", "unknown provider 'TPUExecutionProvider'"),
        ("runtime.intra_op_threads", -1, "runtime.intra_op_threads"),
        ("runtime.inter_op_threads", "two", "runtime.inter_op_threads"),
        ("runtime.graph_optimization_level", "max", "runtime.graph_optimization_level"),
        ("runtime.spin", True, "unknown field runtime.spin"),
        ("runtime", None, "missing field runtime"),
        ("model.precision", "int4", "model.precision"),
        ("model.precision", "fp16", "fp16 needs a GPU provider"),
        ("model.opset", 9, "model.opset"),
        ("shape.batch_size", None, "missing field shape.batch_size"),
        ("shape.seq_len", 0, "shape.seq_len"),
        ("timing", {"repeats": 1}, "timing.repeats"),
        ("timing", {"max_spread": -0.1}, "timing.max_spread"),
        ("timing", {"warmup": -3}, "timing.warmup"),
        ("name", "", "name"),
    ],
)
def test_bad_profiles_name_the_field(path, value, words):
    with pytest.raises(KdnasError) as err:
        parse_profile(_with(path, value), "bad.toml")
    msg = str(err.value)
    assert msg.startswith("hardware profile bad.toml: ")
    assert words in msg and "\n" not in msg


def test_int8_on_gpu_provider_is_rejected():
    data = _with("runtime.provider", "CUDAExecutionProvider")
    data["model"] = {"precision": "int8"}
    with pytest.raises(KdnasError, match="int8 .* CPU providers only"):
        parse_profile(data, "bad.toml")


def test_gpu_provider_options_leave_out_the_default_device_only():
    cuda = load_profile("cuda")
    assert cuda.runtime.provider_options["device_id"] == 0  # still part of the profile and its hash
    assert cuda.providers() == [("CUDAExecutionProvider", {"cudnn_conv_algo_search": "DEFAULT"}), "CPUExecutionProvider"]
    second = cuda.model_copy(update={"runtime": cuda.runtime.model_copy(update={"provider_options": {"device_id": 1}})})
    assert second.providers() == [("CUDAExecutionProvider", {"device_id": "1"}), "CPUExecutionProvider"]


def test_profile_files_errors(tmp_path):
    with pytest.raises(KdnasError, match="unknown hardware profile 'tpu'.*cpu, cpu-int8, cpu-int8-static, cuda"):
        load_profile("tpu")
    with pytest.raises(KdnasError, match="no such file"):
        load_profile(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[runtime\nprovider = 1")
    with pytest.raises(KdnasError, match="not valid TOML"):
        load_profile(broken)


def test_user_profile_file_and_shape_override(tmp_path):
    text = (profiles_dir() / "cpu.toml").read_text().replace('name = "cpu"', 'name = "mine"')
    path = tmp_path / "mine.toml"
    path.write_text(text)
    mine = load_profile(path)
    assert mine.name == "mine" and mine.runtime == load_profile("cpu").runtime
    wide = mine.with_shape(batch_size=8, seq_len=64)
    assert (wide.shape.batch_size, wide.shape.seq_len) == (8, 64)
    with pytest.raises(KdnasError, match="shape.seq_len"):
        mine.with_shape(seq_len=0)


def test_content_hash_tracks_timing_settings_not_shape_or_name():
    cpu = load_profile("cpu")
    assert cpu.content_hash() == cpu.with_shape(batch_size=4).content_hash()
    renamed = parse_profile({**cpu.model_dump(mode="json"), "name": "other"}, "x")
    assert renamed.content_hash() == cpu.content_hash()
    assert load_profile("cpu-int8").content_hash() != cpu.content_hash()
    more = parse_profile({**cpu.model_dump(mode="json"), "timing": {"repeats": 99}}, "x")
    assert more.content_hash() != cpu.content_hash()


def test_fingerprint_covers_machine_software_and_profile():
    cpu, int8 = load_profile("cpu"), load_profile("cpu-int8")
    info = machine_fingerprint(cpu)
    for key in ("cpu", "cpu_count", "onnxruntime", "onnxruntime_providers", "torch", "transformers", "onnx", "opset", "profile_hash"):
        assert info[key] is not None, key
    assert fingerprint_id(info) == fingerprint_id(machine_fingerprint(cpu))
    assert fingerprint_id(info) != fingerprint_id(machine_fingerprint(int8))
    assert fingerprint_id(info) != fingerprint_id({**info, "onnxruntime": "0.0.1"})
    assert fingerprint_id(info) != fingerprint_id({**info, "cpu_count": 64})


def test_cuda_profile_on_a_machine_without_it_fails_clearly():
    import onnxruntime as ort

    from kdnas_deploy.hardware import gpu_name

    if "CUDAExecutionProvider" in ort.get_available_providers() and gpu_name():
        pytest.skip("this machine can run the cuda profile")
    with pytest.raises(KdnasError, match="cuda.*needs (CUDAExecutionProvider|a CUDA GPU)"):
        load_profile("cuda").check_runnable()


def test_shipped_profile_files_are_plain_toml():
    for name in shipped_profiles():
        data = tomllib.loads((profiles_dir() / f"{name}.toml").read_text())
        assert data["name"] == name
