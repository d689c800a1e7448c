"""The GLUE benchmark's report helpers: how its commands and wall times are grouped into steps."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
bench = pytest.importorskip("bench_kdnas")


def test_step_groups_put_per_student_commands_under_their_step():
    state = {"wall_s": {"sst2/budgets": 10.0, "sst2/search-kdnas": 20.0, "sst2/distill-L3-H384-A12-I1536-s0": 1.0,
                        "sst2/distill-L2-H256-A4-I1024-s1": 2.0, "sst2/export-teacher-cpu-int8": 3.0,
                        "mnli/teacher": 4.0}}
    groups = bench.step_groups(state)
    assert groups == {("sst2", "budgets"): ["sst2/budgets"], ("sst2", "search-kdnas"): ["sst2/search-kdnas"],
                      ("sst2", "distill"): ["sst2/distill-L3-H384-A12-I1536-s0", "sst2/distill-L2-H256-A4-I1024-s1"],
                      ("sst2", "export"): ["sst2/export-teacher-cpu-int8"], ("mnli", "teacher"): ["mnli/teacher"]}


def test_command_template_names_the_arguments_that_change():
    commands = ["kdnas-deploy distill --arch L3-H384-A12-I1536 --out w/L3-s0 --epochs 1 --seed 0",
                "kdnas-deploy distill --arch L2-H256-A4-I1024 --out w/L2-s1 --epochs 1 --seed 1"]
    assert bench.command_template(commands) == "kdnas-deploy distill --arch <arch> --out <out> --epochs 1 --seed <seed>"
    assert bench.command_template(["kdnas-deploy export a --hw cpu", "kdnas-deploy export b --hw cpu"]) == \
        "kdnas-deploy export <arg> --hw cpu"
    # Commands of different shapes are not merged into a line that would misstate one of them.
    mixed = ["kdnas-deploy search --seed 0", "kdnas-deploy search --seed 0 --resume"]
    assert bench.command_template(mixed) == "\n".join(mixed)


def test_regenerated_page_keeps_the_hand_written_findings():
    results = {"machine": "x86_64, 2 CPUs", "tasks": {}, "versions": {"torch": "2.13.0"}}
    state = {"wall_s": {"sst2/teacher": 3600.0}, "commands": {"sst2/teacher": "kdnas-deploy teacher --seed 0"}}
    empty = bench.markdown(results, state)
    assert bench.kept_findings(empty) == f"{bench.FINDINGS_BEGIN}\n{bench.FINDINGS_END}"
    written = empty.replace(bench.FINDINGS_END, "The proxy cannot rank near-chance students.\n" + bench.FINDINGS_END)
    again = bench.markdown(results, state, bench.kept_findings(written))
    assert "The proxy cannot rank near-chance students." in again
    assert again.count(bench.FINDINGS_BEGIN) == 1
    assert bench.kept_findings("no block here") is None


def test_students_come_from_each_searchs_choices_paired_by_reference(tmp_path: Path):
    """KD-NAS gets a student per budget, paired with the hand-crafted one it was confirmed against; random
    search only the 3x one; a budget with no candidate adds no student."""
    import json

    from kdnas_deploy.model_folder import ModelInfo, write_text_atomic

    (tmp_path / "teacher").mkdir()
    info = ModelInfo(kind="teacher", arch="L6-H384-A12-I1536", task="sst2", max_length=128)
    write_text_atomic(tmp_path / "teacher" / "kdnas.json", info.model_dump_json())
    budgets = {"teacher_ms": 19.5, "predicted_ms": {"L3-H384-A12-I1536": 9.8, "L4-H312-A12-I1200": 7.8,
                                                    "L2-H256-A4-I1024": 2.3, "L6-H384-A12-I1536": 19.5}}
    choices = [{"reference": "L2-H256-A4-I1024", "divisor": 1.0, "arch": None},
               {"reference": "L6-H384-A12-I1536", "divisor": 3.0, "arch": "L2-H384-A2-I1536"},
               {"reference": "L4-H312-A12-I1200", "divisor": 1.0, "arch": "L3-H384-A12-I1152"},
               {"reference": "L3-H384-A12-I1536", "divisor": 1.0, "arch": "L3-H384-A12-I1536"}]
    for strategy, arch in (("kdnas", None), ("random", "L1-H384-A4-I1152")):
        (tmp_path / f"search-{strategy}").mkdir()
        mine = [dict(c, arch=arch or c["arch"]) if c["arch"] else c for c in choices]
        (tmp_path / f"search-{strategy}" / "report.json").write_text(json.dumps({"choices": mine}))
    students = bench.chosen_students(bench.TASKS["sst2"], tmp_path, budgets)
    got = {(s.role, s.label, s.arch, s.budget_ms) for s in students if s.role in ("kdnas", "random")}
    assert got == {("kdnas", "KD-NAS @ teacher / 3", "L2-H384-A2-I1536", 6.5),
                   ("kdnas", "KD-NAS @ 7.80 ms", "L3-H384-A12-I1152", 7.8),
                   ("kdnas", "KD-NAS @ 9.80 ms", "L3-H384-A12-I1536", 9.8),
                   ("random", "random search @ teacher / 3", "L1-H384-A4-I1152", 6.5)}


def test_page_names_the_command_that_regenerates_it(tmp_path: Path):
    assert bench.regenerate_command(Path("bench-out/kdnas"), bench.DEFAULT_TASKS, bench.REPO / "docs") == \
        "python tools/bench_kdnas.py --work bench-out/kdnas --until report"
    rerun = bench.regenerate_command(tmp_path / "w", "sst2", bench.REPO / "docs" / "rerun")
    assert rerun == f"python tools/bench_kdnas.py --work {tmp_path / 'w'} --tasks sst2 --docs docs/rerun --until report"
    results = {"machine": "x86_64, 2 CPUs", "tasks": {}, "versions": {}, "regenerate": rerun}
    assert f"regenerate this page with `{rerun}`" in bench.markdown(results, {"wall_s": {}})
