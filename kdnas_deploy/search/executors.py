"""Where an episode's candidates are distilled: in this process, one after another, or as Ray tasks in parallel.

An executor takes the evaluator (a picklable callable: architecture -> score, metrics) and an episode's batch and
yields one `Outcome` per candidate as it completes. A candidate that raises, or whose worker dies (out of memory,
killed), comes back as an outcome with an error, so the loop journals it as failed and the search goes on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from kdnas_deploy.util.errors import KdnasError, first_line
from kdnas_deploy.space import StudentArch

Evaluate = Callable[[StudentArch], tuple[float, Mapping[str, Any]]]
EXECUTORS = ("local", "ray")


@dataclass
class Outcome:
    arch: StudentArch
    score: float | None
    metrics: dict[str, Any]
    seconds: float
    error: str | None = None


def evaluate_one(evaluate: Evaluate, arch: StudentArch) -> Outcome:
    """Runs one candidate, turning any failure (including a non-finite score) into an outcome with an error."""
    tic = time.perf_counter()
    try:
        score, metrics = evaluate(arch)
        if not math.isfinite(score):
            raise ValueError(f"score is {score}")
    except Exception as exc:  # one candidate's failure must not end the search
        return Outcome(arch, None, {}, time.perf_counter() - tic, f"{type(exc).__name__}: {first_line(exc)}")
    return Outcome(arch, float(score), dict(metrics), time.perf_counter() - tic)


class Executor(Protocol):
    def run(self, evaluate: Evaluate, archs: list[StudentArch]) -> Iterator[Outcome]: ...
    def close(self) -> None: ...


class LocalExecutor:
    """One candidate at a time in this process: torch already uses every core for one student."""

    def run(self, evaluate: Evaluate, archs: list[StudentArch]) -> Iterator[Outcome]:
        for arch in archs:
            yield evaluate_one(evaluate, arch)

    def close(self) -> None:
        pass


def _ray_task(evaluate: Evaluate, arch: StudentArch, threads: int) -> Outcome:
    import torch

    # Ray reserves `threads` CPUs for the task; torch would otherwise start one thread per core of the node
    # and the candidates sharing it would slow each other down.
    torch.set_num_threads(threads)
    return evaluate_one(evaluate, arch)


@dataclass
class RayExecutor:
    """Each candidate a Ray task: `cpus` CPUs and, where the cluster has GPUs, `gpus` GPUs (default 1) each.

    With no `address` (and none in RAY_ADDRESS) a local Ray instance is started and shut down again at `close`;
    `address="auto"` or `ray://host:10001` joins a running cluster. The evaluator is put into the object store once
    per run, so every worker gets the teacher and proxy rows without reading the run's files.
    """

    address: str | None = None
    cpus: float = 1.0
    gpus: float | None = None
    init_options: dict[str, Any] = field(default_factory=dict)
    _started: bool = field(default=False, init=False)
    _stored: tuple[Any, Any] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not self.cpus > 0:
            raise KdnasError(f"--ray-cpus must be positive, got {self.cpus}")
        if self.gpus is not None and self.gpus < 0:
            raise KdnasError(f"--ray-gpus must be zero or more, got {self.gpus}")
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise KdnasError("--executor ray needs Ray: pip install 'kdnas-deploy[ray]'")

    def _connect(self) -> Any:
        import logging

        import ray

        if not ray.is_initialized():
            try:
                ray.init(address=self.address, include_dashboard=False, logging_level=logging.WARNING,
                         log_to_driver=False, **self.init_options)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise KdnasError(f"cannot start or reach Ray at {self.address or 'a new local instance'}: {first_line(exc)}") from None
            self._started = True
        return ray

    def resources(self) -> dict[str, float]:
        ray = self._connect()
        gpus = self.gpus if self.gpus is not None else (1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0)
        return {"num_cpus": self.cpus, "num_gpus": gpus}

    def run(self, evaluate: Evaluate, archs: list[StudentArch]) -> Iterator[Outcome]:
        ray = self._connect()
        from ray.exceptions import RayError

        if self._stored is None or self._stored[0] is not evaluate:  # holding it keeps its id from being reused
            self._stored = (evaluate, ray.put(evaluate))
        task = ray.remote(max_retries=0, **self.resources())(_ray_task)
        threads = max(1, int(self.cpus))
        pending = {task.remote(self._stored[1], arch, threads): arch for arch in archs}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    arch = pending.pop(ref)
                    try:
                        yield ray.get(ref)
                    except RayError as exc:  # the worker died (out of memory, killed) or could not unpickle
                        yield Outcome(arch, None, {}, 0.0, f"{type(exc).__name__}: {first_line(exc)}")
        finally:
            for ref in pending:  # interrupted: the journal keeps them pending and --resume re-runs them
                ray.cancel(ref, force=True)

    def close(self) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False
        self._stored = None


def make_executor(name: str, address: str | None = None, cpus: float = 1.0, gpus: float | None = None) -> Executor:
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address, cpus, gpus)
    raise KdnasError(f"unknown executor {name!r}: use {', '.join(EXECUTORS)}")
