"""The pre-registered benchmark's driver: its plan, the arms and pairs it derives, the score rule, the page."""
from __future__ import annotations

import json

import pytest

from benchmarks.glue import common, finals, report


def test_the_committed_plan_states_every_rule_and_both_tasks():
    plan = common.load_plan()
    assert plan["tasks"]["mnli"]["primary"] and plan["tasks"]["mnli"]["seeds"] == [0, 1, 2, 3, 4]
    assert set(plan["handcrafted"].values()) == {"L3-H384-A12-I1536", "L4-H312-A12-I1200"}
    assert set(plan["handcrafted"].values()) < set(plan["search"]["budgets"])
    rules = plan["rules"]
    assert rules["latency"]["tolerance"] == 1.03 and rules["latency"]["sessions"] >= 6 and rules["latency"]["min_hours"] >= 2
    assert rules["score"]["min_mean_points"] == 1.5 and rules["replay"]["searches"] >= 100
    assert rules["speed"]["target_speedup"] == 2.5 and rules["speed"]["keep"] == 0.97


def _task(tmp_path, kdnas, random):
    plan = common.load_plan()
    task = common.Task("mnli", plan["tasks"]["mnli"], tmp_path)
    task.out.mkdir(parents=True)
    for name, chosen in (("kdnas", kdnas), ("random", random)):
        choices = [{"reference": ref, "divisor": div, "budget_ms": 1.0, "arch": arch} for (ref, div), arch in chosen.items()]
        (task.out / f"search-{name}.json").write_text(json.dumps({"choices": choices}))
    return common.Bench(tmp_path, plan), task


def test_arms_and_latency_pairs_follow_the_picks(tmp_path):
    bench, task = _task(tmp_path, {("L3-H384-A12-I1536", 1.0): "L4-H384-A12-I384", ("L4-H312-A12-I1200", 1.0): "L4-H312-A12-I1200",
                                   ("L6-H384-A12-I1536", 3.0): "L2-H384-A12-I768"},
                        {("L3-H384-A12-I1536", 1.0): "L3-H384-A6-I1152", ("L4-H312-A12-I1200", 1.0): None,
                         ("L6-H384-A12-I1536", 3.0): "L2-H256-A4-I512"})
    arms = {(a.role, a.budget): a for a in finals.arms(bench, task)}
    assert arms[("kdnas", "L3-H384-A12-I1536")].seeds == (0, 1, 2, 3, 4)
    assert arms[("kdnas", "L6-H384-A12-I1536/3")].seeds == (0, 1, 2)  # a third of the teacher: 3 seeds
    assert arms[("random", "L3-H384-A12-I1536")].seeds == (0,) and ("random", "L4-H312-A12-I1200") not in arms
    pairs = finals.latency_pairs(bench, task)
    # A pick that is the hand-crafted student itself is not timed against itself.
    assert pairs["L4-H384-A12-I384__vs__L3-H384-A12-I1536"] == ("L4-H384-A12-I384-s0", "L3-H384-A12-I1536-s0")
    assert not any(k.startswith("L4-H312-A12-I1200__vs__L4") for k in pairs)
    assert {k for k in pairs if k.endswith("__vs__teacher")} == {f"{a}__vs__teacher" for a in
                                                                {a.arch for a in arms.values()}}
    assert not finals.latency_complete(bench, task)


def test_score_rule_pairs_seeds_and_needs_the_latency_verdict(tmp_path):
    bench, task = _task(tmp_path, {("L3-H384-A12-I1536", 1.0): "L4-H384-A12-I384", ("L4-H312-A12-I1200", 1.0): "L4-H312-A12-I1200"}, {})
    results = task.out / "results"
    results.mkdir()
    for s, (kd, hand) in enumerate([(0.62, 0.60), (0.63, 0.61), (0.615, 0.60), (0.625, 0.605), (0.62, 0.60)]):
        (results / f"L4-H384-A12-I384-s{s}.json").write_text(json.dumps({"dev": kd}))
        (results / f"L3-H384-A12-I1536-s{s}.json").write_text(json.dumps({"dev": hand}))
        (results / f"L4-H312-A12-I1200-s{s}.json").write_text(json.dumps({"dev": 0.6}))
    (results / "teacher.json").write_text(json.dumps({"dev": 0.64}))
    res = report.task_results(bench, task)
    half, tiny = res["pairs"]
    assert half["differences"] == pytest.approx([2.0, 2.0, 1.5, 2.0, 2.0])
    assert half["mean"] == pytest.approx(1.9) and half["ci95"][0] > 1.5
    assert half["verdict"] == "pending"  # no latency session yet: no verdict, whatever the score
    assert tiny["kdnas"] == "L4-H312-A12-I1200" and tiny["differences"] == [0.0] * 5
    assert tiny["latency"]["verdict"] == "within" and tiny["verdict"] == "missed"  # the same student: +0
    # With a latency record that passes, the half-depth pair is met (strict reading too).
    from kdnas_deploy.latency.compare import Comparison, Session

    rec = Comparison("a", "b", "cpu-int8", {}, [Session(i * 1800.0, [1.0], [1.0], 0.97 + 0.002 * (i % 2)) for i in range(6)])
    path = finals.compare_record(task, "L4-H384-A12-I384__vs__L3-H384-A12-I1536")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(rec.to_dict()))
    half = report.task_results(bench, task)["pairs"][0]
    assert half["latency"]["verdict"] == "within" and half["verdict"] == "met" and half["strict"]
    board = report.scoreboard(bench, {"mnli": report.task_results(bench, task)})
    assert "+1.90 points" in board and "| met |" in board and "before any result" in board


def test_speed_at_97_waits_for_every_seed_and_the_teachers_sessions(tmp_path):
    from kdnas_deploy.latency.compare import Comparison, Session

    bench, task = _task(tmp_path, {("L3-H384-A12-I1536", 1.0): "L3-H384-A12-I1536", ("L4-H312-A12-I1200", 1.0): "L4-H312-A12-I1200"}, {})
    results = task.out / "results"
    results.mkdir()
    (results / "teacher.json").write_text(json.dumps({"dev": 0.64}))
    for arch in ("L3-H384-A12-I1536", "L4-H312-A12-I1200"):
        (results / f"{arch}-s0.json").write_text(json.dumps({"dev": 0.63}))

    def sessions(n):
        for arch in ("L3-H384-A12-I1536", "L4-H312-A12-I1200"):
            rec = Comparison("a", "b", "cpu-int8", {}, [Session(i * 1800.0, [1.0], [2.0], 0.36 + 0.001 * (i % 2)) for i in range(n)])
            path = finals.compare_record(task, f"{arch}__vs__teacher")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(rec.to_dict()))

    def speed_row():
        """The row's cells up to its verdict (the run column follows)."""
        board = report.scoreboard(bench, {"mnli": report.task_results(bench, task)})
        row = next(line for line in board.splitlines() if line.startswith("|") and "speed-at-97/1" in line)
        return row.rsplit(" | ", 1)[0] + " |"

    sessions(2)  # one seed of five, two sessions: 98% kept at 2.7x so far, no verdict
    assert "so far 2.7" in speed_row() and speed_row().endswith("| pending |")
    for s in range(1, 5):
        for arch in ("L3-H384-A12-I1536", "L4-H312-A12-I1200"):
            (results / f"{arch}-s{s}.json").write_text(json.dumps({"dev": 0.63}))
    assert speed_row().endswith("| pending |")  # every seed, but the teacher pairs lack the rule's sessions
    sessions(6)
    assert "| 2.7" in speed_row() and speed_row().endswith("| met |")


def test_t_interval_and_page_block(tmp_path):
    mean, lo, hi = report.t_interval([2.75, 1.95, 1.15])
    assert mean == pytest.approx(1.95) and lo == pytest.approx(-0.037, abs=0.01) and hi == pytest.approx(3.937, abs=0.01)
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\nintro\n<!-- scoreboard: written by python -m benchmarks.glue -->\nold\n<!-- /scoreboard -->\n## Rules\nkept\n")
    report.write_page(page, "BOARD", "DETAIL")
    text = page.read_text()
    assert "old" not in text and "BOARD" in text and "## Details\n\nDETAIL" in text
    assert text.startswith("# Benchmarks\nintro\n") and text.endswith("## Rules\nkept\n")


def test_a_run_goes_on_only_with_the_profile_definitions_its_searches_timed(tmp_path):
    """A checkout where the plan's profile name means another definition than the one the run's searches timed must
    stop, naming the commit to go on from, rather than mix two graphs in one comparison."""
    from kdnas_deploy.hardware import load_profile

    bench, task = _task(tmp_path, {}, {})
    run = task.out / "search-kdnas"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"profiles": {"cpu-int8": {"content_hash": "0766ad38f7959259"}}}))
    with pytest.raises(SystemExit, match=f"profile cpu-int8 is not the definition.*{common.PINNED_COMMIT}"):
        common.check_profiles(bench, task)
    (run / "run.json").write_text(json.dumps({"profiles": {"cpu-int8": {"content_hash": load_profile("cpu-int8").content_hash()}}}))
    common.check_profiles(bench, task)  # the same definition: goes on


def test_a_task_still_searching_is_on_the_board_as_pending(tmp_path):
    bench, task = _task(tmp_path, {("L3-H384-A12-I1536", 1.0): "L4-H384-A12-I384"}, {})
    (task.out / "search-random.json").unlink()  # KD-NAS has picked, random search has not
    (task.teacher).mkdir()
    (task.teacher / "kdnas.json").write_text("{}")
    res = report.task_results(bench, task)
    assert res["stage"] == "searching" and "arms" not in res
    board = report.scoreboard(bench, {"mnli": res})
    row = next(line for line in board.splitlines() if line.startswith("| MNLI"))
    assert "| searching | pending |" in row and "`benchmarks/glue/record/mnli/`" in row
