"""Fill the latency table for a search space, and check its predictions against fresh timings."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from kdnas_deploy.latency.measure import BuiltGraph
from kdnas_deploy.latency.predictor import Item, LatencyModel, Prediction, base_arch, block_arch
from kdnas_deploy.latency.timing import Timing, combine_sessions
from kdnas_deploy.space import SearchSpace, StudentArch

#: Whole models timed per space to calibrate the composition.
DEFAULT_CALIBRATION = 12

ProgressFn = Callable[[Item, bool], None]  # (item, came_from_cache)


def calibration_archs(space: SearchSpace, n: int, seed: int = 0) -> list[StudentArch]:
    """`n` whole models spread evenly over depth (calibration errors grow with depth), random blocks."""
    if n <= 0:
        return []
    rng = np.random.default_rng(seed)
    blocks = space.blocks()
    depths = np.linspace(0, len(space.layers) - 1, n).round().astype(int)
    out: list[StudentArch] = []
    for d in depths:
        for _ in range(20):  # avoid duplicates where the space allows
            arch = StudentArch(space.layers[d], *blocks[rng.integers(len(blocks))])
            if arch not in out:
                break
        out.append(arch)
    return sorted(set(out))


def plan(space: SearchSpace, calibration: int = DEFAULT_CALIBRATION, seed: int = 0) -> list[Item]:
    """Every timing a space needs: base and stem per width, one block per layer shape, whole models."""
    items: list[Item] = [(kind, base_arch(h)) for h in space.hidden for kind in ("base", "stem")]
    items += [("block", block_arch(*b)) for b in space.blocks()]
    items += [("model", a) for a in calibration_archs(space, calibration, seed)]
    return items


@dataclass
class ProfileResult:
    measured: list[Item] = field(default_factory=list)
    cached: list[Item] = field(default_factory=list)
    unfused: list[StudentArch] = field(default_factory=list)
    noisy: list[StudentArch] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def total(self) -> int:
        return len(self.measured) + len(self.cached)


#: Items built between two sessions of one graph (see `profile_items`).
SESSION_LAG = 16


def profile_items(
    model: LatencyModel, items: Sequence[Item], *, seed: int = 0, progress: ProgressFn | None = None,
    lag: int = SESSION_LAG,
) -> ProfileResult:
    """Measure every item the table lacks; each is committed as soon as its last session is timed.

    Two defences against a machine whose speed drifts (other tenants, frequency scaling):
    - items are timed in a seeded random order, so a slow spell scatters over shapes instead of
      biasing one width or depth;
    - a graph's sessions are spread out: session s of item k is timed after item k + s * lag is
      built, so they fall tens of seconds apart and the median across sessions rejects a spell
      that one of them met. At most lag * (sessions - 1) + 1 graphs wait on disk meanwhile.
    A kill loses only the graphs still waiting; every committed timing stays.
    """
    t0 = time.perf_counter()
    result = ProfileResult()
    missing = set(model.missing(items))
    order = list(dict.fromkeys(items))
    todo = [it for it in order if it in missing]
    np.random.default_rng(seed).shuffle(todo)
    for item in order:
        if item not in missing:
            result.cached.append(item)
            if progress:
                progress(item, True)
    sessions = model.profile.timing.sessions
    waiting: dict[int, tuple[BuiltGraph, list[Timing]]] = {}
    with tempfile.TemporaryDirectory(prefix="kdnas-profile-") as tmp:
        last_step = len(todo) - 1 + lag * (sessions - 1)
        for step in range(last_step + 1):
            if step < len(todo):
                waiting[step] = (model.build(todo[step], Path(tmp) / str(step)), [])
            for s in range(sessions):
                k = step - s * lag
                if k not in waiting or len(waiting[k][1]) != s:
                    continue
                graph, timings = waiting[k]
                timings.append(model.time_session(graph, seed=s))
                if s == sessions - 1:
                    entry = model.store(todo[k][0], graph, combine_sessions(timings))
                    shutil.rmtree(Path(tmp) / str(k), ignore_errors=True)
                    del waiting[k]
                    result.measured.append(todo[k])
                    if not entry.fused:
                        result.unfused.append(entry.arch)
                    if entry.timing.noisy:
                        result.noisy.append(entry.arch)
                    if progress:
                        progress(todo[k], False)
    result.wall_s = time.perf_counter() - t0
    return result


def profile_space(
    model: LatencyModel,
    space: SearchSpace,
    *,
    calibration: int = DEFAULT_CALIBRATION,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> ProfileResult:
    return profile_items(model, plan(space, calibration, seed), seed=seed, progress=progress)


@dataclass(frozen=True)
class ErrorStats:
    n: int
    mape: float  # mean absolute percentage error, in percent
    within_10: float  # share of predictions within 10% of the measurement
    spearman: float
    max_ape: float

    def to_dict(self) -> dict[str, float]:
        return {"n": self.n, "mape_pct": self.mape, "within_10pct": self.within_10,
                "spearman": self.spearman, "max_ape_pct": self.max_ape}


def error_stats(predicted: Sequence[float], measured: Sequence[float]) -> ErrorStats:
    p = np.asarray(predicted, dtype=float)
    m = np.asarray(measured, dtype=float)
    ape = np.abs(p - m) / m * 100
    rho = float(spearmanr(p, m).statistic) if len(p) > 2 else float("nan")
    return ErrorStats(len(p), float(ape.mean()), float((ape <= 10).mean()), rho, float(ape.max()))


@dataclass(frozen=True)
class VerifyRow:
    prediction: Prediction
    timing: Timing

    @property
    def error_pct(self) -> float:
        return (self.prediction.ms - self.timing.median_ms) / self.timing.median_ms * 100


def verify_sample(model: LatencyModel, space: SearchSpace, n: int, seed: int = 1) -> list[StudentArch]:
    """`n` random architectures that the table has not timed whole (so it cannot just look them up)."""
    timed = {e.arch for e in model.table.entries(model.fingerprint, model.batch, model.seq_len, "model")}
    pool = [a for a in space.sample(len(space), seed) if a not in timed]
    return pool[:n]


def verify(
    model: LatencyModel, archs: Sequence[StudentArch], progress: Callable[[StudentArch], None] | None = None
) -> list[VerifyRow]:
    """Time each architecture whole (not stored) and set it beside the table's prediction."""
    rows = []
    for arch in archs:
        pred = model.predict(arch, use_whole=False)
        timing = model.time_whole(arch).timing
        rows.append(VerifyRow(pred, timing))
        if progress:
            progress(arch)
    return rows


def summarize(
    model: LatencyModel,
    space: SearchSpace,
    result: ProfileResult,
    archs: Sequence[StudentArch] = (),
    verified: Sequence[VerifyRow] = (),
    teacher: StudentArch | None = None,
) -> dict[str, Any]:
    """A JSON-ready account of one profiling run: what was timed, calibration, predictions, errors."""
    cal = model.calibration()
    info = model.info
    out: dict[str, Any] = {
        "profile": model.profile.name,
        "precision": model.profile.precision.value,
        "batch": model.batch,
        "seq_len": model.seq_len,
        "fingerprint": model.fingerprint,
        "machine": {k: info[k] for k in ("cpu", "cpu_count", "onnxruntime", "gpu") if k in info},
        "table": str(model.table.path),
        "space": {"name": space.name, "architectures": len(space), "layer_shapes": len(space.blocks())},
        "timings": {"needed": result.total, "measured": len(result.measured), "cached": len(result.cached),
                    "unfused": [str(a) for a in result.unfused], "noisy": [str(a) for a in result.noisy]},
        "wall_s": round(result.wall_s, 2),
        "calibration": {"scale": cal.scale, "exponent": cal.exponent, "points": cal.points},
        "predictions": [
            {"arch": str(p.arch), "ms": p.ms, "composed_ms": p.composed_ms, "source": p.source,
             "params": p.arch.parameter_count()}
            for p in (model.predict(a) for a in dict.fromkeys(archs))
        ],
    }
    if teacher is not None:
        out["teacher"] = str(teacher)
    if verified:
        stats = error_stats([r.prediction.ms for r in verified], [r.timing.median_ms for r in verified])
        out["verify"] = stats.to_dict() | {
            "rows": [{"arch": str(r.prediction.arch), "predicted_ms": r.prediction.ms,
                      "measured_ms": r.timing.median_ms, "error_pct": r.error_pct} for r in verified]
        }
    return out
