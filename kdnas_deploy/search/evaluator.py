"""Scoring a candidate by proxy distillation: what the episode loop calls for every architecture.

The teacher and the proxy rows are loaded once and shared by every candidate, so candidates differ only in
their architecture (the proxy's fixed rows make their scores comparable). An evaluator holds just what a
candidate needs (teacher, task, the proxy and held-out rows in memory), so it pickles into a Ray object that
worker processes on other machines can use without the run's files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kdnas_deploy.distill.api import distill_student, starting_point
from kdnas_deploy.data.prepare import Prepared, ProxySplit, proxy_split
from kdnas_deploy.distill import DEFAULT_INIT
from kdnas_deploy.distill.objective import DistillConfig
from kdnas_deploy.distill.student import Init
from kdnas_deploy.distill.teacher_cache import TeacherCache
from kdnas_deploy.distill.evaluation import evaluate_model
from kdnas_deploy.distill.trainer import TrainConfig, resolve_device
from kdnas_deploy.space import StudentArch
from kdnas_deploy.data.tasks import Task


@dataclass
class ProxyEvaluator:
    teacher: Any
    task: Task
    pad_token_id: int
    train_set: Any
    eval_set: Any
    split: ProxySplit
    init: Init = DEFAULT_INIT
    train_config: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3))
    distill_config: DistillConfig = field(default_factory=DistillConfig)
    #: Run the teacher once over the proxy rows and let every candidate read its outputs (`TeacherCache`), instead
    #: of running it at every step of every candidate.
    cache_teacher: bool = True
    #: (teacher, init) as `starting_point` resolves them (the ranked copy for `ranked`), made on first use and
    #: shared by every candidate.
    _start: tuple[Any, Init] | None = field(default=None, init=False, repr=False)
    _cache: TeacherCache | None = field(default=None, init=False, repr=False)
    _cache_built: bool = field(default=False, init=False, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        # A worker process builds its own cache: shipping it would send hundreds of MB per worker.
        state = dict(self.__dict__)
        state["_cache"], state["_cache_built"] = None, False
        return state

    @classmethod
    def from_prepared(cls, teacher: Any, prepared: Prepared, proxy: int, held_out: int | None = None, *,
                      init: Init = DEFAULT_INIT, train_config: TrainConfig | None = None,
                      distill_config: DistillConfig | None = None) -> ProxyEvaluator:
        train_config = train_config or TrainConfig(epochs=3)
        split = proxy_split(prepared, proxy, held_out, train_config.seed)
        rows = prepared.encoded.train
        # In memory rather than views of the on-disk token cache: a few thousand rows, and picklable anywhere.
        train_set = rows.select(split.train_rows).flatten_indices(keep_in_memory=True)
        eval_set = rows.select(split.held_out_rows).flatten_indices(keep_in_memory=True)
        return cls(teacher, prepared.task, prepared.encoded.pad_token_id, train_set, eval_set, split, init,
                   train_config, distill_config or DistillConfig())

    def teacher_metrics(self) -> dict[str, float]:
        """The teacher's own metrics on the same held-out slice: the yardstick for "percent of the teacher"."""
        return evaluate_model(self.teacher, self.eval_set, self.task, self.train_config.eval_batch_size, self.pad_token_id)

    def __call__(self, arch: StudentArch) -> tuple[float, Mapping[str, Any]]:
        """The candidate's primary score on the held-out slice, and its full metrics and costs."""
        if self._start is None:
            self._start = starting_point(self.teacher, self.init, self.train_set, self.task, self.pad_token_id,
                                         self.train_config.seed)
        teacher, init = self._start
        if self.cache_teacher and not self._cache_built:
            self._cache = TeacherCache.for_distillation(
                teacher, self.train_set, self.pad_token_id, self.distill_config,
                batch_size=self.train_config.eval_batch_size, device=resolve_device(self.train_config.device))
            self._cache_built = True
        result = distill_student(teacher, self.task, self.pad_token_id, arch, self.train_set, self.eval_set,
                                 init=init, train_config=self.train_config, distill_config=self.distill_config,
                                 teacher_cache=self._cache)
        metrics = dict(result.metrics)
        metrics["train_seconds"] = round(result.train.train_seconds, 2)
        metrics["examples_per_second"] = round(result.train.examples_per_second, 1)
        return float(result.metrics["score"]), metrics
