"""The teacher's outputs on a fixed set of training rows, computed once and read by every student trained on them.

In a search every candidate is distilled from the same frozen teacher on the same proxy rows, and the teacher's
forward pass (with its hidden states and the attention projections the relation loss matches) was about 40% of
each candidate's training step, recomputed for every candidate and every epoch. `TeacherCache` runs it once, in
length-sorted batches, and keeps each row's outputs without padding; a training batch then gathers its rows and pads
them again. Every loss masks padding, so the padded positions' values never matter.

A row's outputs computed in another batch differ from the in-batch ones only by float rounding (other matrix
shapes), so a cached run is not bit-identical to an uncached one; it is deterministic itself: same seed, same
numbers, resumed or not. Kept in memory (fp32, or fp16 when fp32 would pass the budget): a search's proxy is a few
thousand rows, and the cache lives as long as the process that distils them.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from kdnas_deploy.data.encode import MODEL_INPUTS

log = logging.getLogger(__name__)

#: Share of the memory available when the cache is built that it may take.
MEMORY_SHARE = 0.25
#: Budget where the available memory cannot be read (not Linux).
UNKNOWN_MEMORY_BUDGET = 2 * 2**30


@dataclass(frozen=True)
class TeacherBatch:
    """The teacher's outputs for one padded batch, as the distillation objective reads them."""

    logits: torch.Tensor  # batch, labels
    hidden: dict[int, torch.Tensor]  # teacher layer (0-based) -> its output, batch x length x width
    qkv: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None  # of `TeacherCache.qkv_layer`


def rows_digest(dataset: Any) -> str:
    """What identifies a set of training rows for the cache: their token ids, in order."""
    h = hashlib.sha256()
    for ids in dataset["input_ids"]:
        h.update(np.asarray(ids, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


def model_digest(model: nn.Module) -> str:
    """What identifies the teacher a cache was built from: every parameter's name, shape and first values (a ranked
    copy of a teacher permutes its units, so it differs from the teacher in these even though it computes the same
    logits)."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, param in model.named_parameters():
            h.update(f"{name}:{tuple(param.shape)}".encode())
            h.update(param.detach().reshape(-1)[:64].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class TeacherCache:
    """Per row: logits, the hidden states of `layers` and the query/key/value projections of `qkv_layer`."""

    def __init__(self, logits: torch.Tensor, tokens: torch.Tensor, offsets: torch.Tensor, layers: tuple[int, ...],
                 qkv_layer: int | None, digest: str, teacher: str = ""):
        self.logits = logits  # rows x labels, fp32
        self.tokens = tokens  # all rows' real tokens x (len(layers) + 3 if qkv) x width
        self.offsets = offsets  # rows + 1: row r is tokens[offsets[r]:offsets[r + 1]]
        self.layers = layers
        self.qkv_layer = qkv_layer
        self.digest = digest
        self.teacher = teacher  # model_digest of the teacher it was built from

    @property
    def nbytes(self) -> int:
        return self.tokens.numel() * self.tokens.element_size() + self.logits.numel() * 4

    def covers(self, layers: Sequence[int], qkv_layer: int | None) -> bool:
        """Whether a student mapped to teacher `layers` (and matching `qkv_layer`'s relations, when not None) can
        read everything it needs from here."""
        return set(layers) <= set(self.layers) and (qkv_layer is None or qkv_layer == self.qkv_layer)

    def matches(self, dataset: Any, teacher: nn.Module | None = None) -> bool:
        """Whether this cache holds `teacher`'s outputs (when given) on `dataset`'s rows, in its order."""
        if teacher is not None and model_digest(teacher) != self.teacher:
            return False
        return len(dataset) == len(self.logits) and rows_digest(dataset) == self.digest

    @classmethod
    def for_distillation(cls, teacher: nn.Module, dataset: Any, pad_token_id: int, config: Any, *,
                         batch_size: int = 128, device: torch.device | str = "cpu",
                         budget_bytes: int | None = None) -> TeacherCache | None:
        """What students of any depth distilled from `teacher` with `config` (a DistillConfig) read: every teacher
        layer's hidden states (or those of its layer map), and the projections of the layer the relation loss matches
        (the last one, or the map's last)."""
        teacher_layers = teacher.config.num_hidden_layers
        layers = (config.layer_map or range(teacher_layers)) if config.hidden_weight > 0 else ()
        qkv = (config.layer_map[-1] if config.layer_map else teacher_layers - 1) if config.relation_weight > 0 else None
        return cls.build(teacher, dataset, pad_token_id, layers, qkv, batch_size=batch_size, device=device,
                         budget_bytes=budget_bytes)

    @classmethod
    def build(cls, teacher: nn.Module, dataset: Any, pad_token_id: int, layers: Sequence[int], qkv_layer: int | None,
              *, batch_size: int = 128, device: torch.device | str = "cpu",
              budget_bytes: int | None = None) -> TeacherCache | None:
        """Run `teacher` over `dataset` once; None (and a log line) when even fp16 would pass `budget_bytes`
        (default: MEMORY_SHARE of the memory available now)."""
        from kdnas_deploy.distill.objective import _QKVRecorder
        from kdnas_deploy.distill.evaluation import sorted_batches
        from kdnas_deploy.util.resources import available_memory

        layers = tuple(sorted(set(layers)))
        width = teacher.config.hidden_size
        parts = len(layers) + (3 if qkv_layer is not None else 0)
        lengths = np.array([len(ids) for ids in dataset["input_ids"]], dtype=np.int64)
        if budget_bytes is None:
            free = available_memory()
            budget_bytes = int(MEMORY_SHARE * free) if free is not None else UNKNOWN_MEMORY_BUDGET
        budget = budget_bytes
        need = int(lengths.sum()) * parts * width * 4
        dtype = torch.float32 if need <= budget else torch.float16
        if need // 2 > budget:
            log.warning("teacher outputs of %d rows need %.1f GB, over the %.1f GB this run may keep: the teacher runs "
                        "for every student instead", len(lengths), need / 2 / 1e9, budget / 1e9)
            return None
        offsets = torch.zeros(len(lengths) + 1, dtype=torch.long)
        offsets[1:] = torch.from_numpy(np.cumsum(lengths))
        tokens = torch.empty((int(lengths.sum()), parts, width), dtype=dtype)
        logits = torch.empty((len(lengths), teacher.config.num_labels), dtype=torch.float32)
        was_training = teacher.training
        home = next(teacher.parameters()).device
        teacher.eval().to(device)
        recorder = _QKVRecorder(teacher, qkv_layer) if qkv_layer is not None else None
        try:
            with torch.no_grad():
                for idx, batch in sorted_batches(dataset, batch_size, pad_token_id):
                    out = teacher(**{k: batch[k].to(device) for k in MODEL_INPUTS}, output_hidden_states=bool(layers))
                    per_token = [out.hidden_states[t + 1] for t in layers]
                    if recorder is not None:
                        per_token += list(recorder.take())
                    logits[torch.from_numpy(idx)] = out.logits.float().cpu()
                    if not per_token:  # logits only
                        continue
                    stacked = torch.stack(per_token, dim=2).to("cpu", dtype)  # batch, length, parts, width
                    for b, row in enumerate(idx):
                        start, end = int(offsets[row]), int(offsets[row + 1])
                        tokens[start:end] = stacked[b, :end - start]
        finally:
            if recorder is not None:
                recorder.remove()
            teacher.train(was_training).to(home)
        return cls(logits, tokens, offsets, layers, qkv_layer, rows_digest(dataset), model_digest(teacher))

    def gather(self, rows: torch.Tensor, length: int, device: torch.device | str) -> TeacherBatch:
        """The outputs of `rows` padded with zeros to `length` tokens, as float32 on `device`."""
        rows_list = rows.tolist()
        padded = torch.zeros((len(rows_list), length, *self.tokens.shape[1:]), dtype=self.tokens.dtype)
        for b, row in enumerate(rows_list):
            start, end = int(self.offsets[row]), int(self.offsets[row + 1])
            padded[b, :end - start] = self.tokens[start:end]
        padded = padded.to(device, torch.float32, non_blocking=True)
        hidden = {t: padded[:, :, k] for k, t in enumerate(self.layers)}
        qkv = None
        if self.qkv_layer is not None:
            n = len(self.layers)
            qkv = (padded[:, :, n], padded[:, :, n + 1], padded[:, :, n + 2])
        return TeacherBatch(self.logits[rows_list].to(device), hidden, qkv)
