"""Choosing the final student per latency budget, with the finalists' latencies confirmed side by side.

A budget is milliseconds on the search's first profile, or an architecture ("as fast as L3-H384-A12-I1536"), or
a fraction of one ("L6-H384-A12-I1536/3": three times faster than the teacher), whose table latency bounds the
search and whose measured latency the finalists must match. The search itself goes by the latency table: one
timing per architecture, taken at some other time, which on a shared CPU is off by 10-25% either way. That cannot
carry a decision at a few percent, so before the pick each budget's candidates (up to CONFIRM_SLACK over it by
the table) are timed again, whole, best proxy score first, CONFIRM_TOP at a time, in interleaved rounds in one
session with the reference architectures: a slow spell of the machine then hits all of them alike. A finalist's
ratio to its limit is the median over the session's rounds of its time over the reference's in the same round
(over the divisor), so a spell that slows one round cancels out; against milliseconds given as the budget it is
its fastest round over them.

A budget is a promise to the user, so a finalist is accepted only with a margin: its ratio must be at most
`1 - margin` in each of `CONFIRM_SESSIONS` sessions (the reference re-timed in every one). One session's ratio
re-tests within about 3% on the 2-vCPU hosts (tools/bench_finals_margin.py), and a pair that read 0.994 of its
limit in the search's finals read 1.049 when the benchmark timed it the next day: a pick at the limit is a coin
toss later. The final student is the best proxy score that passes; a finalist over `1 - margin` in any session is
out; one that passed its first session is timed again beside the next batch (one more session after the last batch
times those alone). A batch where none passes sends the next CONFIRM_TOP to be timed.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdnas_deploy.util.errors import KdnasError
from kdnas_deploy.latency.timing import fastest, interleaved_rounds, paired_ratio
from kdnas_deploy.search.episodes import best_candidate
from kdnas_deploy.search.journal import Candidate
from kdnas_deploy.space import StudentArch

#: How far over a budget (by the table) a candidate may be and still be re-timed: the table's error on this
#: class of machine is 10-25%, so a candidate 10% over by the table is often within it when timed beside the rest.
CONFIRM_SLACK = 0.15
#: Finalists re-timed per budget and batch.
CONFIRM_TOP = 3
#: Batches per budget at most: how far down the ranking a budget looks for a candidate that really fits.
CONFIRM_BATCHES = 4
#: How far under its limit a finalist must stay in every session it is timed in (`--latency-margin`): this
#: host's session-to-session spread of one paired ratio, 2-4% (tools/bench_finals_margin.py; README, "Which ratio
#: decides"). With no margin a finalist 2% under in the search's session is over in the next as often as not.
LATENCY_MARGIN = 0.03
#: Sessions a finalist must pass before it is chosen: one session is one draw of the machine's mood.
CONFIRM_SESSIONS = 2
#: Interleaved timing rounds (one fresh session per architecture per round).
CONFIRM_ROUNDS = 6

#: Times architectures side by side: {arch: each round's median ms}, the same number of rounds for every one, round
#: i of each timed in the same interleaved round.
Timer = Callable[[Sequence[StudentArch]], Mapping[StudentArch, Sequence[float]]]


def parse_budget(item: float | int | str) -> float | str:
    """A budget as given: positive milliseconds, or an architecture string with an optional `/divisor` (kept as
    text for run.json)."""
    if isinstance(item, (int, float)):
        if not item > 0:
            raise KdnasError(f"--budgets must be positive milliseconds or architectures, got {item}")
        return float(item)
    text = str(item).strip()
    try:
        return parse_budget(float(text))
    except ValueError:
        pass
    arch, _, divisor = text.partition("/")
    try:
        value = str(StudentArch.parse(arch))
        if divisor:
            if not float(divisor) > 0:
                raise ValueError(divisor)
            value += f"/{float(divisor):g}"
        return value
    except (KdnasError, ValueError):
        raise KdnasError(f"--budgets item {text!r}: expected milliseconds (5.5), an architecture (L3-H384-A12-I1536) "
                         "or a fraction of one (L6-H384-A12-I1536/3)") from None


@dataclass(frozen=True)
class Budget:
    #: The table latency (ms) that bounds the search's band for this budget.
    ms: float
    #: The architecture whose latency (over `divisor`) this budget is, if it was given as one.
    reference: str | None = None
    divisor: float = 1.0


def reference_text(entry: Mapping[str, Any], quote: str = "") -> str:
    """"as fast as L6-H384-A12-I1536 / 3" for a budget (a Choice's dict) given as an architecture, else ""."""
    if not entry.get("reference"):
        return ""
    divisor = entry.get("divisor", 1.0)
    return f"as fast as {quote}{entry['reference']}{quote}" + (f" / {divisor:g}" if divisor != 1 else "")


def _split(value: str) -> tuple[StudentArch, float]:
    """A parsed architecture budget's architecture and divisor."""
    arch, _, divisor = value.partition("/")
    return StudentArch.parse(arch), float(divisor) if divisor else 1.0


def budget_references(items: Sequence[float | str]) -> list[StudentArch]:
    """The architectures among parsed budgets: the latency table must hold them before the budgets resolve."""
    return [_split(v)[0] for v in items if isinstance(v, str)]


def resolve_budgets(items: Sequence[float | str], latency_ms: Callable[[StudentArch], float]) -> list[Budget]:
    """Budgets sorted by their milliseconds; an architecture's from the latency table."""
    out = []
    for item in items:
        value = parse_budget(item)
        if isinstance(value, float):
            out.append(Budget(value))
        else:
            arch, divisor = _split(value)
            out.append(Budget(latency_ms(arch) / divisor, str(arch), divisor))
    return sorted(out, key=lambda b: b.ms)


@dataclass
class Choice:
    budget: Budget
    candidate: Candidate | None
    #: Re-timed medians (ms) of the finalists and the reference, by architecture string; empty without a timer.
    measured_ms: dict[str, float] = field(default_factory=dict)
    #: What the choice had to be within when measured: the reference's median or the budget's milliseconds.
    limit_ms: float | None = None
    #: The choice's ratio to its limit is at most 1 (False: nothing re-timed fits, the table's pick is kept).
    confirmed: bool = False
    #: Each interleaved session in order, `{"limit_ms", "measured_ms", "ratios"}` (fastest rounds, and each
    #: finalist's ratio to the limit: paired by round against a reference): the reference is re-timed in every one,
    #: so a finalist is judged against the limit of its own session, which `limit_ms` (the last) may not be.
    sessions: list[dict[str, Any]] = field(default_factory=list)
    #: The margin under its limit the choice was held to in every session.
    margin: float | None = None
    #: The confirmed fits successive halving decided between, best proxy score first (the choice alone without it).
    fits: list[str] = field(default_factory=list)
    #: Successive halving's rungs and winner (`search.halving.HalvingResult.to_dict`), None where it did not run.
    halving: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"budget_ms": self.budget.ms, "reference": self.budget.reference, "divisor": self.budget.divisor,
                "arch": str(self.candidate.arch) if self.candidate else None, "measured_ms": self.measured_ms,
                "limit_ms": self.limit_ms, "confirmed": self.confirmed, "sessions": self.sessions, "margin": self.margin,
                "fits": self.fits, "halving": self.halving}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], candidates: Sequence[Candidate]) -> Choice:
        """A saved choice, its architecture looked up among `candidates`."""
        by_arch = {str(c.arch): c for c in candidates}
        return cls(Budget(d["budget_ms"], d["reference"], d["divisor"]), by_arch.get(d["arch"]) if d["arch"] else None,
                   dict(d["measured_ms"]), d["limit_ms"], d["confirmed"], list(d.get("sessions", [])), d.get("margin"),
                   list(d.get("fits", [])), d.get("halving"))


def _done(candidates: Sequence[Candidate]) -> list[Candidate]:
    return [c for c in candidates if c.status == "done" and c.score is not None]


def ranked_within(candidates: Sequence[Candidate], budget: Budget, profile: str,
                  slack: float = CONFIRM_SLACK) -> list[Candidate]:
    """Candidates up to `slack` over the budget by the table, best proxy score first: the order they are re-timed."""
    return sorted((c for c in _done(candidates) if c.latency[profile] <= budget.ms * (1 + slack)),
                  key=lambda c: -c.score)  # type: ignore[operator]


def session_ratios(sessions: Sequence[Mapping[str, Any]], arch: str) -> list[float]:
    """`arch`'s ratio to its session's limit, for every session that timed it as a candidate, in order (a budget's
    reference is timed in every session, but is a candidate only where the search proposed that very shape).
    Reports written before sessions kept their ratios have only the fastest rounds: their ratio is the fastest
    over the limit."""
    return [s["ratios"][arch] if "ratios" in s else s["measured_ms"][arch] / s["limit_ms"]
            for s in sessions if arch in s.get("ratios", s["measured_ms"])]


def limit_ratio(budget: Budget, rounds: Mapping[str, Sequence[float]], arch: str) -> float:
    """`arch`'s ratio to the budget's limit in one session of interleaved `rounds` ({arch: ms per round}): paired
    by round with the reference (`paired_ratio`), or its fastest round over the milliseconds given."""
    if budget.reference:
        return paired_ratio(rounds[arch], rounds[budget.reference], budget.divisor)
    return fastest(rounds[arch]) / budget.ms


def _verdict(ratios: Sequence[float], margin: float, final: bool, sessions: int = CONFIRM_SESSIONS) -> str | None:
    """"fit" once a finalist is at most `1 - margin` of its limit in `sessions` sessions, "miss" as soon as one
    session puts it over (or, after the last session, it has too few), None while it passes but needs more."""
    if any(r > 1 - margin for r in ratios):
        return "miss"
    if len(ratios) >= sessions:
        return "fit"
    return "miss" if final else None


def assurance(choice: Mapping[str, Any]) -> dict[str, Any] | None:
    """How sure a confirmed choice is (a Choice's dict): its ratio to the limit in every session, the worst, the
    margin it was held to, and the sessions' geometric mean with its one-sided 95% upper bound."""
    from kdnas_deploy.latency.compare import ratio_bounds

    arch = choice.get("arch")
    ratios = session_ratios(choice.get("sessions") or [], arch) if arch else []
    if not ratios:
        return None
    mean, _, upper = ratio_bounds(ratios)
    return {"ratios": [round(r, 4) for r in ratios], "worst": round(max(ratios), 4), "margin": choice.get("margin"),
            "geomean": round(mean, 4), "upper_95": None if upper is None else round(upper, 4)}


def choose_finals(candidates: Sequence[Candidate], budgets: Sequence[Budget] | None, profile: str,
                  timer: Timer | None = None, top: int = CONFIRM_TOP, batches: int = CONFIRM_BATCHES,
                  margin: float = LATENCY_MARGIN, keep: int = 1) -> list[Choice]:
    """Without budgets: the best reward. With budgets: per budget, the best proxy score within it, by re-timed
    latency when there is a `timer`, else by the table. With `keep` > 1 each budget's `keep` best that fit are
    confirmed (`Choice.fits`, best proxy score first), for successive halving to decide between."""
    if not budgets:
        best = best_candidate(list(candidates))
        return [Choice(Budget(0.0), best)] if best is not None else []
    ranked = {b: ranked_within(candidates, b, profile) for b in budgets}
    by_table = {b: next((c for c in ranked[b] if c.latency[profile] <= b.ms), None) for b in budgets}
    if timer is None:
        return [Choice(b, by_table[b], fits=[str(c.arch) for c in ranked[b] if c.latency[profile] <= b.ms][:keep])
                for b in budgets]
    sessions: dict[Budget, list[dict[str, Any]]] = {b: [] for b in budgets}
    timed: dict[Budget, list[Candidate]] = {b: [] for b in budgets}  # a prefix of the ranking
    limits: dict[Budget, float] = {}
    chosen: dict[Budget, list[Candidate]] = {b: [] for b in budgets}

    def verdicts(b: Budget, final: bool) -> list[str | None]:
        return [_verdict(session_ratios(sessions[b], str(c.arch)), margin, final) for c in timed[b]]

    # One more session after the last batch, for finalists that passed one session and need another (in a replay
    # of the MNLI finals the last batch's best read 0.986 in one run and 1.025 in the next).
    for batch in range(batches + 1):
        final = batch == batches
        todo: dict[Budget, list[Candidate]] = {}
        for b in budgets:
            if len(chosen[b]) >= keep:
                continue
            # Finalists that passed so far are timed once more, beside the next batch.
            pending = [c for c, v in zip(timed[b], verdicts(b, False)) if v is None]
            fresh = [] if final else ranked[b][len(timed[b]):len(timed[b]) + top]
            timed[b] += fresh
            if pending or fresh:
                todo[b] = pending + fresh
        if not todo:
            break
        # One interleaved session per batch, the references timed again in it: a candidate is only ever compared
        # with a reference measured beside it.
        archs = list(dict.fromkeys([c.arch for cs in todo.values() for c in cs]
                                   + [StudentArch.parse(b.reference) for b in todo if b.reference]))
        rounds = {str(a): list(v) for a, v in timer(archs).items()}
        ms = {a: fastest(v) for a, v in rounds.items()}
        for b, cs in todo.items():
            limits[b] = ms[b.reference] / b.divisor if b.reference else b.ms
            sessions[b].append({"limit_ms": limits[b], "measured_ms": {
                **({b.reference: ms[b.reference]} if b.reference else {}), **{str(c.arch): ms[str(c.arch)] for c in cs}},
                "ratios": {str(c.arch): limit_ratio(b, rounds, str(c.arch)) for c in cs}})
            # Fits are taken in ranking order up to the first undecided finalist, which waits for the next session:
            # a finalist ranked below it must not win by being timed later.
            fits = []
            for c, v in zip(timed[b], verdicts(b, final)):
                if v is None:
                    break
                if v == "fit":
                    fits.append(c)
            chosen[b] = fits[:keep]
    # Every finalist's median, the reference's from the last session (whose limit `limit_ms` is).
    measured = {b: {a: v for sess in sessions[b] for a, v in sess["measured_ms"].items()} for b in budgets}
    # Nothing re-timed fits: keep the table's pick, marked unconfirmed, rather than no student.
    return [Choice(b, chosen[b][0] if chosen[b] else by_table[b], measured[b], limits.get(b), bool(chosen[b]),
                   sessions[b], margin, [str(c.arch) for c in chosen[b]]) for b in budgets]


class InterleavedTimer:
    """Whole-model latency of several architectures on one profile, timed in interleaved rounds: each round
    times every architecture once in a fresh session, in an order rotated per round (a `Timer`: every round's
    median ms, which `choose_finals` pairs round by round).
    Graphs are built once per architecture and kept until `close()`, so a later batch re-times without rebuilding."""

    def __init__(self, profile: Any, rounds: int = CONFIRM_ROUNDS, progress: Callable[[str], None] | None = None,
                 measurer: Any = None, weights: Mapping[int, float] | None = None) -> None:
        from kdnas_deploy.latency.measure import OnnxMeasurer

        if rounds < 1:
            raise KdnasError(f"confirmation needs at least one timing round, got {rounds}")
        self.profile, self.rounds, self.progress = profile, rounds, progress
        #: Under traffic (`TrafficLatency.weights`): each round's value is the expected latency over the node
        #: lengths, each timed in the round's one session, as the table's expected latency is composed.
        self.weights = dict(weights) if weights else None
        self.measurer = measurer or OnnxMeasurer()
        self._tmp: Path | None = None
        self._graphs: dict[StudentArch, Any] = {}

    def _say(self, message: str) -> None:
        if self.progress:
            self.progress(message)

    def __call__(self, archs: Sequence[StudentArch]) -> dict[StudentArch, list[float]]:
        """Every round's median ms per architecture, in round order."""
        self.profile.check_runnable()
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="kdnas-confirm-"))
        new = [a for a in archs if a not in self._graphs]
        for i, arch in enumerate(new):
            self._say(f"building {arch} ({i + 1}/{len(new)}) for side-by-side timing")
            self._graphs[arch] = self.measurer.build(arch, self.profile, self._tmp / str(arch))
        return interleaved_rounds(
            list(archs), self._time_one, self.rounds,
            lambda r: self._say(f"timing round {r + 1}/{self.rounds} of {len(archs)} architectures"))

    def _time_one(self, arch: StudentArch, rnd: int) -> float:
        if self.weights is None:
            return self.measurer.time(self._graphs[arch], self.profile, rnd).median_ms
        from kdnas_deploy.latency.measure import time_at_lengths
        from kdnas_deploy.latency.timing import weighted_ms

        return weighted_ms(time_at_lengths(self.measurer, self._graphs[arch], self.profile, tuple(self.weights), rnd),
                           self.weights)

    def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp, self._graphs = None, {}

    def __enter__(self) -> InterleavedTimer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
