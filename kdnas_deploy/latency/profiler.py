"""Fill the latency table for a search space, and check its predictions against fresh timings."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from kdnas_deploy.latency.measure import BuiltGraph
from kdnas_deploy.latency.predictor import BLOCK_VOCAB, Item, LatencyModel, Prediction, base_arch, block_arch
from kdnas_deploy.latency.timing import Timing, combine_sessions, interleaved_rounds
from kdnas_deploy.resources import pid_alive
from kdnas_deploy.space import BERT_VOCAB_SIZE, SearchSpace, StudentArch

log = logging.getLogger(__name__)

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
    extra_sessions: int = 0  # sessions added because the probe showed a slow spell
    remeasured: list[Item] = field(default_factory=list)  # committed before the probe's best was known
    wall_s: float = 0.0

    @property
    def total(self) -> int:
        return len(self.measured) + len(self.cached)


#: Items built between two sessions of one graph (see `profile_items`).
SESSION_LAG = 16
#: A session counts as calm while the probe runs within this factor of its fastest time.
CALM_RATIO = 1.15
#: Calm sessions an item needs before its timing is committed (the fastest session counts, so two are plenty).
NEED_CALM = 2
#: Sessions an item may take beyond the profile's count while waiting for calm ones.
MAX_EXTRA_SESSIONS = 3
#: Seconds between looks at items another run is timing.
CLAIM_POLL_S = 2.0
#: Temporary graph folders: the owner's pid follows, so a later run can tell a dead run's leftovers from a live one's.
WORKDIR_PREFIX = "kdnas-profile-"
#: A leftover folder of the naming before the pid was in it is removed once it is this old.
STALE_LEGACY_S = 6 * 3600.0


def remove_stale_workdirs(root: Path | None = None) -> list[Path]:
    """Delete the graph folders of profile runs that died (killed, out of memory): each holds up to GBs of graphs.

    A folder named with a pid is stale when no such process runs; one named the older way (no pid) when it has not
    changed for STALE_LEGACY_S."""
    root = Path(root or tempfile.gettempdir())
    removed = []
    for folder in root.glob(f"{WORKDIR_PREFIX}*"):
        rest = folder.name[len(WORKDIR_PREFIX):]
        pid = rest.split("-", 1)[0]
        try:
            if pid.isdigit() and "-" in rest:
                if pid_alive(int(pid)):
                    continue
            elif time.time() - folder.stat().st_mtime < STALE_LEGACY_S:
                continue
            shutil.rmtree(folder)
            removed.append(folder)
        except OSError:  # another user's folder, or gone meanwhile
            continue
    return removed


#: The probe: a small fixed graph whose timing shows the machine's state at each session.
PROBE = StudentArch(2, 256, 4, 1024)


@dataclass
class _Pending:
    item: Item
    graph: BuiltGraph
    workdir: Path
    due: int
    sessions: list[tuple[Timing, float]] = field(default_factory=list)  # (timing, probe ms)


class Probe:
    """Times PROBE in a fresh session on demand; tells calm sessions from slowed ones.

    Its best time is kept in the table (kind `probe`), so a later run, or a benchmark reading a
    frozen table, judges calm against the same reference instead of whatever it met first.
    """

    def __init__(self, model: LatencyModel, workdir: Path) -> None:
        self.model = model
        self.graph = model.measurer.build(PROBE, model.profile, workdir / "probe", BLOCK_VOCAB)
        stored = model.lookup("probe", PROBE)
        self.best: Timing | None = stored.timing if stored else None
        self.improved = False
        self.calls = 0

    @property
    def best_ms(self) -> float:
        return self.best.median_ms if self.best else float("inf")

    def __call__(self) -> float:
        self.calls += 1
        timing = self.model.measurer.time(self.graph, self.model.profile, self.calls)
        if timing.median_ms < self.best_ms:
            self.best, self.improved = timing, True
        return timing.median_ms

    def bracket(self, run: Callable[[], Timing]) -> tuple[Timing, float]:
        """Run one timed session between two probe timings; returns it with the slower probe.

        A spell that starts or ends during the session shows in one of the two.
        """
        before = self()
        timing = run()
        return timing, max(before, self())

    def calm(self, probe_ms: float) -> bool:
        return probe_ms <= CALM_RATIO * self.best_ms

    def save(self) -> None:
        if self.improved and self.best is not None and self.model.measure_missing:
            self.model.store("probe", self.graph, self.best)


def profile_items(
    model: LatencyModel, items: Sequence[Item], *, seed: int = 0, progress: ProgressFn | None = None,
    lag: int = SESSION_LAG,
) -> ProfileResult:
    """Measure every item the table lacks; each is committed as soon as its sessions are done.

    Defences against a machine whose speed drifts (measured on a 2-vCPU VM here: the same graph
    flips between two speeds 40% apart for minutes at a time):
    - items are timed in a seeded random order, so a slow spell scatters over shapes instead of
      biasing one width or depth;
    - a graph's sessions are spread out: each next session is due `lag` builds later, tens of
      seconds apart, so one slow spell rarely meets all of them;
    - a probe graph is timed before and after every session; a session whose probes ran more than
      CALM_RATIO above the probe's best counts as slowed, and the item gets up to
      MAX_EXTRA_SESSIONS more sessions to collect NEED_CALM calm ones. The fastest session is stored
      (flagged noisy if calm ones never came): slowdowns are one-sided, see `combine_sessions`;
    - if the probe's best improved after an item was committed (the run began in a slow spell),
      that item is measured again once at the end.
    With sessions = 1 in the profile, each item is built, timed once and committed: no probe.
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
    remove_stale_workdirs()
    with tempfile.TemporaryDirectory(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-") as tmp:
        probe = Probe(model, Path(tmp)) if sessions > 1 and todo else None
        others: list[Item] = []  # items another live run claimed first: theirs to time, ours to wait for
        committed = _measure_all(model, todo, Path(tmp), probe, lag, result, progress, others)
        if others:
            log.warning("%d timings are being measured by another run on %s; waiting for them", len(others), model.table.path)
        while others:
            time.sleep(CLAIM_POLL_S)
            waiting = others
            others = []
            committed += _measure_all(model, waiting, Path(tmp), probe, lag, result, progress, others)
        if probe is not None:
            redo = [item for item, worst in committed if not probe.calm(worst)]
            _measure_all(model, redo, Path(tmp), probe, lag, ProfileResult(), None)
            result.remeasured = redo
            probe.save()
    result.wall_s = time.perf_counter() - t0
    return result


def _measure_all(
    model: LatencyModel, todo: Sequence[Item], tmp: Path, probe: Probe | None, lag: int,
    result: ProfileResult, progress: ProgressFn | None, others: list[Item] | None = None,
) -> list[tuple[Item, float]]:
    """The scheduling loop of `profile_items`; returns (item, slowest probe it relied on).

    With `others`, each item is claimed in the table before it is built: one another run has stored meanwhile
    counts as cached, one another live run holds goes to `others`. Without it (re-measuring our own rows), none is."""
    want = model.profile.timing.sessions
    need_calm = min(NEED_CALM, want)
    pending: list[_Pending] = []
    committed: list[tuple[Item, float]] = []
    step = built = 0
    while built < len(todo) or pending:
        while built < len(todo) and others is not None and not model.claim(todo[built]):
            item = todo[built]
            built += 1
            if model.lookup(*item) is not None:
                result.cached.append(item)
                if progress:
                    progress(item, True)
            else:
                others.append(item)
        if built < len(todo):
            workdir = tmp / f"g{built}-{step}"
            pending.append(_Pending(todo[built], model.build(todo[built], workdir), workdir, due=step))
            built += 1
        for p in [p for p in pending if p.due <= step]:
            def run(p: _Pending = p) -> Timing:
                return model.time_session(p.graph, seed=len(p.sessions))

            p.sessions.append(probe.bracket(run) if probe else (run(), 0.0))
            calm = [(t, pr) for t, pr in p.sessions if probe is None or probe.calm(pr)]
            done = len(p.sessions) >= want and (len(calm) >= need_calm or len(p.sessions) >= want + MAX_EXTRA_SESSIONS)
            if not done:
                p.due = step + lag
                continue
            # The fastest session counts whether or not its probes were calm: a session can be slowed, never sped
            # up. Calm sessions only decide how many sessions an item gets.
            timing = combine_sessions([t for t, _ in p.sessions])
            if len(calm) < need_calm and probe is not None:
                timing = replace(timing, noisy=True)
            entry = model.store(p.item[0], p.graph, timing)
            shutil.rmtree(p.workdir, ignore_errors=True)
            pending.remove(p)
            committed.append((p.item, min(p.sessions, key=lambda tp: tp[0].median_ms)[1]))
            result.measured.append(p.item)
            result.extra_sessions += len(p.sessions) - want
            if not entry.fused:
                result.unfused.append(entry.arch)
            if entry.timing.noisy:
                result.noisy.append(entry.arch)
            if progress:
                progress(p.item, False)
        step += 1
    return committed


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


def verify_steps(model: LatencyModel, archs: Sequence[StudentArch]) -> int:
    """How many times `verify` calls its progress callback: one build and the profile's sessions per architecture."""
    return len(archs) * (1 + model.profile.timing.sessions)


def verify(
    model: LatencyModel, archs: Sequence[StudentArch], progress: Callable[[StudentArch], None] | None = None
) -> list[VerifyRow]:
    """Time each architecture whole (not stored) and set it beside the table's prediction.

    The architectures are timed side by side: the profile's sessions become interleaved rounds, one fresh session
    per architecture per round, so a slow spell meets every architecture alike instead of deciding one row's error.
    `progress(arch)` is called after each build and each session (`verify_steps` in all).
    """
    model.profile.check_runnable()
    preds = [model.predict(arch, use_whole=False) for arch in archs]

    def step(arch: StudentArch) -> None:
        if progress:
            progress(arch)

    remove_stale_workdirs()
    with tempfile.TemporaryDirectory(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-verify-") as tmp:
        graphs = {}
        for arch in archs:
            graphs[arch] = model.measurer.build(arch, model.profile, Path(tmp) / str(arch), BERT_VOCAB_SIZE)
            step(arch)

        def session(arch: StudentArch, r: int) -> Timing:
            timing = model.time_session(graphs[arch], seed=r)
            step(arch)
            return timing

        sessions = interleaved_rounds(list(graphs), session, model.profile.timing.sessions)
    return [VerifyRow(pred, combine_sessions(sessions[pred.arch])) for pred in preds]


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
                    "unfused": [str(a) for a in result.unfused], "noisy": [str(a) for a in result.noisy],
                    "extra_sessions": result.extra_sessions, "remeasured": len(result.remeasured)},
        "wall_s": round(result.wall_s, 2),
        "calibration": {"scale": cal.scale, "exponent": cal.exponent, "points": cal.points},
        "layer_fit": {"blocks": fit.points} if (fit := model.layer_fit()) is not None else None,
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
