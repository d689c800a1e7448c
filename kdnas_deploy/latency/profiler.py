"""Fill the latency table for a search space, and check its predictions against fresh timings."""

from __future__ import annotations

import logging
import math
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

from kdnas_deploy.hardware import HardwareProfile
from kdnas_deploy.latency.measure import BuiltGraph
from kdnas_deploy.latency.predictor import (
    BLOCK_VOCAB, MIN_LAYER_FIT, Item, LatencyModel, Prediction, base_arch, block_arch,
)
from kdnas_deploy.latency.timing import Timing, combine_sessions, interleaved_rounds
from kdnas_deploy.util.resources import pid_alive
from kdnas_deploy.space import BERT_VOCAB_SIZE, SearchSpace, StudentArch

log = logging.getLogger(__name__)

#: Whole models timed per space to calibrate the composition.
DEFAULT_CALIBRATION = 12

ProgressFn = Callable[[Item, bool], None]  # (item, came_from_cache)
StepFn = Callable[[int, int], None]  # (steps done since the last call, steps added to the plan)


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


def designed_blocks(space: SearchSpace) -> list[tuple[int, int, int]]:
    """The layer shapes a profile times by default; the layer fit (`LayerFit`) predicts the others.

    The fit is linear in six features of (width, heads, FFN size), so it needs spread, not every shape: per width,
    the four corners of its (heads, FFN size) grid and the grid's centre. Every other shape of that width then lies
    inside what was timed, so the fit interpolates and never extrapolates (`LatencyModel.fit_covers`). The centre
    also shows where cost bends between the corners. Where that is fewer than MIN_LAYER_FIT shapes (a small
    space), every shape is timed.
    """
    by_width: dict[int, list[tuple[int, int, int]]] = {}
    for block in space.blocks():
        by_width.setdefault(block[0], []).append(block)
    chosen: set[tuple[int, int, int]] = set()
    for h, blocks in by_width.items():
        heads = sorted({a for _, a, _ in blocks})
        ffns = sorted({i for _, _, i in blocks})
        want = [(a, i) for a in (heads[0], heads[-1]) for i in (ffns[0], ffns[-1])]
        want.append((heads[len(heads) // 2], ffns[len(ffns) // 2]))
        chosen |= {(h, a, i) for a, i in want if (h, a, i) in blocks}
    if len(chosen) < MIN_LAYER_FIT:
        return list(space.blocks())
    return sorted(chosen)


def plan(space: SearchSpace, calibration: int = DEFAULT_CALIBRATION, seed: int = 0, *, full: bool = False) -> list[Item]:
    """Every timing a space needs: base and stem per width, the designed layer shapes (`full`: every layer shape),
    whole models to calibrate the composition."""
    items: list[Item] = [(kind, base_arch(h)) for h in space.hidden for kind in ("base", "stem")]
    items += [("block", block_arch(*b)) for b in (space.blocks() if full else designed_blocks(space))]
    items += [("model", a) for a in calibration_archs(space, calibration, seed)]
    return items


@dataclass
class ProfileResult:
    measured: list[Item] = field(default_factory=list)
    cached: list[Item] = field(default_factory=list)
    unfused: list[StudentArch] = field(default_factory=list)
    noisy: list[StudentArch] = field(default_factory=list)
    extra_sessions: int = 0  # sessions added because the probe showed a slow spell
    remeasured: list[Item] = field(default_factory=list)  # committed before the probe's reference was known
    #: The machine's state during the run: the probe's median timing over its reference (1.0: calm throughout;
    #: 1.3: sessions ran about 30% slow). None without a probe (one session per timing, or nothing to time).
    probe_slowdown: float | None = None
    wall_s: float = 0.0

    @property
    def total(self) -> int:
        return len(self.measured) + len(self.cached)


#: Graphs built and then timed together, round by round: a graph's sessions are a group's worth of other sessions
#: apart, and a group's timings are committed about a minute after its first build (see `profile_items`).
GROUP_SIZE = 8
#: A group also closes before its graphs would hold more than this on disk (MB), so a profile's temp folder stays
#: well under 1 GB whatever the space (one BERT-base graph alone is 440 MB in fp32).
GROUP_MB = 500.0
#: A session counts as calm while the probe runs within this factor of its fastest time.
CALM_RATIO = 1.15
#: Calm sessions an item needs before its timing is committed (the fastest session counts, so two are plenty).
NEED_CALM = 2
#: Sessions an item may take beyond the profile's count while waiting for calm ones.
MAX_EXTRA_SESSIONS = 3
#: The most extra work the slow-spell defences (extra sessions, re-measures) may add to a run, as a share of its
#: planned sessions. On a host that spends most of an hour in a slow state, unbounded defences tripled a profile's
#: time while the rows they re-timed met the same slow state again; past the budget a row keeps its fastest session
#: and its `noisy` flag, and the layer fit's Huber weights discount a slowed block row.
DEFENCE_SHARE = 0.3
#: Re-measures go to the rows that predictions read directly first: whole models, bases, stems, then blocks.
_REMEASURE_ORDER = {"model": 0, "base": 1, "stem": 1, "block": 2}
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


#: The probe: a small fixed graph whose timing shows the machine's state at each round of sessions.
PROBE = StudentArch(2, 256, 4, 1024)
#: Probe timings before the first group: groups commit within a minute, so the probe's reference must be known early
#: or the first groups' rows are judged against a slow start and timed again at the end.
PROBE_WARM = 3
#: The quantile of a run's probe timings that calm is judged against (see `Probe`).
PROBE_QUANTILE = 0.1


@dataclass
class _Pending:
    item: Item
    graph: BuiltGraph
    workdir: Path
    sessions: list[tuple[Timing, float]] = field(default_factory=list)  # (timing, probe ms)


class Probe:
    """Times PROBE in a fresh session on demand; tells calm sessions from slowed ones.

    Calm is judged against a reference: the 10th percentile of this run's probe timings (once there are
    PROBE_WARM), or the reference stored in the table by an earlier run if that is lower. Not the fastest probe
    ever seen: the minimum of hundreds of noisy timings keeps falling as a run goes on, an extreme that the machine
    rarely meets again, and every row committed before it turned up would count as slowed and be timed again. The
    reference is kept in the table (kind `probe`), so a later run, or a benchmark reading a frozen table, judges calm
    against the same reference instead of whatever it met first.
    """

    def __init__(self, model: LatencyModel, workdir: Path, warm: int = 0) -> None:
        self.model = model
        self.graph = model.measurer.build(PROBE, model.profile, workdir / "probe", BLOCK_VOCAB)
        stored = model.lookup("probe", PROBE)
        self.stored: Timing | None = stored.timing if stored else None
        self.history: list[Timing] = []
        self.calls = 0
        for _ in range(warm):  # a reference to judge the first group by, before anything is committed against it
            self()

    def _run_reference(self) -> Timing | None:
        """This run's 10th-percentile probe timing, once there are enough of them."""
        if len(self.history) < max(PROBE_WARM, 1):
            return None
        ordered = sorted(self.history, key=lambda t: t.median_ms)
        return ordered[int(PROBE_QUANTILE * (len(ordered) - 1))]

    @property
    def best(self) -> Timing | None:
        """The reference timing (the lower of the stored one and this run's)."""
        here = self._run_reference()
        if here is None or (self.stored is not None and self.stored.median_ms <= here.median_ms):
            return self.stored or here or (min(self.history, key=lambda t: t.median_ms) if self.history else None)
        return here

    @property
    def best_ms(self) -> float:
        best = self.best
        return best.median_ms if best else float("inf")

    @property
    def improved(self) -> bool:
        best = self.best
        return best is not None and (self.stored is None or best.median_ms < self.stored.median_ms)

    def __call__(self) -> float:
        self.calls += 1
        timing = self.model.measurer.time(self.graph, self.model.profile, self.calls)
        self.history.append(timing)
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
    group: int = GROUP_SIZE, group_mb: float = GROUP_MB, on_step: StepFn | None = None,
    defence_share: float = DEFENCE_SHARE,
) -> ProfileResult:
    """Measure every item the table lacks, a group at a time; each group is committed as soon as it is timed.

    Defences against a machine whose speed drifts (measured on a 2-vCPU VM here: the same graph
    flips between two speeds 40% apart for minutes at a time):
    - items are timed in a seeded random order, so a slow spell scatters over shapes instead of
      biasing one width or depth;
    - up to `group` graphs are built, then timed in interleaved rounds (one fresh session per graph per round, in
      an order rotated per round), so one graph's sessions are spread over the group's minute instead of back to
      back, and a spell inside that minute meets every graph of the group alike;
    - a probe graph is timed before and after every round; a session whose round's probes ran more than
      CALM_RATIO above the probe's reference (`Probe`) counts as slowed, and the item gets up to
      MAX_EXTRA_SESSIONS more sessions (more rounds for the items that lack calm ones) to collect NEED_CALM calm
      ones. The fastest session is stored (flagged noisy if calm ones never came): slowdowns are one-sided, see
      `combine_sessions`;
    - if the probe's reference fell after an item was committed (the run began in a slow spell),
      that item is measured again once at the end;
    - extra sessions and re-measures together add at most `defence_share` of the run's planned sessions
      (DEFENCE_SHARE), so a host in a long slow state cannot stretch a run without bound.
    With sessions = 1 in the profile, each graph is timed once: no probe.
    A group's graphs are deleted as soon as its timings are stored, and a group closes before its graphs pass
    `group_mb` on disk. A kill loses only the group being timed (about a minute of work); every committed timing
    stays.
    `progress(item, cached)` is called as each item is committed (or found cached); `on_step(done, added)` after
    every build and session (`done` = 1), `profile_steps` in all where nothing is added: an extra session adds
    itself (`added` = 1), a re-measure adds its steps before it starts, an item another run stores meanwhile counts
    its steps at once.
    """
    if group < 1:
        raise ValueError("group must be >= 1")
    t0 = time.perf_counter()
    result = ProfileResult()
    missing = set(model.missing(items))
    order = list(dict.fromkeys(items))
    todo = [it for it in order if it in missing]
    np.random.default_rng(seed).shuffle(todo)
    sessions = model.profile.timing.sessions
    for item in order:
        if item not in missing:
            result.cached.append(item)
            if progress:
                progress(item, True)
    remove_stale_workdirs()
    with tempfile.TemporaryDirectory(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-") as tmp:
        probe = Probe(model, Path(tmp), warm=PROBE_WARM) if sessions > 1 and todo else None
        budget = _Budget(math.ceil(defence_share * len(todo) * sessions))
        run = _GroupRun(model, Path(tmp), probe, group, group_mb, result, progress, on_step, budget)
        others: list[Item] = []  # items another live run claimed first: theirs to time, ours to wait for
        committed = run.measure(todo, others)
        if others:
            log.warning("%d timings are being measured by another run on %s; waiting for them", len(others), model.table.path)
        while others:
            time.sleep(CLAIM_POLL_S)
            waiting = others
            others = []
            committed += run.measure(waiting, others)
        if probe is not None:
            redo = sorted((item for item, worst in committed if not probe.calm(worst)),
                          key=lambda item: _REMEASURE_ORDER.get(item[0], 3))
            redo = redo[:budget.left // sessions]
            if redo and on_step:
                on_step(0, len(redo) * (1 + sessions))
            budget.left -= len(redo) * sessions
            _GroupRun(model, Path(tmp), probe, group, group_mb, ProfileResult(), None, on_step, budget).measure(redo)
            result.remeasured = redo
            probe.save()
            if probe.history and probe.best_ms < float("inf"):
                result.probe_slowdown = float(np.median([t.median_ms for t in probe.history])) / probe.best_ms
    result.wall_s = time.perf_counter() - t0
    return result


def profile_steps(model: LatencyModel, items: Sequence[Item]) -> int:
    """The steps `profile_items` reports through `on_step` when no session is added: a build and the profile's
    sessions per item the table lacks."""
    return len(model.missing(items)) * (1 + model.profile.timing.sessions)


#: Planning costs for `estimate_seconds`, from cold profiles on the 2-vCPU hosts this was built on: building a graph
#: (export, fusion, precision) takes about a fixed cost plus a cost per million parameters; a fresh session costs
#: a fixed time plus one per million parameters to load; the runs inside it go at about this many GFLOP per
#: millisecond (fp32; int8 and GPUs are faster, so the estimate errs long there).
BUILD_FIXED_S, BUILD_PER_MPARAM_S = 0.2, 0.17
SESSION_FIXED_S, SESSION_PER_MPARAM_S = 0.05, 0.004
GFLOP_PER_MS = 0.2
#: Rounds a session takes on average (a round whose spread is too high is timed again).
ROUNDS_PER_SESSION = 1.3


def _flops(arch: StudentArch, seq_len: int, batch: int) -> float:
    """Multiply-adds x 2 of one forward pass: projections and FFN, attention scores and mixing."""
    h, i = arch.hidden, arch.ffn
    per_layer = 2 * seq_len * (4 * h * h + 2 * h * i) + 4 * seq_len * seq_len * h
    return batch * (arch.layers * per_layer + 2 * h * h)


def estimate_seconds(model: LatencyModel, items: Sequence[Item]) -> float:
    """About how long `profile_items` takes to time `items` here when the machine stays calm (slow spells add
    sessions), for the estimate printed before a profile starts. A planning figure, not a measurement."""
    from kdnas_deploy.latency.predictor import vocab_for

    timing = model.profile.timing
    sessions = timing.sessions

    def session_s(arch: StudentArch, params: float) -> float:
        ms = max(_flops(arch, model.seq_len, model.batch) / 1e9 / GFLOP_PER_MS, 1e-3)
        calls = timing.warmup + ROUNDS_PER_SESSION * max(timing.repeats, timing.min_round_ms / ms)
        return SESSION_FIXED_S + SESSION_PER_MPARAM_S * params + calls * ms / 1e3

    probe_params = PROBE.parameter_count(BLOCK_VOCAB) / 1e6
    probe_s = session_s(PROBE, probe_params) if sessions > 1 else 0.0
    total = BUILD_FIXED_S + BUILD_PER_MPARAM_S * probe_params if sessions > 1 else 0.0
    for kind, arch in dict.fromkeys(items):
        params = arch.parameter_count(vocab_for(kind)) / 1e6
        total += BUILD_FIXED_S + BUILD_PER_MPARAM_S * params + sessions * (session_s(arch, params) + probe_s)
    return total


def graph_megabytes(model: LatencyModel, item: Item) -> float:
    """What `item`'s graph takes on disk, known before it is built."""
    from kdnas_deploy.latency.graph import artifact_megabytes
    from kdnas_deploy.latency.predictor import vocab_for

    kind, arch = item
    return artifact_megabytes(arch, model.profile.precision, vocab_size=vocab_for(kind))


@dataclass
class _Budget:
    left: int  # extra sessions the slow-spell defences may still add


@dataclass
class _GroupRun:
    """The scheduling loop of `profile_items`."""

    model: LatencyModel
    tmp: Path
    probe: Probe | None
    group: int
    group_mb: float
    result: ProfileResult
    progress: ProgressFn | None
    on_step: StepFn | None = None
    budget: _Budget = field(default_factory=lambda: _Budget(0))
    built: int = 0

    def step(self, done: int = 1, added: int = 0) -> None:
        if self.on_step:
            self.on_step(done, added)

    def measure(self, todo: Sequence[Item], others: list[Item] | None = None) -> list[tuple[Item, float]]:
        """Build and time `todo` group by group; returns (item, slower probe of its fastest session) per commit.

        With `others`, each item is claimed in the table before it is built: one another run has stored meanwhile
        counts as cached, one another live run holds goes to `others`. Without it (re-measuring our own rows),
        none is."""
        committed: list[tuple[Item, float]] = []
        queue = list(todo)
        while queue:
            batch: list[_Pending] = []
            megabytes = 0.0
            while queue and len(batch) < self.group:
                item = queue[0]
                size = graph_megabytes(self.model, item)
                if batch and megabytes + size > self.group_mb:
                    break
                queue.pop(0)
                if others is not None and not self.model.claim(item):
                    if self.model.lookup(*item) is not None:
                        self.result.cached.append(item)
                        if self.progress:
                            self.progress(item, True)
                        self.step(1 + self.model.profile.timing.sessions)
                    else:
                        others.append(item)
                    continue
                workdir = self.tmp / f"g{self.built}"
                self.built += 1
                batch.append(_Pending(item, self.model.build(item, workdir), workdir))
                megabytes += size
                self.step()
            committed += self._time_group(batch)
        return committed

    def _time_group(self, batch: list[_Pending]) -> list[tuple[Item, float]]:
        """Rounds of one session per graph, in an order rotated per round, each round between two probe timings
        (the probe after one round is the probe before the next): a session counts as calm when both probes of its
        round were. Probing per round rather than per session halves the timing work, and slow spells last far
        longer than a round (tens of seconds to minutes); the fastest session is stored either way."""
        want = self.model.profile.timing.sessions
        need_calm = min(NEED_CALM, want)
        probe, committed = self.probe, []
        active, rnd = list(batch), 0
        before = probe() if probe is not None else 0.0
        while active:
            shift = rnd % len(active)
            timings = []
            for p in active[shift:] + active[:shift]:
                timings.append((p, self.model.time_session(p.graph, seed=len(p.sessions))))
                self.step(1, int(len(p.sessions) >= want))  # an extra session was not in the plan
            after = probe() if probe is not None else 0.0
            for p, timing in timings:
                p.sessions.append((timing, max(before, after)))
            before = after
            rnd += 1
            for p in list(active):
                calm = [(t, pr) for t, pr in p.sessions if probe is None or probe.calm(pr)]
                if len(p.sessions) < want:
                    continue
                if len(calm) < need_calm and len(p.sessions) < want + MAX_EXTRA_SESSIONS and self.budget.left > 0:
                    self.budget.left -= 1  # one more session for this item, in the next round
                    continue
                active.remove(p)
                committed.append((p.item, self._commit(p, len(calm) >= need_calm or probe is None)))
        return committed

    def _commit(self, p: _Pending, calm_enough: bool) -> float:
        # The fastest session counts whether or not its probes were calm: a session can be slowed, never sped
        # up. Calm sessions only decide how many sessions an item gets.
        timing = combine_sessions([t for t, _ in p.sessions])
        if not calm_enough:
            timing = replace(timing, noisy=True)
        entry = self.model.store(p.item[0], p.graph, timing)
        shutil.rmtree(p.workdir, ignore_errors=True)
        result = self.result
        result.measured.append(p.item)
        result.extra_sessions += len(p.sessions) - self.model.profile.timing.sessions
        if not entry.fused:
            result.unfused.append(entry.arch)
        if entry.timing.noisy:
            result.noisy.append(entry.arch)
        if self.progress:
            self.progress(p.item, False)
        return min(p.sessions, key=lambda tp: tp[0].median_ms)[1]


def profile_space(
    model: LatencyModel,
    space: SearchSpace,
    *,
    calibration: int = DEFAULT_CALIBRATION,
    seed: int = 0,
    progress: ProgressFn | None = None,
    full: bool = False,
) -> ProfileResult:
    return profile_items(model, plan(space, calibration, seed, full=full), seed=seed, progress=progress)


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
    """Time each architecture whole (not stored) and set it beside the table's prediction (`time_whole`)."""
    model.profile.check_runnable()
    preds = [model.predict(arch, use_whole=False) for arch in archs]
    timings = time_whole(model, [(arch, model.profile) for arch in archs], progress)
    return [VerifyRow(pred, timing) for pred, timing in zip(preds, timings)]


def time_whole(
    model: LatencyModel, jobs: Sequence[tuple[StudentArch, HardwareProfile]],
    progress: Callable[[StudentArch], None] | None = None,
) -> list[Timing]:
    """Time each (architecture, profile shape) whole, nothing stored, the fastest session as the table keeps it.

    The jobs are timed side by side: the profile's sessions become interleaved rounds, one fresh session per job per
    round, so a slow spell meets every job alike instead of deciding one row's error. A job's profile may be another
    shape of `model`'s (a length drawn from a traffic distribution). `progress(arch)` is called after each build and
    each session (`verify_steps` in all).
    """

    def step(arch: StudentArch) -> None:
        if progress:
            progress(arch)

    remove_stale_workdirs()
    with tempfile.TemporaryDirectory(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-verify-") as tmp:
        graphs = []
        for k, (arch, prof) in enumerate(jobs):
            graphs.append(model.measurer.build(arch, prof, Path(tmp) / str(k) / str(arch), BERT_VOCAB_SIZE))
            step(arch)

        def session(k: int, r: int) -> Timing:
            timing = model.measurer.time(graphs[k], jobs[k][1], r)
            step(jobs[k][0])
            return timing

        sessions = interleaved_rounds(list(range(len(jobs))), session, model.profile.timing.sessions)
    return [combine_sessions(sessions[k]) for k in range(len(jobs))]


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
        "machine": {k: info[k] for k in ("cpu", "cpu_count", "cpu_features", "machine", "onnxruntime", "gpu") if k in info},
        "table": str(model.table.path),
        "space": {"name": space.name, "architectures": len(space), "layer_shapes": len(space.blocks())},
        "timings": {"needed": result.total, "measured": len(result.measured), "cached": len(result.cached),
                    "unfused": [str(a) for a in result.unfused], "noisy": [str(a) for a in result.noisy],
                    "extra_sessions": result.extra_sessions, "remeasured": len(result.remeasured),
                    "probe_slowdown": None if result.probe_slowdown is None else round(result.probe_slowdown, 3)},
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
