"""Choosing the final student per latency budget, with the finalists' latencies confirmed side by side.

A budget is milliseconds on the search's first profile, or an architecture ("as fast as L3-H384-A12-I1536"),
whose table latency bounds the search and whose measured latency the finalists must match. The search itself
goes by the latency table: one timing per architecture, taken at some other time, which on a shared CPU is off
by 10-25% either way. That cannot carry a decision at a few percent, so before the pick the best few candidates
per budget by proxy score (up to CONFIRM_SLACK over the budget by the table) are timed again, whole, in
interleaved rounds in one session together with the reference architectures: a slow spell of the machine then
hits all of them alike. The final student is the best proxy score whose measured median is within the budget
(the reference's measured median, or the milliseconds given).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdnas_deploy.errors import KdnasError
from kdnas_deploy.search.episodes import best_candidate
from kdnas_deploy.search.journal import Candidate
from kdnas_deploy.space import StudentArch

#: How far over a budget (by the table) a candidate may be and still be re-timed: the table's error on this
#: class of machine is 10-25%, so a candidate 10% over by the table is often within it when timed beside the rest.
CONFIRM_SLACK = 0.15
#: Finalists re-timed per budget.
CONFIRM_TOP = 3
#: Interleaved timing rounds (one fresh session per architecture per round); the median over rounds decides.
CONFIRM_ROUNDS = 5

#: Times architectures side by side: {arch: median ms}.
Timer = Callable[[Sequence[StudentArch]], Mapping[StudentArch, float]]


def parse_budget(item: float | int | str) -> float | str:
    """A budget as given: positive milliseconds, or a valid architecture string (kept as text for run.json)."""
    if isinstance(item, (int, float)):
        if not item > 0:
            raise KdnasError(f"--budgets must be positive milliseconds or architectures, got {item}")
        return float(item)
    text = str(item).strip()
    try:
        return parse_budget(float(text))
    except ValueError:
        pass
    try:
        return str(StudentArch.parse(text))
    except (KdnasError, ValueError):
        raise KdnasError(f"--budgets item {text!r}: expected milliseconds (5.5) or an architecture (L3-H384-A12-I1536)") from None


@dataclass(frozen=True)
class Budget:
    #: The table latency (ms) that bounds the search's band for this budget.
    ms: float
    #: The architecture whose latency this budget is, if it was given as one.
    reference: str | None = None

    @property
    def label(self) -> str:
        return f"{self.ms:.2f} ms" + (f" (as fast as {self.reference})" if self.reference else "")


def resolve_budgets(items: Sequence[float | str], latency_ms: Callable[[StudentArch], float]) -> list[Budget]:
    """Budgets sorted by their milliseconds; an architecture's from the latency table."""
    out = []
    for item in items:
        value = parse_budget(item)
        out.append(Budget(value) if isinstance(value, float) else Budget(latency_ms(StudentArch.parse(value)), value))
    return sorted(out, key=lambda b: b.ms)


@dataclass
class Choice:
    budget: Budget
    candidate: Candidate | None
    #: Re-timed medians (ms) of the finalists and the reference, by architecture string; empty without a timer.
    measured_ms: dict[str, float] = field(default_factory=dict)
    #: What the choice had to be within when measured: the reference's median or the budget's milliseconds.
    limit_ms: float | None = None
    #: The choice's measured median is within the limit (False: nothing re-timed fits, the table's pick is kept).
    confirmed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"budget_ms": self.budget.ms, "reference": self.budget.reference,
                "arch": str(self.candidate.arch) if self.candidate else None, "measured_ms": self.measured_ms,
                "limit_ms": self.limit_ms, "confirmed": self.confirmed}


def _done(candidates: Sequence[Candidate]) -> list[Candidate]:
    return [c for c in candidates if c.status == "done" and c.score is not None]


def finalists(candidates: Sequence[Candidate], budget: Budget, profile: str, top: int = CONFIRM_TOP,
              slack: float = CONFIRM_SLACK) -> list[Candidate]:
    """The best `top` proxy scores up to `slack` over the budget by the table, and the best one within it."""
    ranked = sorted(_done(candidates), key=lambda c: -c.score)  # type: ignore[operator]
    near = [c for c in ranked if c.latency[profile] <= budget.ms * (1 + slack)][:top]
    within = next((c for c in ranked if c.latency[profile] <= budget.ms), None)
    return near + [within] if within is not None and within not in near else near


def choose_finals(candidates: Sequence[Candidate], budgets: Sequence[Budget] | None, profile: str,
                  timer: Timer | None = None) -> list[Choice]:
    """Without budgets: the best reward. With budgets: per budget, the best proxy score within it, by re-timed
    latency when there is a `timer`, else by the table."""
    if not budgets:
        best = best_candidate(list(candidates))
        return [Choice(Budget(0.0), best)] if best is not None else []
    if timer is None:
        return [Choice(b, max((c for c in _done(candidates) if c.latency[profile] <= b.ms),
                              key=lambda c: c.score, default=None))  # type: ignore[arg-type, return-value]
                for b in budgets]
    shortlist = {b: finalists(candidates, b, profile) for b in budgets}
    archs = list(dict.fromkeys([c.arch for cs in shortlist.values() for c in cs]
                               + [StudentArch.parse(b.reference) for b in budgets if b.reference]))
    measured = {str(a): ms for a, ms in timer(archs).items()} if archs else {}
    out = []
    for b in budgets:
        limit = measured[b.reference] if b.reference else b.ms
        mine = {str(c.arch): measured[str(c.arch)] for c in shortlist[b]}
        if b.reference:
            mine[b.reference] = limit
        fits = [c for c in shortlist[b] if measured[str(c.arch)] <= limit]
        if fits:
            out.append(Choice(b, max(fits, key=lambda c: c.score), mine, limit, True))  # type: ignore[arg-type, return-value]
        else:  # nothing re-timed fits: keep the table's pick, marked unconfirmed, rather than no student
            table_pick = next((c for c in sorted(_done(candidates), key=lambda c: -c.score)  # type: ignore[operator]
                               if c.latency[profile] <= b.ms), None)
            out.append(Choice(b, table_pick, mine, limit, False))
    return out


class InterleavedTimer:
    """Whole-model latency of several architectures on one profile, timed in interleaved rounds: each round
    times every architecture once in a fresh session, in an order rotated per round; the median over rounds."""

    def __init__(self, profile: Any, rounds: int = CONFIRM_ROUNDS, progress: Callable[[str], None] | None = None,
                 measurer: Any = None) -> None:
        from kdnas_deploy.latency.measure import OnnxMeasurer

        if rounds < 1:
            raise KdnasError(f"confirmation needs at least one timing round, got {rounds}")
        self.profile, self.rounds, self.progress = profile, rounds, progress
        self.measurer = measurer or OnnxMeasurer()

    def __call__(self, archs: Sequence[StudentArch]) -> dict[StudentArch, float]:
        self.profile.check_runnable()
        tmp = Path(tempfile.mkdtemp(prefix="kdnas-confirm-"))
        try:
            graphs = []
            for i, arch in enumerate(archs):
                if self.progress:
                    self.progress(f"building {arch} ({i + 1}/{len(archs)}) for side-by-side timing")
                graphs.append(self.measurer.build(arch, self.profile, tmp / str(arch)))
            samples: dict[StudentArch, list[float]] = {a: [] for a in archs}
            for r in range(self.rounds):
                order = graphs[r % len(graphs):] + graphs[:r % len(graphs)]
                for graph in order:
                    samples[graph.arch].append(self.measurer.time(graph, self.profile, r).median_ms)
                if self.progress:
                    self.progress(f"timing round {r + 1}/{self.rounds} of {len(archs)} finalists")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return {a: float(np.median(v)) for a, v in samples.items()}
