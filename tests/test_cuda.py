"""The cuda profile's run path: fp16 fused graph on CUDAExecutionProvider. Skipped without a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdnas_deploy.util.errors import KdnasError
from kdnas_deploy.hardware import load_profile
from kdnas_deploy.space import StudentArch


def _cuda_profile():
    profile = load_profile("cuda").with_shape(seq_len=32)
    try:
        profile.check_runnable()
    except KdnasError as exc:
        pytest.skip(f"no CUDA here: {exc}")
    return profile


pytestmark = pytest.mark.cuda


def test_fp16_graph_is_fused_runs_on_cuda_and_matches_pytorch(tmp_path):
    from kdnas_deploy.latency.graph import build_profile_graph, random_model
    from kdnas_deploy.latency.timing import dummy_feeds, make_session, time_graph

    profile = _cuda_profile()
    model = random_model(StudentArch(2, 128, 4, 512))
    graph = build_profile_graph(model, profile, tmp_path)
    assert graph.fused and graph.path.name == "model_fp16.onnx"
    sess = make_session(graph.path, profile)
    assert sess.get_providers()[0] == "CUDAExecutionProvider"
    feeds = dummy_feeds(sess, 2, 32)
    got = sess.run(["logits"], feeds)[0]
    with torch.no_grad():
        ref = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()
    assert got.dtype == np.float32 and np.abs(got - ref).max() < 2e-2
    assert time_graph(graph.path, profile).median_ms > 0


def test_cuda_latency_table_round_trip(tmp_path):
    from kdnas_deploy.latency.predictor import LatencyModel
    from kdnas_deploy.latency.table import LatencyTable

    profile = _cuda_profile()
    with LatencyTable(tmp_path / "t.sqlite") as table:
        model = LatencyModel(table, profile)
        assert model.info.get("gpu")
        pred = model.predict(StudentArch(4, 256, 4, 1024))
        assert pred.ms > 0 and table.count(model.fingerprint) == 3  # base, stem, block


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch")
def test_distillation_on_cuda_with_mixed_precision(tiny_teacher_dir, sst2_slice, tmp_path):
    from kdnas_deploy.data.sources import DataSource
    from kdnas_deploy.distill.api import distill
    from kdnas_deploy.distill.trainer import TrainConfig

    info = distill(str(tiny_teacher_dir), DataSource(task="sst2", data_dir=str(sst2_slice)), "L1-H32-A2-I64", tmp_path / "s",
                   proxy=300, held_out=100, max_length=64, train_config=TrainConfig(epochs=2, device="cuda"))
    history = info.training["history"]
    assert all(np.isfinite(h["loss"]) for h in history) and history[-1]["loss"] < history[0]["loss"]
    assert 0.0 <= info.metrics["dev"]["accuracy"] <= 1.0
