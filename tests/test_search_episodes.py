from __future__ import annotations

from pathlib import Path

import pytest

from conftest import bump_schema_version
from kdnas_deploy.util.errors import KdnasError
from kdnas_deploy.search.episodes import prediction_quality, run_episodes
from kdnas_deploy.search.journal import Journal
from kdnas_deploy.search.reward import RewardConfig
from kdnas_deploy.search.strategies import make_strategy
from kdnas_deploy.space import SearchSpace, StudentArch
from test_search_strategies import synthetic_latency, synthetic_score

SPACE = SearchSpace.default()
CONFIG = RewardConfig({"cpu": 8.0})


class Evaluator:
    """Synthetic proxy scores; fails on chosen architectures; can be told to die at call N (like a kill)."""

    def __init__(self, fail_on: set[StudentArch] = frozenset(), die_at: int | None = None):
        self.calls: list[StudentArch] = []
        self.fail_on, self.die_at = fail_on, die_at

    def __call__(self, arch: StudentArch):
        self.calls.append(arch)
        if self.die_at is not None and len(self.calls) == self.die_at:
            raise KeyboardInterrupt
        if arch in self.fail_on:
            raise RuntimeError("CUDA out of memory\nsecond line of a long trace")
        return synthetic_score(arch), {"accuracy": synthetic_score(arch)}


def test_episodes_journal_predictions_and_failures(tmp_path: Path) -> None:
    strategy = make_strategy("kdnas", SPACE, CONFIG, synthetic_latency, seed=0)
    first = make_strategy("kdnas", SPACE, CONFIG, synthetic_latency, seed=0).propose(4, [])
    evaluator = Evaluator(fail_on={first[1].arch})
    with Journal(tmp_path / "journal.sqlite") as journal:
        done = run_episodes(strategy, journal, evaluator, synthetic_latency, CONFIG, episodes=4, top_k=4)
    assert len(done) == 16 and len({c.arch for c in done}) == 16
    failed = [c for c in done if c.status == "failed"]
    assert [c.arch for c in failed] == [first[1].arch] and failed[0].error == "RuntimeError: CUDA out of memory"
    assert all(c.predicted_reward is not None and c.uncertainty is not None for c in done if c.episode > 1)
    assert all(c.latency == synthetic_latency(c.arch) for c in done)
    ok = [c for c in done if c.status == "done"]
    assert all(c.reward == pytest.approx(c.score * (c.latency["cpu"] / 8.0) ** -0.07) for c in ok)
    quality = prediction_quality(done)
    assert quality[1] is None and all(isinstance(quality[e], float) for e in (3, 4))


def test_resume_after_a_kill_redoes_only_the_candidate_in_flight(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    killer = Evaluator(die_at=7)
    with Journal(path) as journal, pytest.raises(KeyboardInterrupt):
        run_episodes(make_strategy("kdnas", SPACE, CONFIG, synthetic_latency, seed=3), journal, killer, synthetic_latency,
                     CONFIG, episodes=3, top_k=4)
    finished_before = {c.arch for c in Journal(path).candidates("done")}
    assert len(finished_before) == 6
    in_flight = killer.calls[-1]
    resumed = Evaluator()
    with Journal(path) as journal:
        done = run_episodes(make_strategy("kdnas", SPACE, CONFIG, synthetic_latency, seed=3), journal, resumed,
                            synthetic_latency, CONFIG, episodes=3, top_k=4)
    assert len(done) == 12 and all(c.status == "done" for c in done)
    assert resumed.calls[0] == in_flight and not finished_before & set(resumed.calls)
    assert len(resumed.calls) == 12 - 6


def test_journal_refuses_damaged_or_newer_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"not a database at all" * 100)
    with pytest.raises(KdnasError, match="not a usable search journal"):
        Journal(bad)
    newer = tmp_path / "newer.sqlite"
    Journal(newer).close()
    bump_schema_version(newer)
    with pytest.raises(KdnasError, match="newer kdnas-deploy"):
        Journal(newer)
    with Journal(tmp_path / "j.sqlite") as journal:
        arch = StudentArch.parse("L2-H128-A2-I256")
        journal.add_pending(arch, 1, {"cpu": 1.0})
        journal.finish(arch, 0.8, 0.8, {}, 1.0)
        with pytest.raises(KdnasError, match="already in the journal as done"):
            journal.add_pending(arch, 2, {"cpu": 1.0})


def test_real_proxy_distillation_search(tiny_teacher_dir: Path, sst2_slice: Path, tmp_path: Path) -> None:
    """Two episodes of two candidates, each distilled from a real (tiny) teacher on real SST-2 rows."""
    from kdnas_deploy.data.sources import DataSource
    from kdnas_deploy.data.prepare import prepare
    from kdnas_deploy.distill.trainer import TrainConfig
    from kdnas_deploy.model_folder import load_classifier
    from kdnas_deploy.search.evaluator import ProxyEvaluator

    space = SearchSpace.from_dict({"layers": [1, 2], "hidden": [32, 64], "heads": [2, 4], "ffn_ratios": [2]}, name="tiny")
    prepared = prepare(str(tiny_teacher_dir), DataSource(task="sst2", data_dir=str(sst2_slice)), 64)
    evaluate = ProxyEvaluator.from_prepared(load_classifier(str(tiny_teacher_dir)), prepared, proxy=200, held_out=200,
                                            train_config=TrainConfig(epochs=1))

    def latency(a: StudentArch) -> dict[str, float]:
        return {"cpu": 0.1 * a.layers * a.hidden / 32}

    config = RewardConfig({"cpu": 0.2})
    with Journal(tmp_path / "journal.sqlite") as journal:
        done = run_episodes(make_strategy("kdnas", space, config, latency, seed=0), journal, evaluate, latency, config,
                            episodes=2, top_k=2)
    assert len(done) == 4 and all(c.status == "done" for c in done), [c.error for c in done]
    assert all(0.0 <= c.score <= 1.0 and c.metrics["accuracy"] == c.score for c in done)  # type: ignore[index, operator]
    assert len({c.arch for c in done}) == 4


def test_latency_oracle_fills_the_table_and_answers_every_candidate(tmp_path: Path, fast_profile) -> None:
    from conftest import TINY_SPACE
    from kdnas_deploy.latency.table import LatencyTable
    from kdnas_deploy.search.latency import LatencyOracle

    space = SearchSpace.from_toml(TINY_SPACE)
    teacher = StudentArch.parse("L3-H64-A2-I128")
    with LatencyTable(tmp_path / "lat.sqlite") as table:
        oracle = LatencyOracle(table, [fast_profile])
        seen = []
        oracle.fill(space, extra=[teacher], calibration=3, progress=lambda name, item, cached: seen.append((name, cached)))
        assert seen and all(name == "fast-cpu" for name, _ in seen)
        count = table.count()
        answers = {a: oracle(a) for a in [*space.enumerate(), teacher]}
        assert table.count() == count  # every answer came from the filled table, nothing timed on demand
        # The table's own prediction, not an order of timings: these graphs run in a tenth of a millisecond, where
        # a busy machine's noise decides which of two is faster (the order once flipped in CI).
        from kdnas_deploy.latency.predictor import LatencyModel

        model = LatencyModel(table, fast_profile, measure_missing=False)
        assert all(answers[a]["fast-cpu"] == model.predict(a).ms for a in answers)
    assert all(set(v) == {"fast-cpu"} and v["fast-cpu"] > 0 for v in answers.values())
