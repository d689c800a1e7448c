"""Latency of any candidate on the search's hardware profiles, from the latency lookup table.

The search asks for the latency of thousands of architectures; each answer is the table's prediction
(measured whole model, else calibrated block composition), memoised, and the table is filled for the
space before the first episode so no candidate waits on a timing. A profile whose latencies come from another
machine (`machines`: fingerprint ids in the table) is read, never filled: the table must already hold what the
search needs from that machine. With a length distribution (`lengths`), each answer is the expected latency of a
padded batch under it (`latency.traffic`), and the table is filled at the lengths that bracket it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kdnas_deploy.util.errors import KdnasError
from kdnas_deploy.hardware import HardwareProfile
from kdnas_deploy.latency.lengths import LengthDistribution
from kdnas_deploy.latency.predictor import LatencyModel, machine_for
from kdnas_deploy.latency.profiler import DEFAULT_CALIBRATION
from kdnas_deploy.latency.table import LatencyTable
from kdnas_deploy.latency.traffic import TrafficLatency
from kdnas_deploy.space import SearchSpace, StudentArch


class LatencyOracle:
    """`oracle(arch) -> {profile name: ms}` over one table and several profiles."""

    def __init__(self, table: LatencyTable, profiles: Sequence[HardwareProfile], machines: Sequence[str] = (),
                 lengths: LengthDistribution | None = None):
        self.lengths = lengths
        self.traffic = {p.name: TrafficLatency(table, p, lengths, machine=machine_for(table, p, machines))
                        for p in profiles} if lengths is not None else {}
        #: Per profile, the model at its own shape (fixed length), or at the longest length the traffic times.
        self.models = {p.name: (self.traffic[p.name].models[max(self.traffic[p.name].nodes)] if self.traffic
                                else LatencyModel(table, p, machine=machine_for(table, p, machines))) for p in profiles}
        unused = set(machines) - {m.fingerprint for m in self.models.values()}
        if unused:
            raise KdnasError(f"machine {', '.join(sorted(unused))} timed none of the profiles "
                             f"{', '.join(self.models)}: pass the --hw it was profiled with")
        self._memo: dict[StudentArch, dict[str, float]] = {}

    def _all_models(self) -> list[tuple[str, LatencyModel]]:
        """Every (profile name, model) whose rows the search reads: one per profile, or one per node length."""
        if not self.traffic:
            return list(self.models.items())
        return [(name, model) for name, t in self.traffic.items() for model in t.by_length()]

    def shape(self, name: str) -> str:
        """The shape a profile's latencies are answered at, in words."""
        if name in self.traffic:
            return self.traffic[name].shape()
        m = self.models[name]
        return f"batch {m.batch}, {m.seq_len} tokens"

    def elsewhere(self) -> dict[str, str]:
        """Profile name -> the other machine whose timings it reads."""
        return {name: m.fingerprint for name, m in self.models.items() if m.elsewhere}

    def fill(self, space: SearchSpace, extra: Sequence[StudentArch] = (), calibration: int = DEFAULT_CALIBRATION,
             seed: int = 0, progress: Callable[[str, object, bool], None] | None = None,
             on_step: Callable[[int, int], None] | None = None) -> None:
        """Times whatever the table lacks for `space` (and `extra` architectures, e.g. the teacher). `progress` as
        each timing is stored; `on_step(done, added)` as `profile_items` calls it, after a first call that adds each
        profile's planned steps."""
        from kdnas_deploy.latency.profiler import profile_items, profile_steps

        items = self._items(space, extra, calibration, seed)
        for name, model in self._all_models():
            if model.elsewhere and (missing := model.missing(items)):
                kind, arch = missing[0]
                at = f" at {model.seq_len} tokens" if self.traffic else ""
                fill = ("`kdnas-deploy profile --lengths FILE` with these request lengths (or search with --lengths "
                        "fixed)" if self.traffic else "`kdnas-deploy profile`")
                raise KdnasError(f"latency table {model.table.path} lacks {len(missing)} of the {len(set(items))} "
                                 f"timings the search needs{at} from machine {model.fingerprint} ({name}), e.g. {kind} "
                                 f"{arch}; fill it on that machine with {fill} for this space")
            tick = (lambda item, cached, n=name: progress(n, item, cached)) if progress else None
            if on_step:
                on_step(0, profile_steps(model, items))
            profile_items(model, items, seed=seed, progress=tick, on_step=on_step)
        self._memo.clear()

    def fill_seconds(self, space: SearchSpace, extra: Sequence[StudentArch] = (), calibration: int = DEFAULT_CALIBRATION,
                     seed: int = 0) -> float:
        """About how long `fill` takes here (`profiler.estimate_seconds` over what each profile lacks)."""
        from kdnas_deploy.latency.profiler import estimate_seconds

        items = self._items(space, extra, calibration, seed)
        return sum(estimate_seconds(m, m.missing(items)) for _, m in self._all_models() if not m.elsewhere)

    def _items(self, space: SearchSpace, extra: Sequence[StudentArch], calibration: int, seed: int) -> list[tuple[str, StudentArch]]:
        from kdnas_deploy.latency.predictor import items_for
        from kdnas_deploy.latency.profiler import plan

        return list(dict.fromkeys(plan(space, calibration, seed) + [it for a in extra for it in items_for(a)]))

    def coverage(self, space: SearchSpace, extra: Sequence[StudentArch] = (), calibration: int = DEFAULT_CALIBRATION,
                 seed: int = 0) -> dict[str, tuple[int, int]]:
        """Per profile, (timings the table already has, timings the search needs), over every length it needs."""
        items = self._items(space, extra, calibration, seed)
        out: dict[str, tuple[int, int]] = {}
        for name, model in self._all_models():
            have, need = out.get(name, (0, 0))
            out[name] = (have + len(items) - len(model.missing(items)), need + len(items))
        return out

    def __call__(self, arch: StudentArch) -> dict[str, float]:
        if arch not in self._memo:
            if self.traffic:
                self._memo[arch] = {name: t.predict(arch).mean_ms for name, t in self.traffic.items()}
            else:
                self._memo[arch] = {name: model.predict(arch).ms for name, model in self.models.items()}
        return self._memo[arch]
