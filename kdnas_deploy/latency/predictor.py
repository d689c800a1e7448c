"""Whole-model latency composed from per-block timings and calibrated on whole-model timings.

latency(L, h, a, i) = base(h) + L * layer(h, a, i), with
- base(h): a 0-layer model of width h (embeddings, pooler, head, session overhead), and
- layer(h, a, i) = (block(h, a, i) - stem(h)) / BLOCK_LAYERS, from a model of BLOCK_LAYERS layers
  and its 0-layer stem. Blocks and stems use a small vocabulary (BLOCK_VOCAB): a layer never reads
  the embedding table, and the full 30k-row table would make every block graph 15-94 MB to export,
  optimize and quantize. The embedding cost itself comes from `base`, timed at the full vocabulary.

A layer's cost is read from a fit over every block timing of the machine and profile (`LayerFit`), not from its
shape's own row alone, once the table holds enough of them: one row is one measurement of a machine whose speed
flips by tens of percent for minutes, and every architecture of that shape would inherit its error. The fit also
means a profile need not time every shape: it times a designed subset per width (`profiler.designed_blocks`) and
the fit interpolates the rest (`profile --full` times them all).

Encoder latency is close to linear in depth, so this composition ranks shapes well on its own;
whole-model timings in the table then fit a calibration (measured = scale * composed ** exponent,
least squares in log space) that absorbs what composition misses, such as cache pressure of deep
models. An architecture timed whole is answered from its own timing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from dataclasses import dataclass
from typing import Any

import numpy as np

from kdnas_deploy.util.errors import KdnasError
from kdnas_deploy.fingerprint import TIMING_METHOD_VERSION, fingerprint_id, machine_fingerprint
from kdnas_deploy.hardware import HardwareProfile
from kdnas_deploy.latency.measure import BuiltGraph, Measurer, OnnxMeasurer, measure_now
from kdnas_deploy.latency.table import Entry, LatencyTable
from kdnas_deploy.latency.timing import Timing
from kdnas_deploy.space import BERT_VOCAB_SIZE, StudentArch

log = logging.getLogger(__name__)

#: Layers in a block-timing model: two layers average out per-layer jitter at little extra cost.
BLOCK_LAYERS = 2
#: Vocabulary of block and stem graphs (see the module docstring).
BLOCK_VOCAB = 1024
#: Whole-model timings needed before the calibration is trusted over the raw composition.
MIN_CALIBRATION = 3
#: Block timings (of distinct shapes) needed before a layer's cost comes from the fit over all of them.
MIN_LAYER_FIT = 12
#: Relative residual beyond which a block timing counts less in the fit (Huber weights): a slow session's row.
LAYER_FIT_HUBER = 0.05

Item = tuple[str, StudentArch]  # (kind, arch of the graph that is timed)


def base_arch(hidden: int) -> StudentArch:
    return StudentArch(0, hidden, 1, hidden)


def block_arch(hidden: int, heads: int, ffn: int) -> StudentArch:
    return StudentArch(BLOCK_LAYERS, hidden, heads, ffn)


def vocab_for(kind: str) -> int:
    return BLOCK_VOCAB if kind in ("stem", "block") else BERT_VOCAB_SIZE


def items_for(arch: StudentArch) -> list[Item]:
    """The block timings `arch`'s composed latency needs."""
    return [("base", base_arch(arch.hidden)), ("stem", base_arch(arch.hidden)), ("block", block_arch(*arch.block))]


@dataclass(frozen=True)
class Prediction:
    arch: StudentArch
    ms: float
    composed_ms: float
    source: str  # "measured" (timed whole), "calibrated" or "composed"


@dataclass(frozen=True)
class Calibration:
    """measured = scale * composed ** exponent: positive everywhere, exact at the identity.

    A power law rather than an affine fit: an offset fitted on large models goes negative and
    wrecks sub-millisecond ones, while the exponent captures what composition misses on both ends
    (deep, wide models pay cache pressure per layer; tiny ones pay dispatch overhead).
    """

    scale: float = 1.0
    exponent: float = 1.0
    points: int = 0

    def apply(self, composed_ms: float) -> float:
        return self.scale * max(composed_ms, 1e-6) ** self.exponent


def layer_features(hidden: int, heads: int, ffn: int) -> np.ndarray:
    """What a transformer layer's cost is close to linear in, at a fixed batch and sequence length: a constant
    (per-layer node dispatch), the projections (h^2), the FFN (h * i), element-wise work over the hidden and FFN
    activations (h, i: layer norms, GELU, residual adds) and per-head kernels (a). Scaled to similar magnitudes."""
    return np.array([1.0, hidden * hidden / 1e5, hidden * ffn / 1e5, hidden / 1e3, ffn / 1e3, heads / 10.0])


@dataclass(frozen=True)
class LayerFit:
    """A layer's cost as a linear function of its shape (`layer_features`), fitted over one machine's and
    profile's block timings, weighted by relative error with Huber weights so that a row timed in a slow spell
    counts less. A shape is answered only where timed blocks of its width span its heads and FFN size
    (`LatencyModel.fit_covers`); `layer_ms` times any other shape's block first, so the fit never extrapolates to
    a width or FFN size no row has."""

    coef: tuple[float, ...]
    points: int

    def __call__(self, hidden: int, heads: int, ffn: int) -> float:
        return float(layer_features(hidden, heads, ffn) @ np.asarray(self.coef))


def fit_layer_cost(shapes: Iterable[tuple[int, int, int]], layer_ms: Iterable[float],
                   iterations: int = 30) -> LayerFit | None:
    """Iteratively reweighted least squares on relative residuals; None below MIN_LAYER_FIT shapes, or where
    the fit would answer a non-positive cost for one of its own shapes (too few distinct widths to pin it)."""
    shapes, y = list(shapes), np.asarray(list(layer_ms), dtype=float)
    if len(shapes) < MIN_LAYER_FIT or np.any(y <= 0):
        return None
    x = np.stack([layer_features(*shape) for shape in shapes])
    weights = np.ones(len(y))
    coef = np.zeros(x.shape[1])
    for _ in range(iterations):
        w = np.sqrt(weights) / y  # relative error: each row counts by its residual over its own cost
        coef = np.linalg.lstsq(x * w[:, None], y * w, rcond=None)[0]
        residual = np.abs(x @ coef - y) / y
        weights = np.where(residual <= LAYER_FIT_HUBER, 1.0, LAYER_FIT_HUBER / np.maximum(residual, 1e-12))
    if np.any(x @ coef <= 0):
        return None
    return LayerFit(tuple(float(c) for c in coef), len(shapes))


def fit_calibration(composed: Iterable[float], measured: Iterable[float]) -> Calibration:
    """Least squares in log space (so every point counts by its relative error).

    The exponent is kept within [0.8, 1.2]: beyond that the fit is chasing noise, and a wild
    exponent would extrapolate badly to shapes outside the calibration set.
    """
    x = np.log(np.maximum(np.asarray(list(composed), dtype=float), 1e-6))
    y = np.log(np.maximum(np.asarray(list(measured), dtype=float), 1e-6))
    if len(x) < MIN_CALIBRATION:
        return Calibration(points=len(x))
    if np.ptp(x) < 1e-9:
        return Calibration(float(np.exp(np.mean(y - x))), 1.0, len(x))
    exponent, _ = np.polyfit(x, y, 1)
    exponent = float(np.clip(exponent, 0.8, 1.2))
    return Calibration(float(np.exp(np.mean(y - exponent * x))), exponent, len(x))


def _machine_info(known: dict[str, dict[str, Any]], table: LatencyTable, machine: str) -> dict[str, Any]:
    if machine not in known:
        raise KdnasError(f"latency table {table.path} has no machine {machine}")
    return known[machine]


def target_machine(table: LatencyTable, profile: HardwareProfile, machine: str) -> dict[str, Any]:
    """The fingerprint info of `machine`, a fingerprint id in `table` (as `kdnas-deploy profile` prints it on the
    machine that measured it), checked to hold timings of `profile` as this version builds and times graphs:
    a search on a build host can then read the latencies of the deployment target it will never run on."""
    info = _machine_info(table.fingerprints(), table, machine)
    if info.get("profile_hash") != profile.content_hash():
        raise KdnasError(f"machine {machine} in {table.path} timed another definition of profile {profile.name} "
                         f"(its profile {info.get('profile')!r}, hash {info.get('profile_hash')})")
    if info.get("timing_method") != TIMING_METHOD_VERSION:
        raise KdnasError(f"machine {machine} in {table.path} was timed by another timing method "
                         f"({info.get('timing_method')}, this version: {TIMING_METHOD_VERSION})")
    return info


def machine_for(table: LatencyTable, profile: HardwareProfile, machines: Iterable[str]) -> str | None:
    """Which of `machines` (fingerprint ids in `table`) timed `profile`, if any: a fingerprint covers one profile
    definition, so each id names the profile it belongs to."""
    known = table.fingerprints()
    found = [m for m in machines if _machine_info(known, table, m).get("profile_hash") == profile.content_hash()]
    if len(found) > 1:
        raise KdnasError(f"machines {', '.join(found)} both timed profile {profile.name}: give one")
    return found[0] if found else None


class LatencyModel:
    """Latency of any architecture on one profile, from (and filling) a latency table.

    With `measure_missing`, timings the table lacks are measured on this machine and stored;
    without it (a frozen table) a missing timing is an error. `machine` reads the timings another machine
    measured (its fingerprint id in `table`, see `target_machine`): they are never filled from here, since
    this host's timings would say nothing about that machine.
    """

    def __init__(
        self,
        table: LatencyTable,
        profile: HardwareProfile,
        *,
        measure_missing: bool = True,
        measurer: Measurer | None = None,
        machine: str | None = None,
        layer_fit: bool = True,
    ) -> None:
        self.table = table
        self.profile = profile
        self.measurer: Measurer = measurer or OnnxMeasurer()
        here = machine_fingerprint(profile)
        self.elsewhere = machine is not None and machine != fingerprint_id(here)
        self.info = target_machine(table, profile, machine) if self.elsewhere else here
        self.fingerprint = machine if self.elsewhere else fingerprint_id(here)
        self.measure_missing = measure_missing and not table.readonly and not self.elsewhere
        self.batch = profile.shape.batch_size
        self.seq_len = profile.shape.seq_len
        self._calibration: Calibration | None = None
        self.use_layer_fit = layer_fit
        self._layer_fit: LayerFit | None = None
        self._layer_fit_stale = True
        self._fit_box: dict[int, tuple[int, int, int, int]] = {}
        if not self.elsewhere:
            table.register(self.fingerprint, self.info)

    # -- table access ---------------------------------------------------------------------------
    def lookup(self, kind: str, arch: StudentArch) -> Entry | None:
        return self.table.get(self.fingerprint, kind, arch, self.batch, self.seq_len)

    def missing(self, items: Iterable[Item]) -> list[Item]:
        return [item for item in dict.fromkeys(items) if self.lookup(*item) is None]

    # -- measuring ------------------------------------------------------------------------------
    def _check_can_measure(self, kind: str, arch: StudentArch) -> None:
        if self.elsewhere:
            raise KdnasError(f"latency table {self.table.path} has no {kind} timing for {arch} from machine "
                             f"{self.fingerprint}; fill it there with `kdnas-deploy profile`")
        if not self.measure_missing:
            raise KdnasError(f"latency table {self.table.path} has no {kind} timing for {arch} and is frozen")
        self.profile.check_runnable()

    def build(self, item: Item, out_dir: Path) -> BuiltGraph:
        kind, arch = item
        self._check_can_measure(kind, arch)
        return self.measurer.build(arch, self.profile, out_dir, vocab_for(kind))

    def claim(self, item: Item) -> bool:
        """Take `item` for this process (see LatencyTable.claim): False if it is timed or another live run times it."""
        return self.table.claim(self.fingerprint, item[0], item[1], self.batch, self.seq_len)

    def release(self, item: Item) -> None:
        self.table.release(self.fingerprint, item[0], item[1], self.batch, self.seq_len)

    def time_session(self, graph: BuiltGraph, seed: int = 0) -> Timing:
        return self.measurer.time(graph, self.profile, seed)

    def store(self, kind: str, graph: BuiltGraph, timing: Timing) -> Entry:
        arch = graph.arch
        if not graph.fused:
            log.warning("%s timed unfused: %d fused attention nodes for %d layers", arch, graph.fused_attention, arch.layers)
        self.table.put(self.fingerprint, kind, arch, self.batch, self.seq_len, timing, graph.fused_attention, graph.build_s)
        if kind in ("block", "stem"):  # joins the layer fit
            self._layer_fit_stale = True
        if kind != "probe":  # a whole model, or a row every composition reads: calibrate again
            self._calibration = None
        entry = self.lookup(kind, arch)
        assert entry is not None
        return entry

    def measure(self, kind: str, arch: StudentArch) -> Entry:
        """Time `arch` now, sessions back to back, and store it (replacing an older timing)."""
        self._check_can_measure(kind, arch)
        m = measure_now(self.measurer, arch, self.profile, vocab_for(kind))
        return self.store(kind, m.graph, m.timing)

    def ensure(self, kind: str, arch: StudentArch) -> Entry:
        entry = self.lookup(kind, arch)
        return entry if entry is not None else self.measure(kind, arch)

    # -- prediction -----------------------------------------------------------------------------
    def row_layer_ms(self, hidden: int, heads: int, ffn: int) -> float:
        """The layer's cost from its own block and stem rows (timing them where missing)."""
        stem = self.ensure("stem", base_arch(hidden)).timing.median_ms
        block = self.ensure("block", block_arch(hidden, heads, ffn)).timing.median_ms
        return max(block - stem, 0.0) / BLOCK_LAYERS

    def layer_fit(self) -> LayerFit | None:
        """The fit over every block of this machine and profile whose stem is in the table (None: too few, or the
        model composes from rows)."""
        if not self.use_layer_fit:
            return None
        if self._layer_fit_stale:
            shapes, costs = [], []
            box: dict[int, tuple[int, int, int, int]] = {}
            for entry in self.table.entries(self.fingerprint, self.batch, self.seq_len, kind="block"):
                stem = self.lookup("stem", base_arch(entry.arch.hidden))
                if stem is not None:
                    h, a, i = entry.arch.block
                    shapes.append((h, a, i))
                    costs.append(max(entry.timing.median_ms - stem.timing.median_ms, 0.0) / BLOCK_LAYERS)
                    lo_a, hi_a, lo_i, hi_i = box.get(h, (a, a, i, i))
                    box[h] = (min(lo_a, a), max(hi_a, a), min(lo_i, i), max(hi_i, i))
            self._layer_fit, self._layer_fit_stale = fit_layer_cost(shapes, costs), False
            self._fit_box = box
        return self._layer_fit

    def fit_covers(self, hidden: int, heads: int, ffn: int) -> bool:
        """Whether the layer fit answers this shape by interpolation: the table holds block timings of this width
        whose heads and FFN sizes span the shape's (what `profiler.designed_blocks` times)."""
        if self.layer_fit() is None or hidden not in self._fit_box:
            return False
        lo_a, hi_a, lo_i, hi_i = self._fit_box[hidden]
        return lo_a <= heads <= hi_a and lo_i <= ffn <= hi_i

    def layer_ms(self, hidden: int, heads: int, ffn: int) -> float:
        """A layer's cost from the fit over all block timings. A shape the fit covers (`fit_covers`) is predicted
        without timing its own block; any other has its block timed first (where the table may be filled), so the
        fit never extrapolates to a width or FFN size no row has. Without a fit, the shape's own rows answer."""
        if not self.fit_covers(hidden, heads, ffn):
            own = self.row_layer_ms(hidden, heads, ffn)
            fit = self.layer_fit()
            return fit(hidden, heads, ffn) if fit is not None else own
        fit = self.layer_fit()
        assert fit is not None
        return fit(hidden, heads, ffn)

    def composable(self, arch: StudentArch) -> bool:
        """Whether `arch`'s composed latency can be read from the table without timing anything."""
        base, stem, block = items_for(arch)
        if self.lookup(*base) is None or self.lookup(*stem) is None:
            return False
        return self.lookup(*block) is not None or self.fit_covers(*arch.block)

    def composed_ms(self, arch: StudentArch) -> float:
        base = self.ensure("base", base_arch(arch.hidden)).timing.median_ms
        return base + arch.layers * self.layer_ms(*arch.block)

    def calibration(self) -> Calibration:
        if self._calibration is None:
            pairs = []
            for entry in self.table.entries(self.fingerprint, self.batch, self.seq_len, kind="model"):
                if self.composable(entry.arch):
                    pairs.append((self.composed_ms(entry.arch), entry.timing.median_ms))
            self._calibration = fit_calibration([p[0] for p in pairs], [p[1] for p in pairs])
        return self._calibration

    def predict(self, arch: StudentArch, *, use_whole: bool = True) -> Prediction:
        """Predicted latency (ms) of `arch`, measuring missing blocks when allowed."""
        composed = self.composed_ms(arch)
        whole = self.lookup("model", arch) if use_whole else None
        if whole is not None:
            return Prediction(arch, whole.timing.median_ms, composed, "measured")
        cal = self.calibration()
        if cal.points >= MIN_CALIBRATION:
            return Prediction(arch, cal.apply(composed), composed, "calibrated")
        return Prediction(arch, composed, composed, "composed")


def predict_latency(
    arch: StudentArch | str,
    profile: HardwareProfile | str,
    table: LatencyTable | str | Path | None = None,
) -> float:
    """Latency in ms of any valid architecture on a profile, measuring what the table lacks.

    A notebook-friendly entry point: `predict_latency("L4-H312-A12-I1200", "cpu-int8")`.
    """
    from kdnas_deploy.hardware import load_profile
    from kdnas_deploy.latency.table import default_table_path

    arch = StudentArch.parse(arch) if isinstance(arch, str) else arch
    profile = load_profile(profile) if isinstance(profile, str) else profile
    own = not isinstance(table, LatencyTable)
    tbl = LatencyTable(table or default_table_path()) if own else table
    try:
        return LatencyModel(tbl, profile).predict(arch).ms
    finally:
        if own:
            tbl.close()
