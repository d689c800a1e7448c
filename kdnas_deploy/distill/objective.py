"""What a training step minimises: the distillation objective (student against teacher) and plain
supervised fine-tuning (for making a teacher).

Default weights, and why:
- `logit_weight=1`, `temperature=1`: the teacher's soft targets carry the task; at T=1 they are the
  distribution the student is scored against. Higher T helps when the teacher is over-confident; it is a flag.
- `label_weight=0`: a fine-tuned teacher's predictions already contain the gold labels' information and,
  on the small proxy sets of a search, add less noise than hard labels.
- `hidden_weight=1`: matching the mapped teacher layers through a learned projection (TinyBERT) is what lets
  a freshly built or sliced student recover the teacher's features within a few hundred steps.
- `relation_weight=1`: the MiniLMv2 Q-Q/K-K/V-V relations of the last student layer against its mapped
  teacher layer transfer how tokens attend to each other, independently of head counts and widths.
The measured effect of these choices on SST-2 is in README.md (tools/bench_distill.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kdnas_deploy.distill.losses import (
    HiddenProjection,
    attention_relation_loss,
    hidden_loss,
    label_loss,
    logit_kd,
    relation_heads,
)
from kdnas_deploy.distill.student import layer_map as default_layer_map
from kdnas_deploy.distill.teacher_cache import TeacherCache
from kdnas_deploy.data.encode import MODEL_INPUTS, ROW_IDS
from kdnas_deploy.util.errors import KdnasError


@dataclass
class DistillConfig:
    logit_weight: float = 1.0
    temperature: float = 1.0
    label_weight: float = 0.0
    hidden_weight: float = 1.0
    relation_weight: float = 1.0
    #: Relation heads for the MiniLMv2 loss; reduced to a number that divides both widths.
    relation_heads: int = 12
    #: Teacher layer (0-based) matched to each student layer; None: uniform, last to last.
    layer_map: list[int] | None = None

    def __post_init__(self) -> None:
        weights = (self.logit_weight, self.label_weight, self.hidden_weight, self.relation_weight)
        if any(w < 0 for w in weights) or sum(weights) == 0:
            raise KdnasError("loss weights must be >= 0 and not all zero")
        if not self.temperature > 0:
            raise KdnasError(f"temperature must be positive, got {self.temperature}")
        if self.relation_heads < 1:
            raise KdnasError("relation heads must be at least 1")


class _QKVRecorder:
    """Forward hooks that keep the query, key and value projections of one encoder layer."""

    def __init__(self, model: nn.Module, layer: int):
        attention = model.bert.encoder.layer[layer].attention.self
        self.values: dict[str, torch.Tensor] = {}
        self.handles = [getattr(attention, name).register_forward_hook(self._keep(name)) for name in ("query", "key", "value")]

    def _keep(self, name: str):  # type: ignore[no-untyped-def]
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            self.values[name] = output
        return hook

    def take(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        qkv = (self.values["query"], self.values["key"], self.values["value"])
        self.values = {}
        return qkv

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class DistillationObjective(nn.Module):
    """Student plus the learned projection; the frozen teacher is held outside the module's parameters."""

    def __init__(self, student: nn.Module, teacher: nn.Module, config: DistillConfig, regression: bool,
                 teacher_cache: TeacherCache | None = None):
        super().__init__()
        self.model = student
        self.config = config
        self.regression = regression
        s_cfg, t_cfg = student.config, teacher.config
        self.layers = config.layer_map or default_layer_map(s_cfg.num_hidden_layers, t_cfg.num_hidden_layers)
        if len(self.layers) != s_cfg.num_hidden_layers or any(not 0 <= t < t_cfg.num_hidden_layers for t in self.layers):
            raise KdnasError(f"layer map {[t + 1 for t in self.layers]} does not fit a {s_cfg.num_hidden_layers}-layer "
                             f"student of a {t_cfg.num_hidden_layers}-layer teacher")
        self.projection = HiddenProjection(s_cfg.hidden_size, t_cfg.hidden_size) if config.hidden_weight > 0 else None
        self.heads = relation_heads(s_cfg.hidden_size, t_cfg.hidden_size, config.relation_heads)
        self._teacher = [teacher.eval().requires_grad_(False)]  # a list keeps it out of parameters and state_dict
        relations = config.relation_weight > 0
        wanted = self.layers if config.hidden_weight > 0 else []
        #: Read the teacher's outputs from the cache (by the batch's row ids) instead of running it.
        self.cache = teacher_cache if teacher_cache is not None and teacher_cache.covers(
            wanted, self.layers[-1] if relations else None) else None
        self.wants_rows = self.cache is not None
        self._recorders: tuple[_QKVRecorder, _QKVRecorder | None] | None = None
        if relations:
            self._recorders = (_QKVRecorder(student, s_cfg.num_hidden_layers - 1),
                               None if self.cache else _QKVRecorder(teacher, self.layers[-1]))

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def to(self, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        self.teacher.to(*args, **kwargs)
        return super().to(*args, **kwargs)

    def close(self) -> None:
        """Removes the hooks the relation loss put on both models."""
        if self._recorders:
            for recorder in self._recorders:
                if recorder is not None:
                    recorder.remove()
            self._recorders = None

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss and its named parts (detached 0-d tensors on the device: reading them is the trainer's call)."""
        cfg = self.config
        inputs = {k: batch[k] for k in MODEL_INPUTS}
        want_hidden = cfg.hidden_weight > 0
        if self.cache is not None:
            cached = self.cache.gather(batch[ROW_IDS], inputs["input_ids"].shape[1], inputs["input_ids"].device)
            t_logits, t_qkv = cached.logits, cached.qkv
            t_hidden = [cached.hidden[t] for t in self.layers] if want_hidden else []
        else:
            with torch.no_grad():
                t_out = self.teacher(**inputs, output_hidden_states=want_hidden)
                recorder = self._recorders[1] if self._recorders else None
                t_qkv = recorder.take() if recorder is not None else None
            t_logits = t_out.logits
            t_hidden = [t_out.hidden_states[t + 1] for t in self.layers] if want_hidden else []
        s_out = self.model(**inputs, output_hidden_states=want_hidden)
        parts: dict[str, torch.Tensor] = {}
        if cfg.logit_weight > 0:
            parts["logits"] = cfg.logit_weight * logit_kd(s_out.logits, t_logits, cfg.temperature, self.regression)
        if cfg.label_weight > 0:
            parts["labels"] = cfg.label_weight * label_loss(s_out.logits, batch["labels"], self.regression)
        mask = batch["attention_mask"]
        if want_hidden:
            s_states = list(s_out.hidden_states[1:])
            parts["hidden"] = cfg.hidden_weight * hidden_loss(s_states, t_hidden, self.projection, mask)
        if self._recorders:
            parts["relation"] = cfg.relation_weight * attention_relation_loss(self._recorders[0].take(), t_qkv, mask, self.heads)
        loss = torch.stack(list(parts.values())).sum()
        return loss, {k: v.detach() for k, v in parts.items()}


class SupervisedObjective(nn.Module):
    """Fine-tuning on gold labels: cross-entropy, or MSE for regression."""

    def __init__(self, model: nn.Module, regression: bool):
        super().__init__()
        self.model = model
        self.regression = regression

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.model(**{k: batch[k] for k in MODEL_INPUTS}).logits
        loss = label_loss(logits, batch["labels"], self.regression)
        return loss, {"labels": loss.detach()}
