"""Request-length distributions and latency under them (`latency/lengths.py`, `latency/traffic.py`)."""

from __future__ import annotations

import numpy as np
import pytest

from kdnas_deploy.hardware import parse_profile
from kdnas_deploy.latency.lengths import LengthDistribution
from kdnas_deploy.latency.predictor import LatencyModel
from kdnas_deploy.latency.profiler import plan, profile_items
from kdnas_deploy.latency.table import LatencyTable
from kdnas_deploy.latency.timing import Timing
from kdnas_deploy.latency.traffic import TrafficLatency, verify_traffic
from kdnas_deploy.space import SearchSpace, StudentArch
from kdnas_deploy.util.errors import KdnasError
from test_predictor import CostModel

SPACE = SearchSpace(layers=(2, 4), hidden=(64, 128), heads=(2, 4), ffn_ratios=(2, 4))


class LengthCost(CostModel):
    """A machine where every graph costs its shape's cost times a factor linear in the sequence length."""

    def factor(self, seq_len: int) -> float:
        return 0.5 + seq_len / 32

    def time(self, graph, profile, seed=0):
        self.events.append(("time", graph.path.name))
        ms = self.true_ms(graph.arch) * self.factor(profile.shape.seq_len)
        return Timing(ms, ms, ms, 0.0, 3, 1, False)


def test_a_distribution_caps_counts_and_answers_what_a_padded_batch_sees():
    d = LengthDistribution.from_lengths([10, 10, 20, 40, 200], "test", cap=64)
    assert d.lengths == (10, 20, 40, 64) and d.probs == pytest.approx((0.4, 0.2, 0.2, 0.2))
    assert d.quantile(0.5) == 20 and d.quantile(0.4) == 10 and d.quantile(0.9) == 64
    assert d.mean() == pytest.approx(0.4 * 10 + 0.2 * (20 + 40 + 64))
    two = d.batch_max(2)  # P(max <= L) = F(L)^2
    assert np.cumsum(two.probs) == pytest.approx(np.cumsum(d.probs) ** 2)
    assert two.mean() > d.mean() and d.batch_max(1) is d
    # nodes bracket the support: every length lies between two timed lengths
    assert d.nodes() == (8, 16, 32, 64)
    assert LengthDistribution.from_lengths([5, 63], "t", 128).nodes() == (5, 8, 16, 32, 64)
    assert LengthDistribution.from_lengths([5, 66], "t", 128).nodes() == (5, 8, 16, 32, 64, 128)  # the profile's
    assert LengthDistribution.fixed(128).nodes() == (128,) and LengthDistribution.fixed(128).is_fixed
    assert LengthDistribution.from_dict(d.to_dict()) == d


def test_a_lengths_file_reads_lengths_or_a_histogram(tmp_path):
    one = tmp_path / "one.txt"
    one.write_text("# observed\n12\n12\n\n30\n")
    hist = tmp_path / "hist.csv"
    hist.write_text("12,2\n30 1\n")
    assert LengthDistribution.read(one, 128).probs == LengthDistribution.read(hist, 128).probs == pytest.approx((2 / 3, 1 / 3))
    assert LengthDistribution.read(one, 128).source == "file one.txt"


@pytest.mark.parametrize("content, message", [
    (b"12\nabc\n", "line 2 is not a length"),
    (b"12 3 4\n", "line 1 is not a length"),
    (b"0\n", "line 1: a length must be at least 1"),
    (b"# nothing\n\n", "no lengths in it"),
    (b"12\x00\n", "a binary file"),
    (b"\xff\xfe1\n", "not UTF-8"),
    (b"12,0\n", "no lengths in it"),
])
def test_a_bad_lengths_file_is_one_line_naming_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "lengths.txt"
    path.write_bytes(content)
    with pytest.raises(KdnasError, match=message):
        LengthDistribution.read(path, 128)


def test_a_directory_is_not_a_lengths_file(tmp_path):
    with pytest.raises(KdnasError, match="is a directory"):
        LengthDistribution.read(tmp_path, 128)


@pytest.fixture
def three_sessions(fast_profile):
    data = fast_profile.model_dump(mode="json")
    data["timing"]["sessions"] = 3
    data["shape"]["seq_len"] = 64
    return parse_profile(data, "three-sessions")


def _filled(table, profile, lengths, cost):
    traffic = TrafficLatency(table, profile, lengths, measurer=cost)
    for model in traffic.by_length():
        profile_items(model, plan(SPACE, 4), group=4)
    return traffic


def test_expected_latency_is_the_mean_over_the_padded_length_distribution(tmp_path, three_sessions):
    cost = LengthCost()
    lengths = LengthDistribution.from_lengths([5, 9, 12, 12, 20, 33, 50, 64], "test", cap=64)
    with LatencyTable(tmp_path / "t.sqlite") as table:
        traffic = _filled(table, three_sessions, lengths, cost)
        assert traffic.nodes == (5, 8, 16, 32, 64)
        arch = StudentArch(4, 128, 4, 256)
        pred = traffic.predict(arch)
        # the cost is linear in length, so interpolation between nodes is exact: the mean is the true expectation
        expected = sum(p * cost.true_ms(arch) * cost.factor(n) for n, p in zip(lengths.lengths, lengths.probs))
        assert pred.mean_ms == pytest.approx(expected, rel=1e-6)
        assert pred.p50_ms == pytest.approx(cost.true_ms(arch) * cost.factor(lengths.quantile(0.5)), rel=1e-6)
        assert pred.p90_ms == pytest.approx(cost.true_ms(arch) * cost.factor(lengths.quantile(0.9)), rel=1e-6)
        assert pred.mean_ms < traffic.models[64].predict(arch).ms  # a fixed 64 tokens overstates it
        # a fixed length is today's behaviour: one node, the plain model's prediction
        fixed = TrafficLatency(table, three_sessions, LengthDistribution.fixed(64), measurer=cost)
        assert fixed.nodes == (64,) and fixed.predict(arch).mean_ms == traffic.models[64].predict(arch).ms
        assert "lengths test: mean" in traffic.shape() and traffic.shape().startswith("batch 1")
        # anything timed at the nodes combines by the weights into the table's expected latency
        weights = traffic.weights()
        assert sum(weights.values()) == pytest.approx(1.0)
        assert sum(w * pred.node_ms[n] for n, w in weights.items()) == pytest.approx(pred.mean_ms)


def test_a_batch_of_eight_runs_at_its_longest_row(tmp_path, three_sessions):
    cost = LengthCost()
    lengths = LengthDistribution.from_lengths([8] * 9 + [64], "test", cap=64)
    eight = three_sessions.with_shape(batch_size=8)
    with LatencyTable(tmp_path / "t.sqlite") as table:
        one = _filled(table, three_sessions, lengths, cost).predict(StudentArch(2, 64, 2, 128))
        many = _filled(table, eight, lengths, cost).predict(StudentArch(2, 64, 2, 128))
    # one request in ten is long: alone it is rare, in a batch of eight the batch is padded to it more often than not
    assert one.p50_ms < many.p50_ms and 1 - 0.9 ** 8 > 0.5


def test_verify_times_whole_architectures_at_lengths_drawn_from_the_distribution(tmp_path, three_sessions):
    cost = LengthCost()
    lengths = LengthDistribution.from_lengths([5, 9, 12, 12, 20, 33, 50, 64], "test", cap=64)
    with LatencyTable(tmp_path / "t.sqlite") as table:
        traffic = _filled(table, three_sessions, lengths, cost)
        archs = [StudentArch(2, 64, 2, 128), StudentArch(4, 128, 4, 512), StudentArch(4, 64, 4, 256)]
        rows = verify_traffic(traffic, archs, seed=3)
    assert [r.arch for r in rows] == archs and all(r.length in lengths.lengths for r in rows)
    for r in rows:
        assert r.timing.median_ms == pytest.approx(cost.true_ms(r.arch) * cost.factor(r.length), rel=1e-6)
        assert abs(r.error_pct) < 1e-6


def test_search_settings_take_task_lengths_by_default_and_a_fixed_length_on_request(tmp_path):
    from kdnas_deploy.search.settings import SearchSettings, load_settings

    assert SearchSettings("t", {}).lengths == "task"
    assert SearchSettings("t", {}, seq_len=64).lengths == "fixed"
    with pytest.raises(KdnasError, match="give --lengths FILE or --seq-len, not both"):
        SearchSettings("t", {}, lengths="/some/lengths.txt", seq_len=64)
    with pytest.raises(KdnasError, match="--seq-len must be at least 1"):
        SearchSettings("t", {}, seq_len=0)
    fixed = SearchSettings("t", {}, lengths="fixed")
    assert fixed.length_distribution(None) is None
    # a run begun before traffic-shaped latency resumes at the one length it was timed at
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text('{"settings": {"teacher": "t", "data": {}}}')
    assert load_settings(run).lengths == "fixed"
