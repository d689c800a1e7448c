"""Static int8: activation scales calibrated at export, so an answer does not depend on its batch-mates."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from kdnas_deploy.hardware import load_profile, parse_profile
from kdnas_deploy.util.errors import KdnasError


def _logits_by_batching(folder: Path) -> dict[str, np.ndarray]:
    """The artifact's dev logits, row order, under three batchings: one row at a time, length-sorted batches of 64
    (little padding, neighbours of equal length), and shuffled batches of 7 (other batch-mates, more padding)."""
    from kdnas_deploy.artifact.runtime import load_folder, onnx_logits
    from kdnas_deploy.data.prepare import prepare
    from kdnas_deploy.data.sources import DataSource
    from kdnas_deploy.latency.timing import make_session

    card, _, path, profile = load_folder(folder)
    prepared = prepare(str(folder), DataSource.from_dict(card["data"]), card["max_length"])
    dev, pad = prepared.encoded.dev, prepared.encoded.pad_token_id
    session = make_session(path, profile)
    return {"single": onnx_logits(session, dev, 1, pad), "sorted64": onnx_logits(session, dev, 64, pad),
            "shuffled7": onnx_logits(session, dev, 7, pad, order=np.random.default_rng(1).permutation(len(dev)))}


def test_static_int8_answers_do_not_depend_on_the_batching(static_artifact: Path, int8_artifact: Path) -> None:
    static = _logits_by_batching(static_artifact)
    dynamic = _logits_by_batching(int8_artifact)
    for name in ("sorted64", "shuffled7"):
        assert (static[name].argmax(-1) == static["single"].argmax(-1)).all(), name
        # Equal but for float summation order inside a kernel: far below what dynamic scales move.
        assert np.abs(static[name] - static["single"]).max() < 1e-4, name
        # The same student in dynamic int8 moves with its batch-mates: what makes the check above able to fail.
        assert np.abs(dynamic[name] - dynamic["single"]).max() > 1e-3, name


def test_static_int8_graph_and_card(static_artifact: Path, int8_artifact: Path, tmp_path: Path) -> None:
    """The integer kernels of dynamic int8, every run-time scale a constant; the card says how it was calibrated;
    a random-weight stand-in (what the latency table times) has the same graph."""
    import onnx
    from transformers import AutoConfig

    from kdnas_deploy.artifact.runtime import read_card
    from kdnas_deploy.latency.graph import build_profile_graph, graph_signature, random_weights

    card = read_card(static_artifact)
    ops = Counter(n.op_type for n in onnx.load(str(static_artifact / card["file"])).graph.node)
    dynamic_ops = Counter(n.op_type for n in onnx.load(str(int8_artifact / read_card(int8_artifact)["file"])).graph.node)
    assert ops["DynamicQuantizeLinear"] == 0 and ops["QuantizeLinear"] == dynamic_ops["DynamicQuantizeLinear"] > 0
    assert ops["QAttention"] == dynamic_ops["QAttention"] == 1
    # Every integer MatMul with its scale multiplications as one op, as ONNX Runtime fuses them in a dynamic graph.
    assert ops["MatMulInteger"] == ops["Mul"] == 0 and ops["MatMulIntegerToFloat"] == dynamic_ops["MatMulInteger"] > 0
    quant = card["quantization"]
    assert quant["weights"] == "int8, symmetric, per channel"
    assert quant["activations"] == "static" and quant["calibration"]["rows"] == 256 and quant["calibration"]["split"] == "train"
    assert "scales fixed" in quant["quantizer"]
    assert read_card(int8_artifact)["quantization"]["activations"] == "dynamic"
    assert "calibration" not in read_card(int8_artifact)["quantization"]
    assert card["metrics"]["drop_points"] <= 5.0  # the gate is open for this fixture; 6 rows of 300 flipped with AVX2
    assert "activations static" in (static_artifact / "README.md").read_text()
    standin = build_profile_graph(random_weights(AutoConfig.from_pretrained(static_artifact), seed=3),
                                  load_profile("cpu-int8-static"), tmp_path)
    assert graph_signature(standin.path) == graph_signature(static_artifact / card["file"])


def test_static_activations_are_for_int8_only() -> None:
    base = json.loads(json.dumps(load_profile("cpu").model_dump(mode="json")))
    base["model"]["activations"] = "static"
    with pytest.raises(KdnasError, match="activations = 'static' is for precision int8 only"):
        parse_profile(base, "test.toml")
    static = load_profile("cpu-int8-static").model_dump(mode="json")
    static["model"]["calibration_rows"] = 0
    with pytest.raises(KdnasError, match="calibration_rows"):
        parse_profile(static, "test.toml")
    assert load_profile("cpu-int8-static").content_hash() != load_profile("cpu-int8").content_hash()


def test_calibration_needs_rows(tmp_path: Path) -> None:
    from kdnas_deploy.latency.graph import build_profile_graph, random_model
    from kdnas_deploy.space import StudentArch

    with pytest.raises(KdnasError, match="calibration saw no rows"):
        build_profile_graph(random_model(StudentArch.parse("L1-H64-A2-I128"), vocab_size=500),
                            load_profile("cpu-int8-static"), tmp_path, calibration=[])


def test_profiles_timed_before_static_int8_keep_their_table_rows() -> None:
    """A latency table keys rows by the profile's content hash: the fields static int8 added must leave every
    dynamic profile's hash as it was, or each user's table would be re-timed from scratch."""
    assert {n: load_profile(n).content_hash() for n in ("cpu", "cpu-int8", "cuda")} == {
        "cpu": "4507bd41601c6b67", "cpu-int8": "0c9dead907523368", "cuda": "36e3377fdd768807"}
