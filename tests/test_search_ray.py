"""The Ray executor on a real local Ray instance: candidates in parallel, failures and dead workers journaled."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from kdnas_deploy.util.errors import KdnasError
from kdnas_deploy.search.episodes import run_episodes
from kdnas_deploy.search.executors import LocalExecutor, RayExecutor, make_executor
from kdnas_deploy.search.journal import Journal
from kdnas_deploy.search.reward import RewardConfig
from kdnas_deploy.search.strategies import make_strategy
from kdnas_deploy.space import SearchSpace, StudentArch
from test_search_strategies import synthetic_latency, synthetic_score

pytest.importorskip("ray")

SPACE = SearchSpace.default()
CONFIG = RewardConfig({"cpu": 8.0})


class SlowEvaluator:
    """Synthetic scores, reporting when and where it ran; raises or kills its worker on request.

    It stays running until it has seen another evaluation running in another process (or for `patience`
    seconds): a fixed pause made the overlap depend on how fast Ray's second worker came up, which on a loaded
    machine took longer than the pause."""

    def __init__(self, markers: Path, fail_on: frozenset[StudentArch] = frozenset(),
                 die_on: frozenset[StudentArch] = frozenset(), patience: float = 10.0):
        self.markers, self.fail_on, self.die_on, self.patience = markers, fail_on, die_on, patience

    def __call__(self, arch: StudentArch):
        start = time.time()
        if arch in self.die_on:
            os._exit(3)  # like the kernel's OOM killer: no exception, the process is gone
        if arch in self.fail_on:
            raise RuntimeError("loss is NaN")
        prefix = f"{os.getpid()}-"
        mine = self.markers / f"{prefix}{arch}"
        mine.touch()
        try:
            while time.time() - start < self.patience:
                if any(not m.name.startswith(prefix) for m in self.markers.iterdir()):
                    time.sleep(0.5)  # both are running now; stay a moment so the peer sees this one too
                    break
                time.sleep(0.05)
        finally:
            mine.unlink()
        return synthetic_score(arch), {"start": start, "end": time.time(), "pid": os.getpid()}


@pytest.fixture(scope="module")
def ray_executor():
    # Workers import this test module to unpickle the evaluator, so they need the tests folder on their path.
    executor = RayExecutor(cpus=1, init_options={
        "num_cpus": 2, "object_store_memory": 200 * 2**20,
        "runtime_env": {"env_vars": {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}},
    })
    yield executor
    executor.close()


def test_candidates_run_in_parallel_and_failures_are_journaled(ray_executor: RayExecutor, tmp_path: Path) -> None:
    first = make_strategy("kdnas", SPACE, CONFIG, synthetic_latency, seed=1).propose(4, [])
    (tmp_path / "running").mkdir()
    evaluator = SlowEvaluator(tmp_path / "running", fail_on=frozenset({first[1].arch}), die_on=frozenset({first[2].arch}))
    with Journal(tmp_path / "journal.sqlite") as journal:
        done = run_episodes(make_strategy("kdnas", SPACE, CONFIG, synthetic_latency, seed=1), journal, evaluator,
                            synthetic_latency, CONFIG, episodes=2, top_k=4, executor=ray_executor)
    assert len(done) == 8 and [c.arch for c in done[:4]] == [p.arch for p in first]
    by_arch = {c.arch: c for c in done}
    assert by_arch[first[1].arch].status == "failed" and by_arch[first[1].arch].error == "RuntimeError: loss is NaN"
    died = by_arch[first[2].arch]
    assert died.status == "failed" and "Error" in (died.error or "")
    ok = [c for c in done if c.status == "done"]
    assert len(ok) == 6 and all(c.score == pytest.approx(synthetic_score(c.arch)) for c in ok)
    second = [c.metrics for c in ok if c.episode == 2]
    # Two CPUs, one per candidate: some of the episode's candidates overlap in time, in different worker
    # processes (which pair depends on when Ray's workers come up, so any overlapping pair counts).
    overlaps = [(a, b) for a in second for b in second if a is not b and a["start"] < b["start"] < a["end"]]  # type: ignore[index]
    assert overlaps and all(a["pid"] != b["pid"] for a, b in overlaps)  # type: ignore[index]
    assert ray_executor.resources() == {"num_cpus": 1.0, "num_gpus": 0.0}


def test_real_proxy_distillation_on_ray_matches_in_process(ray_executor: RayExecutor, tiny_teacher_dir: Path,
                                                           sst2_slice: Path) -> None:
    import torch

    from kdnas_deploy.data.sources import DataSource
    from kdnas_deploy.data.prepare import prepare
    from kdnas_deploy.distill.trainer import TrainConfig
    from kdnas_deploy.model_folder import load_classifier
    from kdnas_deploy.search.evaluator import ProxyEvaluator

    prepared = prepare(str(tiny_teacher_dir), DataSource(task="sst2", data_dir=str(sst2_slice)), 64)
    evaluate = ProxyEvaluator.from_prepared(load_classifier(str(tiny_teacher_dir)), prepared, proxy=200, held_out=200,
                                            train_config=TrainConfig(epochs=1))
    archs = [StudentArch.parse("L1-H32-A2-I64"), StudentArch.parse("L2-H64-A4-I128")]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each Ray task gets with cpus=1: same threads, same arithmetic
    try:
        here = {o.arch: o for o in LocalExecutor().run(evaluate, archs)}
    finally:
        torch.set_num_threads(threads)
    there = {o.arch: o for o in ray_executor.run(evaluate, archs)}
    assert set(there) == set(archs) and all(o.error is None for o in there.values()), [o.error for o in there.values()]
    for arch in archs:
        assert there[arch].score == here[arch].score
        assert there[arch].metrics["accuracy"] == here[arch].metrics["accuracy"]


def test_executor_choice_is_validated() -> None:
    assert isinstance(make_executor("local"), LocalExecutor)
    with pytest.raises(KdnasError, match="unknown executor 'dask'"):
        make_executor("dask")
    with pytest.raises(KdnasError, match="--ray-cpus must be positive"):
        make_executor("ray", cpus=0)
