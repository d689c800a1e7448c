"""Scoring a candidate by proxy distillation: what the episode loop calls for every architecture.

The teacher, tokenised data and proxy rows are loaded once and shared by every candidate, so candidates
differ only in their architecture (the proxy's fixed rows make their scores comparable).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kdnas_deploy.distill.api import Prepared, ProxySplit, distill_student, proxy_split
from kdnas_deploy.distill.objective import DistillConfig
from kdnas_deploy.distill.student import Init
from kdnas_deploy.distill.trainer import TrainConfig
from kdnas_deploy.space import StudentArch


@dataclass
class ProxyEvaluator:
    teacher: Any
    prepared: Prepared
    proxy: int
    held_out: int | None = None
    init: Init = "inherit"
    train_config: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3))
    distill_config: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self) -> None:
        self.split: ProxySplit = proxy_split(self.prepared, self.proxy, self.held_out, self.train_config.seed)
        rows = self.prepared.encoded.train
        self.train_set = rows.select(self.split.train_rows)
        self.eval_set = rows.select(self.split.held_out_rows)

    def teacher_metrics(self) -> dict[str, float]:
        """The teacher's own metrics on the same held-out slice: the yardstick for "percent of the teacher"."""
        from kdnas_deploy.distill.trainer import evaluate_model

        return evaluate_model(self.teacher, self.eval_set, self.prepared.task, self.train_config.eval_batch_size,
                              self.prepared.encoded.pad_token_id)

    def __call__(self, arch: StudentArch) -> tuple[float, Mapping[str, Any]]:
        """The candidate's primary score on the held-out slice, and its full metrics and costs."""
        result = distill_student(self.teacher, self.prepared, arch, self.train_set, self.eval_set, init=self.init,
                                 train_config=self.train_config, distill_config=self.distill_config)
        metrics = dict(result.metrics)
        metrics["train_seconds"] = round(result.train.train_seconds, 2)
        metrics["examples_per_second"] = round(result.train.examples_per_second, 1)
        return float(result.metrics["score"]), metrics
