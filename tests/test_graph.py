"""Export -> optimize -> precision on tiny architectures, run in real ONNX Runtime sessions."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from kdnas_deploy.util.errors import KdnasError
from kdnas_deploy.hardware import parse_profile
from kdnas_deploy.latency.graph import build_profile_graph, random_model
from kdnas_deploy.latency.timing import dummy_feeds, make_session, time_callable, time_graph
from kdnas_deploy.space import StudentArch

TINY = StudentArch(2, 64, 2, 128)


def _profile(fast_profile, **model):
    data = fast_profile.model_dump(mode="json")
    data["model"].update(model)
    return parse_profile(data, "test")


def _ops(path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _torch_logits(model, feeds):
    with torch.no_grad():
        return model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()


def test_fp32_graph_is_fused_and_matches_pytorch(tmp_path, fast_profile):
    model = random_model(TINY, num_labels=3)
    graph = build_profile_graph(model, fast_profile, tmp_path)
    assert graph.fused and graph.fused_attention == TINY.layers
    assert _ops(graph.path).get("Attention") == 2
    assert graph.path.name == "model_optimized.onnx" and not (tmp_path / "model.onnx").exists()
    sess = make_session(graph.path, fast_profile)
    for batch, seq in [(1, 7), (3, 33)]:
        feeds = dummy_feeds(sess, batch, seq, seed=batch)
        feeds["attention_mask"][:, seq // 2 :] = 0  # padding must be honoured by the fused graph too
        got = sess.run(["logits"], feeds)[0]
        assert got.shape == (batch, 3)
        np.testing.assert_allclose(got, _torch_logits(model, feeds), atol=1e-4)


def test_int8_graph_is_quantized_after_fusion(tmp_path, fast_profile):
    model = random_model(TINY)
    graph = build_profile_graph(model, _profile(fast_profile, precision="int8"), tmp_path)
    assert graph.path.name == "model_quantized.onnx"
    assert graph.fused_attention == TINY.layers  # checked on the fp32 graph, before quantization
    ops = _ops(graph.path)
    assert ops.get("QAttention", 0) == 2 and ops.get("MatMulInteger", 0) >= 4
    sess = make_session(graph.path, fast_profile)
    feeds = dummy_feeds(sess, 2, 16)
    got = sess.run(["logits"], feeds)[0]
    ref = _torch_logits(model, feeds)
    assert np.all(np.isfinite(got)) and np.abs(got - ref).max() < 0.1


def test_unoptimized_graph_is_reported_unfused(tmp_path, fast_profile):
    graph = build_profile_graph(random_model(TINY), _profile(fast_profile, optimize=False), tmp_path)
    assert graph.fused_attention == 0 and not graph.fused
    assert "Attention" not in _ops(graph.path)


def test_sdpa_model_is_refused_for_export(tmp_path, fast_profile):
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128, attn_implementation="sdpa")
    with pytest.raises(KdnasError, match="attn_implementation='eager'"):
        build_profile_graph(BertForSequenceClassification(cfg), fast_profile, tmp_path)


def test_zero_layer_base_graph_runs(tmp_path, fast_profile):
    graph = build_profile_graph(random_model(StudentArch(0, 64, 1, 64)), fast_profile, tmp_path)
    assert graph.fused  # zero attention nodes for zero layers
    timing = time_graph(graph.path, fast_profile)
    assert timing.median_ms > 0 and timing.samples == fast_profile.timing.repeats


class _Clock:
    """A clock whose every timed call lasts the next value of `durations` (seconds)."""

    def __init__(self, durations):
        self.durations = list(durations)
        self.now = 0.0
        self.started = False

    def __call__(self):
        if self.started:
            self.now += self.durations.pop(0)
        self.started = not self.started
        return self.now


def test_noise_rule_repeats_noisy_rounds_and_keeps_the_calmest(fast_profile):
    from kdnas_deploy.hardware import TimingSection

    rule = TimingSection(warmup=0, repeats=4, max_spread=0.1, max_rounds=3)
    noisy = [1, 3, 1, 3]
    calm = [2, 2, 2, 2.1]
    t = time_callable(lambda: None, rule, clock=_Clock(noisy + calm + noisy))
    assert t.rounds == 2 and not t.noisy
    assert t.median_ms == pytest.approx(2000, rel=0.03)
    t = time_callable(lambda: None, rule, clock=_Clock(noisy * 3))
    assert t.rounds == 3 and t.noisy and t.spread > 0.1


def test_interleaved_rounds_rotate_the_order_and_keep_one_sample_per_round() -> None:
    from kdnas_deploy.latency.timing import interleaved_rounds

    calls: list[tuple[str, int]] = []
    rounds_done: list[int] = []
    samples = interleaved_rounds(["a", "b", "c"], lambda k, r: calls.append((k, r)) or float(len(calls)), 4,
                                 rounds_done.append)
    assert [k for k, _ in calls] == list("abc" "bca" "cab" "abc") and rounds_done == [0, 1, 2, 3]
    assert samples == {"a": [1.0, 6.0, 8.0, 10.0], "b": [2.0, 4.0, 9.0, 11.0], "c": [3.0, 5.0, 7.0, 12.0]}
    assert interleaved_rounds([], lambda k, r: 0.0, 3) == {}


def test_graph_signature_ignores_weights_but_not_structure(tmp_path, fast_profile):
    """The benchmark times a random-weight graph in place of a trained one only when their signatures match: the
    signature must be blind to weight values and see any change of shape or precision."""
    from kdnas_deploy.latency.graph import graph_signature

    int8 = _profile(fast_profile, precision="int8")

    def sig(arch, seed, profile=int8, labels=2):
        return graph_signature(build_profile_graph(random_model(arch, num_labels=labels, seed=seed), profile,
                                                   tmp_path / f"{arch}-{seed}-{profile.precision}-{labels}").path)

    assert sig(TINY, 0) == sig(TINY, 1)
    assert sig(TINY, 0) != sig(StudentArch(2, 64, 2, 192), 0)  # another FFN size
    assert sig(TINY, 0) != sig(StudentArch(2, 64, 4, 128), 0)  # another head count
    assert sig(TINY, 0) != sig(TINY, 0, labels=3)
    assert sig(TINY, 0) != sig(TINY, 0, profile=fast_profile)  # fp32
