"""Successive halving of a budget's best candidates: the pick decided on more rows than the search could afford.

The search scores every candidate on a small proxy (1,000 training rows, 500 held out by default). 500 held-out
rows give a standard error of 1.6-2.2 points, while the best candidates of a band differ by 0.2-1.2: the search's
own ranking cannot resolve its top. So the finals confirm each budget's `top` best that fit (latency re-timed),
and this module distils them again on `eta` times the rows, scored on `eta` times the held-out slice, keeps the
best 1/eta, and repeats with `eta` times more again (Jamieson & Talwalkar, 2016; the rungs of Hyperband), until
one is left or the rungs run out. The winner is the best score of the last rung, and the report states the gap it
decided and that gap's standard error.

Each rung is journaled per architecture the moment it finishes (`Journal.record_rung`), keyed by its rows and
recipe, so a resumed run re-distils nothing, and an architecture that leads two budgets is distilled once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kdnas_deploy.search.executors import Evaluate, Executor, LocalExecutor
from kdnas_deploy.search.journal import Journal
from kdnas_deploy.space import StudentArch

#: Candidates per budget entering the first rung, and rungs after the search's own proxy.
HALVING_TOP = 4
HALVING_RUNGS = 2
#: Growth of rows per rung and the fraction kept: 4 candidates at 2x rows, then the best 2 at 4x.
ETA = 2
#: The held-out slice may take at most this share of the training rows; the rung trains on the rest.
MAX_HELD_OUT_SHARE = 1 / 3


@dataclass(frozen=True)
class Rung:
    index: int  # 1 for the first rung after the search
    proxy: int  # training rows
    held_out: int  # rows scored
    entering: int  # candidates at most

    def key(self, recipe: str) -> str:
        return f"{recipe}/rung{self.index}/proxy{self.proxy}/held{self.held_out}"


def plan_rungs(proxy: int, held_out: int, total_rows: int, top: int = HALVING_TOP, rungs: int = HALVING_RUNGS,
               eta: int = ETA) -> list[Rung]:
    """The rungs for a search's proxy of `proxy` training and `held_out` scored rows, out of `total_rows`: rows grow
    `eta` times per rung (within the task's rows), candidates shrink `eta` times. None when fewer than two would
    enter: there is nothing to decide."""
    out: list[Rung] = []
    entering = top
    for index in range(1, rungs + 1):
        if entering < 2:
            break
        held = min(held_out * eta ** index, int(total_rows * MAX_HELD_OUT_SHARE))
        train = min(proxy * eta ** index, total_rows - held)
        out.append(Rung(index, train, held, entering))
        entering = math.ceil(entering / eta)
    return out


def rung_rows(rungs: Sequence[Rung], budgets: int, top: int = HALVING_TOP) -> int:
    """Training rows distilled over all rungs for `budgets` budgets with `top` entrants each (at most: budgets may
    share entrants, and a band with fewer fits runs fewer): what `--dry-run` prices."""
    return budgets * sum(min(r.entering, top) * r.proxy for r in rungs)


@dataclass
class HalvingResult:
    #: Per rung: its rows, every entrant's score (None: failed) and who went on.
    rungs: list[dict[str, Any]]
    winner: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"rungs": self.rungs, "winner": self.winner}


def gap_standard_error(score_a: float, score_b: float, n: int) -> float:
    """Standard error of the difference of two accuracies on the same `n` rows, in points, as if their errors were
    independent: an upper bound, since two students of one teacher err on many of the same rows."""
    p = (score_a + score_b) / 2
    return 100 * math.sqrt(2 * max(p * (1 - p), 0.0) / n)


def successive_halving(entrants: Sequence[StudentArch], rungs: Sequence[Rung], evaluate_for: Callable[[Rung], Evaluate],
                       journal: Journal, recipe: str, executor: Executor | None = None, eta: int = ETA,
                       status: Callable[[str], None] | None = None) -> HalvingResult:
    """Runs the rungs over `entrants` (best proxy score first; ties keep that order) and returns who won.
    `evaluate_for(rung)` makes the rung's evaluator, only when the rung has something left to distil."""
    executor = executor or LocalExecutor()
    alive = list(dict.fromkeys(entrants))
    record: list[dict[str, Any]] = []
    for i, rung in enumerate(rungs):
        if len(alive) < 2:
            break
        alive = alive[:rung.entering]
        key = rung.key(recipe)
        have = journal.rung_results(key)
        todo = [a for a in alive if a not in have]
        if todo:
            evaluate = evaluate_for(rung)
            for n, outcome in enumerate(executor.run(evaluate, todo), 1):
                journal.record_rung(outcome.arch, key, outcome.score, outcome.metrics, outcome.seconds, outcome.error)
                if status:
                    got = f"{outcome.score:.4f}" if outcome.score is not None else f"failed ({outcome.error})"
                    status(f"halving rung {rung.index}: {outcome.arch} {got} ({n}/{len(todo)}, {rung.proxy} rows, "
                           f"{rung.held_out} held out)")
            have = journal.rung_results(key)
        scores: Mapping[StudentArch, float | None] = {a: have[a][0] for a in alive}
        ranked = sorted((a for a in alive if scores[a] is not None), key=lambda a: -scores[a])  # type: ignore[operator]
        last = i == len(rungs) - 1
        kept = ranked[:1] if last else ranked[:max(1, math.ceil(len(alive) / eta))]
        entry: dict[str, Any] = {"rung": rung.index, "proxy": rung.proxy, "held_out": rung.held_out,
                                 "scores": {str(a): scores[a] for a in alive}, "kept": [str(a) for a in kept]}
        if len(ranked) >= 2:
            best, second = scores[ranked[0]], scores[ranked[1]]
            entry["gap_points"] = round(100 * (best - second), 3)  # type: ignore[operator]
            # A binomial error needs the score to be an accuracy (SST-2, MNLI); F1 or correlations have none here.
            if all(have[a][1].get("accuracy") == scores[a] for a in ranked[:2]):
                entry["gap_se_points"] = round(gap_standard_error(best, second, rung.held_out), 3)  # type: ignore[arg-type]
        record.append(entry)
        alive = kept
    return HalvingResult(record, str(alive[0]) if alive else None)
