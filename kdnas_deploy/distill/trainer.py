"""The training loop shared by teacher fine-tuning and distillation, and evaluation on a split.

AdamW with linear warm-up and decay, gradient clipping, seeded batch order (one generator per epoch, so a
resumed run sees the same batches), a checkpoint written atomically after every epoch and every few minutes
within one (an epoch of a full-set distillation takes most of an hour on CPU, too long to lose to a crash), and
bf16/fp16 autocast on CUDA. On CPU a run is deterministic: same seed, same data, same numbers, resumed or not.
"""

from __future__ import annotations

import math
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from kdnas_deploy.distill import LENGTH_BUCKETS
from kdnas_deploy.data.encode import ROW_IDS, collate
from kdnas_deploy.util.errors import KdnasError, first_line

CHECKPOINT = "checkpoint.pt"
#: Seconds of training between checkpoints within an epoch: the most a crash can lose. A save costs about a second.
CHECKPOINT_EVERY_S = 300.0
#: Steps between checks that the loss is finite on CUDA (each check waits for the GPU).
SYNC_EVERY = 50


@dataclass
class TrainConfig:
    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    eval_batch_size: int = 128
    seed: int = 0
    device: str = "auto"
    #: bf16 (or fp16 with loss scaling) autocast on CUDA; ignored on CPU.
    mixed_precision: bool = True
    #: Length-bucketed batches: each window of this many batches' rows (drawn at random) is sorted by length before
    #: it is cut into batches, and the batches are shuffled; 0 draws plain random batches. Rows of a batch then have
    #: similar lengths, so little of each padded batch is padding (SST-2 rows average 13 tokens but were padded to
    #: about 40 in random batches; MNLI 40 to about 90).
    length_buckets: int = LENGTH_BUCKETS

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise KdnasError("epochs and batch sizes must be at least 1")
        if not self.learning_rate > 0:
            raise KdnasError(f"learning rate must be positive, got {self.learning_rate}")
        if not 0 <= self.warmup_ratio < 1:
            raise KdnasError(f"warm-up ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.length_buckets < 0:
            raise KdnasError(f"length buckets must be 0 or more, got {self.length_buckets}")


class Objective(Protocol):
    """A module whose parameters are trained and whose forward turns a batch into (loss, named loss parts)."""

    model: nn.Module

    def __call__(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]: ...
    def parameters(self) -> Any: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> Any: ...
    def train(self, mode: bool = True) -> Any: ...
    def to(self, device: Any) -> Any: ...


class TrainProgress:
    """Hooks for showing progress; the default shows nothing (library use)."""

    def start(self, total_steps: int, done_steps: int) -> None: ...
    def step(self, loss: Any) -> None:
        """After each step; `loss` is a 0-d tensor on the training device (`float(loss)` waits for the device)."""
    def epoch_end(self, epoch: int, metrics: dict[str, float]) -> None: ...
    def stop(self) -> None: ...


@dataclass
class TrainResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    train_seconds: float = 0.0
    examples: int = 0

    @property
    def examples_per_second(self) -> float:
        return self.examples / self.train_seconds if self.train_seconds > 0 else 0.0

    @property
    def final_metrics(self) -> dict[str, float]:
        return self.history[-1].get("metrics", {}) if self.history else {}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise KdnasError(f"--device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise KdnasError(f"--device {name!r}: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise KdnasError(f"device {name!r} asked for, but no CUDA GPU is visible to torch")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise KdnasError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def _limit_threads() -> None:
    """No more compute threads than CPUs this process may use (torch counts the host's cores, not a container's)."""
    from kdnas_deploy.util.resources import cpu_budget

    if torch.get_num_threads() > cpu_budget():
        torch.set_num_threads(cpu_budget())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _optimizer(objective: Objective, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; biases and LayerNorm weights are not decayed (the BERT recipe)."""
    decay, no_decay = [], []
    for name, param in objective.named_parameters():  # type: ignore[attr-defined]
        if param.requires_grad:
            (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel is ~8x faster than the default on CPU, where the word-embedding matrix dominates the step.
    fused = all(p.is_floating_point() for p in decay + no_decay)
    return torch.optim.AdamW(groups, lr=config.learning_rate, fused=fused)


def _schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    from transformers import get_linear_schedule_with_warmup

    return get_linear_schedule_with_warmup(optimizer, warmup, total)


def batch_order(lengths: Sequence[int], batch_size: int, buckets: int, generator: torch.Generator) -> list[list[int]]:
    """Row indices of an epoch's batches, drawn from `generator` alone (same generator state, same batches: a resumed
    epoch skips exactly the batches it saw). `buckets` > 0: windows of `buckets` batches' worth of random rows are
    each sorted by length and cut into batches, then every batch's place is shuffled, so rows of similar length share
    a batch while batch order and membership stay random. Always ceil(rows / batch_size) batches."""
    if buckets <= 0:
        # Exactly what DataLoader(shuffle=True, generator=...) drew before buckets, which first takes its workers' base
        # seed from the generator: runs with buckets off reproduce earlier runs batch for batch.
        torch.empty((), dtype=torch.int64).random_(generator=generator)
        order = torch.randperm(len(lengths), generator=generator).tolist()
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    order = torch.randperm(len(lengths), generator=generator).tolist()
    window = batch_size * buckets  # a multiple of the batch size: only the last batch of the epoch can be short
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        rows = sorted(order[start:start + window], key=lambda i: lengths[i])  # stable: ties keep their random order
        batches += [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def _batches(dataset: Any, order: list[list[int]], pad_token_id: int, with_rows: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Padded batches of `order`'s rows; `with_rows` adds their indices (`ROW_IDS`) for an objective that looks rows
    up (the teacher's cached outputs)."""
    # Not a DataLoader: without a generator of its own it draws a seed from torch's global generator, the one dropout
    # draws from, and a resumed run would then draw different dropout masks than the run it continues.
    fetch = getattr(dataset, "__getitems__", None)  # a datasets.Dataset reads a batch's rows in one call
    for rows in order:
        batch = collate(fetch(rows) if fetch else [dataset[i] for i in rows], pad_token_id)
        if with_rows:
            batch[ROW_IDS] = torch.tensor(rows, dtype=torch.long)
        yield batch


def _as_numbers(values: list[Any]) -> list[float]:
    return [float(v) for v in values]


def _fold(sums: dict[str, float], steps: list[dict[str, Any]]) -> dict[str, float]:
    """`sums` plus each step's loss parts, added in step order as numbers (as when parts were numbers each step)."""
    sums = dict(sums)
    for parts in steps:
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    return sums


def _check_finite(losses: list[Any], step: int) -> None:
    tensors = [v for v in losses if isinstance(v, torch.Tensor)]
    finite = all(math.isfinite(v) for v in losses if not isinstance(v, torch.Tensor))
    if tensors:
        finite = finite and bool(torch.isfinite(torch.stack(tensors)).all())  # one wait for the device, not one per step
    if not finite:
        raise KdnasError(f"training diverged: the loss is not finite by step {step}; try a lower learning rate")


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    os.close(fd)
    torch.save(state, tmp)
    os.replace(tmp, path)


def train(
    objective: Objective,
    train_set: Any,
    config: TrainConfig,
    *,
    pad_token_id: int = 0,
    evaluate: Callable[[], dict[str, float]] | None = None,
    checkpoint_dir: Path | None = None,
    key: str = "",
    progress: TrainProgress | None = None,
    checkpoint_every: float | None = None,
) -> TrainResult:
    """Trains `objective` for `config.epochs` epochs, evaluating and checkpointing after each.

    With `checkpoint_dir`, a checkpoint is also written within an epoch every `checkpoint_every` seconds
    (default CHECKPOINT_EVERY_S), and a checkpoint left there by the same run (`key`, a hash of its settings) is
    resumed from the step after it, with the same batches, dropout and numbers as a run never stopped.
    """
    every = CHECKPOINT_EVERY_S if checkpoint_every is None else checkpoint_every
    progress = progress or TrainProgress()
    device = resolve_device(config.device)
    _limit_threads()
    objective.to(device)  # before the optimizer: fused AdamW wants its parameters on their final device
    steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
    lengths = [len(ids) for ids in train_set["input_ids"]] if config.length_buckets else [0] * len(train_set)
    total = steps_per_epoch * config.epochs
    optimizer = _optimizer(objective, config)
    scheduler = _schedule(optimizer, int(config.warmup_ratio * total), total)
    result = TrainResult()
    start_epoch, start_step = 0, 0
    partial: dict[str, Any] = {}  # the interrupted epoch's running sums
    ckpt = checkpoint_dir / CHECKPOINT if checkpoint_dir else None
    seed_everything(config.seed)
    autocast, scaler = _mixed_precision(device, config.mixed_precision)
    if ckpt is not None and ckpt.exists():
        state = load_checkpoint(ckpt, device)
        if state.get("key") != key:
            raise KdnasError(f"{ckpt} was written by a run with other settings; remove it or use another --out")
        objective.load_state_dict(state["objective"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_states(state)
        start_epoch, start_step = state["epoch"], state.get("step", 0)
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        partial = state.get("partial", {})
        result.history = state["history"]
        result.steps = start_epoch * steps_per_epoch + start_step
        # The saved total includes the interrupted epoch's seconds, which that epoch adds back when it ends.
        result.train_seconds = state.get("train_seconds", 0.0) - partial.get("seconds", 0.0)
        result.examples = state.get("examples", 0)

    def save(epoch: int, step: int, running: dict[str, Any]) -> None:
        _save_checkpoint(ckpt, {
            "key": key, "epoch": epoch, "step": step, "partial": running, "objective": objective.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), **_rng_states(),
            **({"scaler": scaler.state_dict()} if scaler is not None else {}),
            "history": result.history, "train_seconds": result.train_seconds + running.get("seconds", 0.0),
            "examples": result.examples,
        })

    # On CUDA the loss is checked every few steps (checking is a host sync); on CPU, where it is free, every step.
    check_every = SYNC_EVERY if device.type == "cuda" else 1
    wants_rows = bool(getattr(objective, "wants_rows", False))
    progress.start(total, result.steps)
    try:
        for epoch in range(start_epoch, config.epochs):
            objective.train()
            generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
            skip = start_step if epoch == start_epoch else 0
            # Per-step losses stay tensors on the device until they are needed as numbers (a checkpoint, the epoch's
            # end): reading one back every step makes the host wait for the GPU to finish each step before it queues
            # the next. They are summed in the same order as numbers then, so a CPU run's history is unchanged.
            losses: list[Any] = list(partial.get("losses", [])) if skip else []
            parts_sum: dict[str, float] = dict(partial.get("parts_sum", {})) if skip else {}
            step_parts: list[dict[str, Any]] = []
            epoch_seconds = float(partial.get("seconds", 0.0)) if skip else 0.0
            tic = last_save = time.perf_counter()
            order = batch_order(lengths, config.batch_size, config.length_buckets, generator)
            for batch in _batches(train_set, order[skip:], pad_token_id, with_rows=wants_rows):  # a resumed epoch: the batches it did not see
                batch = {k: v if k == ROW_IDS else v.to(device, non_blocking=True) for k, v in batch.items()}
                with autocast():
                    loss, parts = objective(batch)
                loss_value = loss.detach()
                if check_every == 1 and not torch.isfinite(loss_value):
                    raise KdnasError(f"training diverged: loss is {loss_value.item()} at step {result.steps + 1}; try a lower learning rate")
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                else:
                    loss.backward()
                torch.nn.utils.clip_grad_norm_(objective.parameters(), config.max_grad_norm)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                scheduler.step()
                result.steps += 1
                result.examples += len(batch["labels"])
                losses.append(loss_value)
                step_parts.append(parts)
                if check_every > 1 and result.steps % check_every == 0:
                    _check_finite(losses[-check_every:], result.steps)
                progress.step(loss_value)
                now = time.perf_counter()
                if ckpt is not None and now - last_save >= every and len(losses) < steps_per_epoch:
                    epoch_seconds += now - tic
                    losses, parts_sum = _as_numbers(losses), _fold(parts_sum, step_parts)
                    step_parts = []
                    save(epoch, len(losses), {"losses": losses, "parts_sum": parts_sum, "seconds": epoch_seconds})
                    tic = last_save = time.perf_counter()  # the save's own second is not training time
            losses, parts_sum = _as_numbers(losses), _fold(parts_sum, step_parts)
            _check_finite(losses, result.steps)
            seconds = epoch_seconds + time.perf_counter() - tic
            result.train_seconds += seconds
            objective.train(False)
            metrics = evaluate() if evaluate else {}
            entry = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": round(seconds, 2),
                     "parts": {k: v / len(losses) for k, v in parts_sum.items()}, "metrics": metrics}
            result.history.append(entry)
            if ckpt is not None:
                save(epoch + 1, 0, {})
            progress.epoch_end(epoch + 1, metrics)
    finally:
        progress.stop()
    return result


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint's state, read so that no code in it can run: tensors and plain data only (`weights_only`).

    A file in an output folder is a file anyone with access to that folder could have written; unpickling it in
    full would run whatever it names. Anything else in it, or a file that is not a checkpoint, is one line."""
    try:
        with torch.serialization.safe_globals(_NUMPY_RNG_GLOBALS):  # numpy RNG arrays, in checkpoints of 0.1.0
            state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a damaged or foreign file
        raise KdnasError(f"{path}: not a checkpoint this tool can read safely ({first_line(exc).split('. ')[0]}); "
                         "remove it to start over, or use another --out") from None
    if not isinstance(state, dict) or not {"key", "epoch", "objective", "optimizer", "scheduler"} <= set(state):
        raise KdnasError(f"{path}: not a kdnas-deploy training checkpoint; remove it to start over, or use another --out")
    return state


def _numpy_rng_globals() -> list[Any]:
    # Only what an ndarray of the RNG's uint32 state needs; an object array's items would still go through the same
    # restricted unpickler.
    from numpy._core.multiarray import _reconstruct

    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


_NUMPY_RNG_GLOBALS = _numpy_rng_globals()


def _rng_states() -> dict[str, Any]:
    """Every generator a training step may draw from (dropout: torch's, on CUDA the device's); as tensors and plain
    data, so that a checkpoint loads with `weights_only`."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {"torch_rng": torch.get_rng_state(),
                              "numpy_rng": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
                              "python_rng": random.getstate()}
    if torch.cuda.is_available():
        states["cuda_rng"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch_rng"])
    if "numpy_rng" in state:  # checkpoints written before these were kept restore torch's only
        kind, keys, *rest = state["numpy_rng"]
        keys = keys.numpy() if isinstance(keys, torch.Tensor) else keys
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
        random.setstate(state["python_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])


def _mixed_precision(device: torch.device, wanted: bool) -> tuple[Callable[[], Any], Any]:
    import contextlib

    if device.type != "cuda" or not wanted:
        return contextlib.nullcontext, None
    if torch.cuda.is_bf16_supported():
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16), None
    return lambda: torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")


