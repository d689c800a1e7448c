"""Successive halving: rung sizes, who goes on, journaled results that a resumed run reads instead of re-distilling."""

from __future__ import annotations

import pytest

from kdnas_deploy.search.halving import Rung, gap_standard_error, plan_rungs, rung_rows, successive_halving
from kdnas_deploy.search.journal import Journal
from kdnas_deploy.space import StudentArch

A = StudentArch.parse
ENTRANTS = [A("L3-H384-A12-I1536"), A("L4-H384-A12-I384"), A("L4-H312-A12-I1200"), A("L2-H384-A12-I1536")]


def test_rungs_grow_rows_and_shrink_candidates_within_the_tasks_rows():
    rungs = plan_rungs(1000, 500, 15000, top=4, rungs=2)
    assert rungs == [Rung(1, 2000, 1000, 4), Rung(2, 4000, 2000, 2)]
    assert rung_rows(rungs, budgets=3, top=4) == 3 * (4 * 2000 + 2 * 4000)
    # A small task: the held-out slice is capped at a third of the rows, training gets the rest.
    assert plan_rungs(1000, 500, 3000, rungs=2) == [Rung(1, 2000, 1000, 4), Rung(2, 2000, 1000, 2)]
    # Nothing to decide with one entrant; two entrants need only one rung.
    assert plan_rungs(1000, 500, 15000, top=1) == [] and len(plan_rungs(1000, 500, 15000, top=2, rungs=3)) == 1


class Scores:
    """A rung's evaluator: fixed scores per (rung, arch); counts calls."""

    def __init__(self, table):
        self.table, self.calls = table, []

    def __call__(self, rung):
        def evaluate(arch):
            self.calls.append((rung.index, str(arch)))
            score = self.table[rung.index][str(arch)]
            if score is None:
                raise RuntimeError("out of memory")
            return score, {"accuracy": score, "score": score}
        return evaluate


def test_halving_keeps_the_better_half_and_the_last_rung_decides(tmp_path):
    # The search's order puts L3 first; on 2x the rows L4-H384 and L4-H312 lead, on 4x L4-H312 wins.
    scores = Scores({1: {"L3-H384-A12-I1536": 0.60, "L4-H384-A12-I384": 0.62, "L4-H312-A12-I1200": 0.61,
                         "L2-H384-A12-I1536": None},
                     2: {"L4-H384-A12-I384": 0.615, "L4-H312-A12-I1200": 0.63}})
    rungs = plan_rungs(1000, 500, 15000)
    with Journal(tmp_path / "journal.sqlite") as journal:
        result = successive_halving(ENTRANTS, rungs, scores, journal, "recipe")
    assert result.winner == "L4-H312-A12-I1200"
    first, second = result.rungs
    assert first["kept"] == ["L4-H384-A12-I384", "L4-H312-A12-I1200"] and first["scores"]["L2-H384-A12-I1536"] is None
    assert second["gap_points"] == pytest.approx(1.5) and second["held_out"] == 2000
    assert second["gap_se_points"] == pytest.approx(gap_standard_error(0.63, 0.615, 2000), abs=1e-3)
    assert 1.4 < second["gap_se_points"] < 1.6  # 2,000 rows cannot resolve a 1.5-point gap on their own
    assert len(scores.calls) == 6
    # Resumed: every rung result is read back from the journal, nothing distilled again, the same winner.
    again = Scores(scores.table)
    with Journal(tmp_path / "journal.sqlite") as journal:
        assert successive_halving(ENTRANTS, rungs, again, journal, "recipe").winner == "L4-H312-A12-I1200"
        assert again.calls == []
        # Another recipe (seed, epochs) is another rung: its results are not reused.
        successive_halving(ENTRANTS[:2], rungs, again, journal, "other")
    assert again.calls == [(1, "L3-H384-A12-I1536"), (1, "L4-H384-A12-I384")]


def test_halving_with_every_entrant_failed_has_no_winner(tmp_path):
    scores = Scores({1: {str(a): None for a in ENTRANTS}})
    with Journal(tmp_path / "journal.sqlite") as journal:
        result = successive_halving(ENTRANTS, plan_rungs(100, 100, 1000), scores, journal, "r")
    assert result.winner is None and result.rungs[0]["kept"] == []
