"""The GLUE benchmark's report helpers: how its commands and wall times are grouped into steps."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
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


def _fake_searched_task(out: Path) -> dict:
    """A task folder after its searches: the teacher's info and each strategy's report; returns the budgets."""
    import json

    from kdnas_deploy.model_folder import ModelInfo, write_text_atomic

    (out / "teacher").mkdir(parents=True)
    info = ModelInfo(kind="teacher", arch="L6-H384-A12-I1536", task="sst2", max_length=128)
    write_text_atomic(out / "teacher" / "kdnas.json", info.model_dump_json())
    budgets = {"teacher_ms": 19.5, "predicted_ms": {"L3-H384-A12-I1536": 9.8, "L4-H312-A12-I1200": 7.8,
                                                    "L2-H256-A4-I1024": 2.3, "L6-H384-A12-I1536": 19.5}}
    choices = [{"reference": "L2-H256-A4-I1024", "divisor": 1.0, "arch": None},
               {"reference": "L6-H384-A12-I1536", "divisor": 3.0, "arch": "L2-H384-A2-I1536"},
               {"reference": "L4-H312-A12-I1200", "divisor": 1.0, "arch": "L3-H384-A12-I1152"},
               {"reference": "L3-H384-A12-I1536", "divisor": 1.0, "arch": "L3-H384-A12-I1536"}]
    for strategy, arch in (("kdnas", None), ("random", "L1-H384-A4-I1152")):
        (out / f"search-{strategy}").mkdir()
        mine = [dict(c, arch=arch or c["arch"]) if c["arch"] else c for c in choices]
        (out / f"search-{strategy}" / "report.json").write_text(json.dumps({"choices": mine}))
    return budgets


def test_students_come_from_each_searchs_choices_paired_by_reference(tmp_path: Path):
    """KD-NAS gets a student per budget, paired with the hand-crafted one it was confirmed against; random
    search only the 3x one; a budget with no candidate adds no student."""
    budgets = _fake_searched_task(tmp_path)
    students = bench.chosen_students(bench.TASKS["sst2"], tmp_path, budgets)
    got = {(s.role, s.label, s.arch, s.budget_ms) for s in students if s.role in ("kdnas", "random")}
    assert got == {("kdnas", "KD-NAS @ teacher / 3", "L2-H384-A2-I1536", 6.5),
                   ("kdnas", "KD-NAS @ 7.80 ms", "L3-H384-A12-I1152", 7.8),
                   ("kdnas", "KD-NAS @ 9.80 ms", "L3-H384-A12-I1536", 9.8),
                   ("random", "random search @ teacher / 3", "L1-H384-A4-I1152", 6.5)}


def test_one_strategy_reads_only_its_own_report(tmp_path: Path):
    """`--strategies kdnas` runs before random search has a report: its students must not need one."""
    budgets = _fake_searched_task(tmp_path)
    (tmp_path / "search-random" / "report.json").unlink()
    students = bench.chosen_students(bench.TASKS["sst2"], tmp_path, budgets, ("kdnas",))
    assert {s.role for s in students} == {"teacher", "handcrafted", "kdnas"} and len(students) == 7
    with pytest.raises(FileNotFoundError):
        bench.chosen_students(bench.TASKS["sst2"], tmp_path, budgets)


def test_page_names_the_command_that_regenerates_it(tmp_path: Path):
    assert bench.regenerate_command(Path("bench-out/kdnas"), bench.DEFAULT_TASKS, bench.REPO / "docs") == \
        "python tools/bench_kdnas.py --work bench-out/kdnas --until report"
    rerun = bench.regenerate_command(tmp_path / "w", "sst2", bench.REPO / "docs" / "rerun")
    assert rerun == f"python tools/bench_kdnas.py --work {tmp_path / 'w'} --tasks sst2 --docs docs/rerun --until report"
    results = {"machine": "x86_64, 2 CPUs", "tasks": {}, "versions": {}, "regenerate": rerun}
    assert f"regenerate this page with `{rerun}`" in bench.markdown(results, {"wall_s": {}})


def test_state_from_the_record_is_merged_under_this_sessions():
    recorded = {"sst2/budgets": {"teacher_ms": 4.5}, "commands": {"sst2/teacher": "a"}, "wall_s": {"sst2/teacher": 900.0}}
    local = {"sst2/timing": {}, "commands": {"sst2/distill-L2-s0": "b"}, "wall_s": {"sst2/teacher": 950.0}}
    state = bench.merged_state(recorded, local)
    assert state["sst2/budgets"] == {"teacher_ms": 4.5} and "sst2/timing" in state
    assert state["commands"] == {"sst2/teacher": "a", "sst2/distill-L2-s0": "b"}
    assert state["wall_s"] == {"sst2/teacher": 950.0}


def test_record_keeps_whole_units_and_restores_only_the_missing_files(tmp_path: Path):
    out, record = tmp_path / "work" / "sst2", bench.Record(tmp_path / "record")
    (out / "students" / "L2-s0").mkdir(parents=True)
    (out / "students" / "L2-s0" / "kdnas.json").write_text('{"arch": "L2"}')
    (out / "preds").mkdir()
    (out / "preds" / "L2-s0-cpu-int8.npy").write_bytes(b"\x93NUMPY\xff\x01")  # not text
    record.keep("sst2", out, "L2-s0", [out / "students" / "L2-s0" / "kdnas.json", out / "preds" / "L2-s0-cpu-int8.npy"])
    assert [p.name for p in (tmp_path / "record" / "sst2").iterdir()] == ["L2-s0.json"]  # one file per unit
    fresh = tmp_path / "later" / "sst2"
    (fresh / "preds").mkdir(parents=True)
    (fresh / "preds" / "L2-s0-cpu-int8.npy").write_bytes(b"mine")
    assert record.restore("sst2", fresh) == 1  # the file this session has already is left alone
    assert (fresh / "students" / "L2-s0" / "kdnas.json").read_text() == '{"arch": "L2"}'
    assert (fresh / "preds" / "L2-s0-cpu-int8.npy").read_bytes() == b"mine"
    assert record.restore("sst2", tmp_path / "third" / "sst2") == 2
    assert (tmp_path / "third" / "sst2" / "preds" / "L2-s0-cpu-int8.npy").read_bytes() == b"\x93NUMPY\xff\x01"
    assert record.restore("mnli", tmp_path / "x") == 0
    nowhere = bench.Record(None)
    nowhere.keep("sst2", out, "L2-s0", [out / "students" / "L2-s0" / "kdnas.json"])
    assert nowhere.restore("sst2", fresh) == 0 and nowhere.state() == {}


def test_a_retrained_teacher_must_be_the_recorded_one(tmp_path: Path):
    b = bench.Bench(tmp_path / "work", record=bench.Record(tmp_path / "record"))
    plan = bench.TASKS["sst2"]
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / bench.TEACHER_WEIGHTS).write_bytes(b"weights")
    bench.check_teacher_weights(b, plan, tmp_path / "t")
    assert bench.Record(tmp_path / "record").state()["sst2/teacher_sha256"] == bench.weights_sha256(tmp_path / "t")
    bench.check_teacher_weights(b, plan, tmp_path / "t")  # the same weights again
    (tmp_path / "t" / bench.TEACHER_WEIGHTS).write_bytes(b"other weights")
    with pytest.raises(SystemExit, match="differ from the recorded teacher.*no recorded card"):
        bench.check_teacher_weights(b, plan, tmp_path / "t")


def _teacher_card(folder: Path, loss: float, accuracy: float = 0.6416, steps: int = 473) -> Path:
    import json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / bench.TEACHER_WEIGHTS).write_bytes(f"weights of {folder.name}".encode())
    training = {"rows": 15130, "steps": steps, "config": {"epochs": 1, "seed": 0},
                "history": [{"epoch": 1, "loss": loss, "metrics": {"accuracy": accuracy}}]}
    (folder / "kdnas.json").write_text(json.dumps({"training": training}))
    return folder


def test_a_retrained_teacher_with_other_bits_passes_only_as_the_same_training_run(tmp_path: Path):
    """Another host of the same kind rounds differently (the MNLI teacher: other weight bits, loss equal to 8
    digits); a teacher that trained differently must still stop the run."""
    b = bench.Bench(tmp_path / "work", record=bench.Record(tmp_path / "record"))
    plan = bench.TASKS["mnli"]
    first = _teacher_card(tmp_path / "first", 0.9350190922523401)
    bench.check_teacher_weights(b, plan, first)
    bench.check_teacher_weights(b, plan, _teacher_card(tmp_path / "rounded", 0.9350190841874411), first)
    state = bench.Record(tmp_path / "record").state()
    assert state["mnli/teacher_sha256"] == bench.weights_sha256(first)
    assert state["mnli/teacher_sha256_same_training"] == [bench.weights_sha256(tmp_path / "rounded")]
    for name, card, why in (("loss", _teacher_card(tmp_path / "l", 0.9351), "training loss differs"),
                            ("acc", _teacher_card(tmp_path / "a", 0.9350190922523401, accuracy=0.65), "dev metrics"),
                            ("steps", _teacher_card(tmp_path / "s", 0.9350190922523401, steps=400), "steps differ")):
        with pytest.raises(SystemExit, match=why):
            bench.check_teacher_weights(b, plan, card, first)


def test_chains_stop_at_a_failed_step_and_run_the_rest(tmp_path: Path):
    b = bench.Bench(tmp_path / "work", jobs=2)
    ran: list[str] = []

    def fail() -> None:
        raise ValueError("no dev split")

    with pytest.raises(SystemExit, match="fail failed: ValueError: no dev split"):
        b.run_chains([[lambda: ran.append("a1"), fail, lambda: ran.append("a3")], [lambda: ran.append("b1")]])
    assert sorted(ran) == ["a1", "b1"]


def test_a_commands_wall_time_adds_to_its_earlier_attempts_and_is_saved_while_it_runs(tmp_path: Path):
    import json

    b = bench.Bench(tmp_path / "work")
    b.state["wall_s"] = {"mnli/search-random": 100.0}  # an attempt cut off in an earlier session
    with b.wall_clock("mnli/search-random", every=0.05):
        time.sleep(0.3)
        saved = json.loads((tmp_path / "work" / "state.json").read_text())["wall_s"]["mnli/search-random"]
        assert 100.0 < saved  # on disk before the command ends: a killed session keeps it
    assert saved <= b.state["wall_s"]["mnli/search-random"] and b.state["wall_s"]["mnli/search-random"] >= 100.3
    with b.wall_clock("sst2/teacher"):
        pass
    assert b.state["wall_s"]["sst2/teacher"] < 1.0


def test_an_artifact_whose_file_is_gone_is_timed_on_a_stand_in_of_its_signature(int8_artifact: Path, tmp_path: Path):
    import shutil

    from kdnas_deploy.artifact.runtime import read_card
    from kdnas_deploy.hardware import load_profile
    from kdnas_deploy.latency.graph import graph_signature

    profile = load_profile("cpu-int8")
    out = tmp_path / "sst2"
    target = out / "artifacts" / "L1-s0-cpu-int8"
    target.mkdir(parents=True)
    file = read_card(int8_artifact)["file"]
    for name in ("kdnas_card.json", "config.json", file):
        shutil.copy(int8_artifact / name, target / name)
    (target / bench.SIGNATURE_FILE).write_text(graph_signature(target / file) + "\n")
    assert bench.timed_graph(out, target, profile) == (target / file, "artifact")
    (target / file).unlink()  # a later session: the record has the card, config and signature, not the graph
    path, kind = bench.timed_graph(out, target, profile)
    assert kind == "stand-in" and path == out / "standins" / target.name / file and path.is_file()
    (target / bench.SIGNATURE_FILE).write_text("0" * 64 + "\n")
    with pytest.raises(SystemExit, match="signature is not the recorded one"):
        bench.timed_graph(out, target, profile)


def test_finals_run_the_first_seed_then_proxies_then_other_seeds_and_nothing_once_recorded(tmp_path: Path, monkeypatch):
    from kdnas_deploy.model_folder import ModelInfo, write_text_atomic

    out, plan = tmp_path / "sst2", bench.TASKS["sst2"]
    b = bench.Bench(tmp_path / "work", record=bench.Record(tmp_path / "record"))
    b.state["sst2/budgets"] = _fake_searched_task(out)
    students = bench.chosen_students(plan, out, b.state["sst2/budgets"])
    units = bench.units_of(plan, out, students)
    # 3 hand-crafted and 2 new KD-NAS architectures with 3 seeds, the random one with 1, and the teacher
    assert len(units) == 5 * 3 + 1 + 1 and units[0].name == "teacher" and units[0].train is None
    assert {t.name for _p, t in units[0].targets} == {"teacher-cpu-int8", "teacher-cpu"}
    chains: list = []
    b.run_chains = chains.extend  # what stage_finals would run, in its order
    filled: list = []
    monkeypatch.setattr(bench, "fill_export_rows", lambda pending: filled.append((pending, len(chains))))
    bench.stage_finals(b, plan, out, students)
    # every export's rows, timed before any chain starts (a chain beside a distillation would time them busy)
    assert len(filled) == 1 and filled[0][1] == 0
    assert len(filled[0][0]) == sum(len(u.targets) for u in units)
    assert ("cpu", "L6-H384-A12-I1536") in filled[0][0] and {p for p, _a in filled[0][0]} == set(bench.PROFILES)
    heads = [c[0][0] for c in chains]
    kinds = [h.split("/")[1].split("-")[0] + (h[-3:] if h.startswith("sst2/distill") else "") for h in heads]
    assert kinds == ["export"] + ["distill-s0"] * 6 + ["proxy"] * 6 + ["distill-s1"] * 5 + ["distill-s2"] * 5
    steps = [bench.unit_steps(b, plan, out, u, 1) for u in units]
    first = steps[1]
    assert first[0][0] == f"sst2/distill-{units[1].name}" and [s[1][0] for s in first[:-1]] == ["distill", "export", "export"]
    assert bench.work_left(b, plan, out)
    for u in units:  # every unit whole, as a resumed run finds them in the record
        write_text_atomic(u.model / "kdnas.json", ModelInfo(kind="student", arch="L1-H64-A2-I128", task="sst2",
                                                             max_length=128).model_dump_json())
        for _profile, target in u.targets:
            target.mkdir(parents=True, exist_ok=True)
            (target / "kdnas_card.json").write_text("{}")
    assert bench.work_left(b, plan, out)  # the proxies are left
    for arch in bench.proxy_archs(students):
        write_text_atomic(out / "proxy" / arch / "kdnas.json", ModelInfo(kind="student", arch=arch, task="sst2",
                                                                         max_length=64).model_dump_json())
    assert not bench.work_left(b, plan, out)


def test_the_rows_an_export_reads_are_timed_up_front_so_that_the_export_times_nothing(tmp_path: Path):
    from kdnas_deploy.hardware import load_profile
    from kdnas_deploy.latency.predictor import LatencyModel, items_for
    from kdnas_deploy.latency.table import LatencyTable, default_table_path
    from kdnas_deploy.space import StudentArch

    profile = str(Path(__file__).parent / "data" / "fast-cpu.toml")
    arch = "L1-H64-A2-I128"
    bench.fill_export_rows([(profile, arch), (profile, arch)])
    with LatencyTable(default_table_path()) as table:
        frozen = LatencyModel(table, load_profile(profile), measure_missing=False)
        assert frozen.missing(items_for(StudentArch.parse(arch))) == []
        assert frozen.predict(StudentArch.parse(arch)).ms > 0  # what the export's card reads, with nothing to time


def test_a_search_left_to_run_fills_the_latency_table_first_and_a_finished_one_does_not(tmp_path: Path, monkeypatch):
    """A session resumed from the record has the budgets but not the table: the search must not start on an empty
    one (it would time each missing block on demand, back to back)."""
    out, plan = tmp_path / "sst2", bench.TASKS["sst2"]
    _fake_searched_task(out)
    b = bench.Bench(tmp_path / "work")
    calls: list[str] = []
    monkeypatch.setattr(bench, "filled_table", lambda o: calls.append("fill") or {"L6-H384-A12-I1536": 19.5})
    monkeypatch.setattr(b, "cli", lambda name, *args: calls.append(name))
    monkeypatch.setattr(bench, "summarise_search", lambda *a: None)
    monkeypatch.setattr(bench, "keep_table", lambda *a: calls.append("keep"))
    bench.stage_search(b, plan, out, bench.search_budgets(out))
    assert calls == []  # both reports are here
    (out / "search-random" / "report.json").unlink()
    bench.stage_search(b, plan, out, bench.search_budgets(out))
    assert calls == ["fill", "sst2/search-random", "keep"]


def test_the_recorded_latency_table_is_read_by_a_later_session_of_the_same_fingerprint(
        tmp_path: Path, monkeypatch, capsys):
    """Both searches of a task must read one table even when they run in different sessions (fresh hosts)."""
    from kdnas_deploy.latency.table import LatencyTable, default_table_path
    from kdnas_deploy.latency.timing import Timing
    from kdnas_deploy.space import StudentArch

    timing = Timing(median_ms=2.5, p10_ms=2.4, p90_ms=2.9, spread=0.2, samples=30, rounds=2, noisy=False)
    arch, fid = StudentArch(2, 64, 2, 128), bench.search_fingerprint()
    with LatencyTable(default_table_path()) as table:
        table.register(fid, {"cpu": "this one"})
        table.put(fid, "block", arch, 1, 128, timing, 2, 1.5)
        table.register("another-machine", {"cpu": "that one"})
        table.put("another-machine", "block", arch, 1, 128, timing, 2, 1.5)
    out, record = tmp_path / "work" / "mnli", bench.Record(tmp_path / "record")
    out.mkdir(parents=True)
    bench.keep_table(bench.Bench(tmp_path / "work", record=record), bench.TASKS["mnli"], out)
    assert (tmp_path / "record" / "mnli" / "latency-table.json").exists()

    monkeypatch.setenv("KDNAS_CACHE_DIR", str(tmp_path / "fresh-cache"))  # the later session's empty table
    later = tmp_path / "later" / "mnli"
    assert record.restore("mnli", later) == 1
    bench.load_table(bench.TASKS["mnli"], later)
    assert "1 of 1 recorded latency-table rows added" in capsys.readouterr().out
    with LatencyTable(default_table_path()) as table:
        assert table.get(fid, "block", arch, 1, 128).timing == timing
        assert table.count() == 1  # the other machine's row was never recorded

    # On another kind of host the rows come in under the machine that measured them, for the searches to read as
    # that machine's (`search --machine`), never as this one's.
    monkeypatch.setattr(bench, "search_fingerprint", lambda: "a-third-machine")
    monkeypatch.setenv("KDNAS_CACHE_DIR", str(tmp_path / "third-cache"))
    bench.load_table(bench.TASKS["mnli"], later)
    assert f"the searches read it as machine {fid}" in capsys.readouterr().out
    with LatencyTable(default_table_path()) as table:
        assert table.count() == table.count(fid) == 1 and table.count("a-third-machine") == 0
    assert bench.table_machine(later) == fid

    # A run made on one kind of host stops there instead, before it adds any row.
    monkeypatch.setenv("KDNAS_CACHE_DIR", str(tmp_path / "fourth-cache"))
    with pytest.raises(SystemExit, match=f"measured on machine {fid}.*--same-host"):
        bench.load_table(bench.TASKS["mnli"], later, same_host=True)
    with LatencyTable(default_table_path()) as table:
        assert table.count() == 0


def test_on_another_kind_of_host_the_searches_read_the_budgets_machines_table(tmp_path: Path, monkeypatch):
    """A search that starts or resumes on a host unlike the one the budgets were read on must read that host's
    table (the budgets and the other search did), not fill this host's."""
    import json

    out, plan = tmp_path / "mnli", bench.TASKS["mnli"]
    _fake_searched_task(out)
    (out / bench.TABLE_FILE).write_text(json.dumps({"fingerprint": {"id": "budgets-machine", "info": {}}}))
    (out / "search-random" / "report.json").unlink()
    (out / "search-random" / "run.json").write_text(json.dumps({"settings": {"teacher": "t", "data": {}}}))
    (out / "search-kdnas" / "report.json").unlink()
    b = bench.Bench(tmp_path / "work")
    calls: list[tuple[str, ...]] = []

    def search(name, *args):
        calls.append(args)
        (out / name.split("/")[1] / "report.json").write_text(json.dumps({"choices": []}))

    monkeypatch.setattr(bench, "filled_table", lambda o: calls.append(("fill",)) or {})
    monkeypatch.setattr(b, "cli", search)
    monkeypatch.setattr(bench, "keep_table", lambda *a: None)
    monkeypatch.setattr(bench, "summarise_search", lambda *a: None)
    monkeypatch.setattr(bench, "search_fingerprint", lambda: "this-host")
    bench.stage_search(b, plan, out, bench.search_budgets(out))
    fresh, resumed = calls
    assert fresh[-2:] == ("--machine", "budgets-machine")
    assert resumed[-3:] == ("--machine", "budgets-machine", "--resume")


def test_an_artifacts_latency_is_its_fastest_session_with_the_spread_of_all():
    """Sessions of one graph on this kind of machine run calm or up to 1.5x slower for minutes: the reported
    latency is the calm one (the latency table's estimate), the median and spread show the slow spells."""
    rounds = [9.10, 8.02, 12.98, 13.71, 9.61, 9.32, 9.28]
    got = bench.round_stats(rounds)
    assert got["ms"] == 8.02 and got["median_ms"] == 9.32
    assert got["p10_ms"] < got["median_ms"] < got["p90_ms"] < 13.71


def test_a_stand_in_is_checked_against_its_artifact_or_another_seeds_of_the_same_signature(int8_artifact: Path, tmp_path: Path):
    """Where the first seed's artifact is gone (timed as a stand-in), an artifact of another seed with the same
    graph signature is timed beside it; where the artifact is here, its own stand-in is."""
    import shutil

    from kdnas_deploy.artifact.runtime import read_card
    from kdnas_deploy.latency.graph import graph_signature

    out = tmp_path / "sst2"
    file = read_card(int8_artifact)["file"]
    targets = [out / "artifacts" / f"L1-s{seed}-cpu-int8" for seed in (0, 2)]
    for target in targets:
        target.mkdir(parents=True)
        for name in ("kdnas_card.json", "config.json", file):
            shutil.copy(int8_artifact / name, target / name)
        (target / bench.SIGNATURE_FILE).write_text(graph_signature(target / file) + "\n")
    (targets[0] / file).unlink()
    graphs = {targets[0].name: (out / "standins" / targets[0].name / file, "stand-in")}
    assert bench.standin_checks(out, targets, graphs) == [(targets[0].name, (targets[1] / file, "artifact check"))]
    signature = (targets[1] / bench.SIGNATURE_FILE).read_text()
    (targets[1] / bench.SIGNATURE_FILE).write_text("0" * 64 + "\n")  # another graph: no check
    assert bench.standin_checks(out, targets, graphs) == []
    (targets[1] / bench.SIGNATURE_FILE).write_text(signature)
    [(name, (path, kind))] = bench.standin_checks(out, targets, {targets[1].name: (targets[1] / file, "artifact")})
    assert (name, kind) == (targets[1].name, "stand-in check") and path == out / "standins" / targets[1].name / file
    stand_in, artifact = {"rounds": [2.2, 2.06], "graph": "stand-in check"}, {"rounds": [2.0, 2.4], "graph": "artifact"}
    assert bench.standin_ratio(artifact, stand_in) == pytest.approx(1.03)
    assert bench.standin_ratio({**stand_in, "graph": "stand-in"}, {**artifact, "graph": "artifact check"}) == pytest.approx(1.03)


def test_handcrafted_first_runs_the_finals_that_do_not_need_the_search(tmp_path: Path, monkeypatch):
    out, plan = tmp_path / "sst2", bench.TASKS["sst2"]
    _fake_searched_task(out)
    for strategy in bench.STRATEGIES:
        (out / f"search-{strategy}" / "report.json").unlink()  # before the search
    b = bench.Bench(tmp_path / "work")
    students = bench.known_students(out, None)
    assert [(s.role, s.arch, s.budget_ms) for s in students][1:] == [("handcrafted", a, None) for a in bench.HANDCRAFTED.values()]
    chains: list = []
    b.run_chains = chains.extend
    monkeypatch.setattr(bench, "fill_export_rows", lambda pending: None)
    bench.stage_finals(b, plan, out, students)
    heads = [c[0][0] for c in chains]
    kinds = [h.split("/")[1].split("-")[0] + (h[-3:] if h.startswith("sst2/distill") else "") for h in heads]
    assert kinds == ["export"] + ["distill-s0"] * 3 + ["proxy"] * 3 + ["distill-s1"] * 3 + ["distill-s2"] * 3


def test_a_search_cut_off_mid_run_leaves_its_finished_candidates_to_the_next_session(tmp_path: Path):
    """The journal is copied while the search holds it open in WAL mode, with a commit not yet checkpointed into
    the file: the copy a later session restores must hold it, and a copy is recorded only when something changed."""
    import json

    from kdnas_deploy.search.journal import Journal
    from kdnas_deploy.space import StudentArch

    out, record = tmp_path / "work" / "mnli", bench.Record(tmp_path / "record")
    run = out / "search-random"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"settings": {"teacher": str(out / "teacher")}}))
    done, flying = StudentArch(2, 128, 2, 512), StudentArch(1, 256, 4, 1024)
    snaps = bench.SearchSnapshots(record, "mnli", out, run, "search-random" + bench.PARTIAL)
    with Journal(run / bench.JOURNAL_FILE) as journal:  # held open, as the search holds it
        journal.add_pending(done, 1, {"cpu-int8": 2.0})
        journal.add_pending(flying, 1, {"cpu-int8": 3.0})
        journal.finish(done, 0.61, 0.58, {"accuracy": 0.61}, 150.0)
        assert (run / (bench.JOURNAL_FILE + "-wal")).exists()  # the commits are in the WAL, not the file
        assert snaps.snapshot() and not snaps.snapshot()  # nothing new: not recorded again
        later = tmp_path / "later" / "mnli"
        assert record.restore("mnli", later) == 2
        with Journal(later / "search-random" / bench.JOURNAL_FILE) as copy:
            got = {c.arch: (c.status, c.score) for c in copy.candidates()}
        assert got == {done: ("done", 0.61), flying: ("pending", None)}  # resume re-runs the one in flight
        journal.finish(flying, 0.55, 0.52, {"accuracy": 0.55}, 120.0)
        assert snaps.snapshot()


def test_a_restored_search_resumes_in_this_sessions_folders_and_its_partial_unit_goes_once_done(
        tmp_path: Path, monkeypatch):
    import json

    out, plan = tmp_path / "mnli", bench.TASKS["mnli"]
    _fake_searched_task(out)
    (out / "search-random" / "report.json").unlink()
    from transformers import BertConfig

    from kdnas_deploy.teacher_config import load_teacher_config, located_config_hash, teacher_config_hash

    BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128).save_pretrained(out / "teacher")
    config = load_teacher_config(str(out / "teacher"))
    old = {"settings": {"teacher": "/gone/mnli/teacher", "data": {"data_dir": "/gone/glue/MNLI",
                                                                  "dev_file": "/gone/glue/MNLI/dev_matched.tsv",
                                                                  "task": "mnli"}},
           # hashed, as runs recorded before the hash left the folder out were, with the folder it named
           "teacher_config_hash": located_config_hash(config, "/gone/mnli/teacher")}
    (out / "search-random" / "run.json").write_text(json.dumps(old))
    record = bench.Record(tmp_path / "record")
    record.keep_files("mnli", "search-random" + bench.PARTIAL, {"search-random/run.json": b"{}"})
    b = bench.Bench(tmp_path / "work", record=record)
    calls: list[tuple[str, ...]] = []

    def search(name, *args):
        calls.append(args)
        (out / "search-random" / "report.json").write_text(json.dumps({"choices": []}))

    monkeypatch.setattr(bench, "filled_table", lambda o: {"L6-H384-A12-I1536": 19.5})
    monkeypatch.setattr(b, "cli", search)
    monkeypatch.setattr(bench, "keep_table", lambda *a: None)
    bench.stage_search(b, plan, out, bench.search_budgets(out), ("random",))
    assert len(calls) == 1 and calls[0][-1] == "--resume"
    relocated = json.loads((out / "search-random" / "run.json").read_text())
    settings = relocated["settings"]
    assert relocated["teacher_config_hash"] == teacher_config_hash(config)  # what `search --resume` compares
    glue = bench.glue_dir() / "MNLI"
    assert settings["teacher"] == str(out / "teacher")
    assert settings["data"] == {"data_dir": str(glue), "dev_file": str(glue / "dev_matched.tsv"), "task": "mnli"}
    units = sorted(p.name for p in (tmp_path / "record" / "mnli").iterdir())
    assert units == ["search-random.json"]  # the whole unit replaced the partial one


def test_a_recorded_timing_is_kept_unless_the_task_is_to_be_timed_again_on_this_host(tmp_path: Path, monkeypatch):
    import kdnas_deploy.latency.timing as timing

    b, plan = bench.Bench(tmp_path / "work"), bench.TASKS["mnli"]
    recorded = {"teacher-cpu-int8": {"ms": 22.5, "rounds": [22.5], "graph": "stand-in"}}
    # Both hosts are named here: a literal that happened to match the CI machine's CPU would make the recorded
    # timing this host's and the test would depend on where it runs.
    monkeypatch.setattr(bench, "host_name", lambda: "This CPU x2")
    b.state.update({"mnli/timing": recorded, "mnli/timing-host": "Another CPU x2"})
    monkeypatch.setattr(bench, "artifacts_of", lambda *a: [(None, None, "cpu-int8", None, tmp_path / "teacher-cpu-int8")])
    monkeypatch.setattr(bench, "timed_graph", lambda *a: (tmp_path / "model.onnx", "stand-in"))
    monkeypatch.setattr(bench, "standin_checks", lambda *a: [])
    monkeypatch.setattr(timing, "interleaved_rounds", lambda targets, *a: {("teacher-cpu-int8", "cpu-int8"): [11.2, 11.9]})
    assert bench.stage_timing(b, plan, tmp_path, []) is recorded
    again = bench.stage_timing(b, plan, tmp_path, [], again=True)
    assert again["teacher-cpu-int8"]["ms"] == 11.2 and b.state["mnli/timing"] is again
    assert b.state["mnli/timing-host"] == "This CPU x2"


def test_a_ranked_run_passes_init_to_every_student_and_a_resumed_run_keeps_its_own(tmp_path: Path):
    import dataclasses

    from kdnas_deploy.distill import DEFAULT_INIT
    from kdnas_deploy.model_folder import ModelInfo, write_text_atomic

    out, plan = tmp_path / "sst2", dataclasses.replace(bench.TASKS["sst2"], init="ranked")
    b = bench.Bench(tmp_path / "work", record=bench.Record(tmp_path / "record"))
    b.state["sst2/budgets"] = _fake_searched_task(out)
    students = bench.chosen_students(plan, out, b.state["sst2/budgets"])
    trains = [u.train for u in bench.units_of(plan, out, students) if u.train]
    assert trains and all(t[t.index("--init") + 1] == "ranked" for t in trains)
    assert bench.proxy_steps(b, plan, out, "L1-H64-A2-I128")[0][1][-2:] == ["--init", "ranked"]
    # nothing finished yet: what is asked for, else the tool's default
    assert bench.resolve_init(out, "inherit") == "inherit" and bench.resolve_init(out, None) == DEFAULT_INIT
    write_text_atomic(out / "students" / "L1-H64-A2-I128-s0" / "kdnas.json",
                      ModelInfo(kind="student", arch="L1-H64-A2-I128", task="sst2", max_length=128).model_dump_json())
    # a run begun before --init existed (no init in its cards) inherited, and continues so
    assert bench.resolve_init(out, None) == "inherit" == bench.resolve_init(out, "inherit")
    with pytest.raises(SystemExit, match="distilled with --init inherit, not ranked"):
        bench.resolve_init(out, "ranked")
    write_text_atomic(out / "proxy" / "L1-H64-A2-I128" / "kdnas.json",
                      ModelInfo(kind="student", arch="L1-H64-A2-I128", task="sst2", max_length=128, init="ranked").model_dump_json())
    with pytest.raises(SystemExit, match="several initialisations"):
        bench.resolve_init(out, None)


def test_an_artifacts_dev_predictions_reproduce_its_cards_score_or_the_tool_stops(student_dir: Path, int8_artifact: Path,
                                                                                  tmp_path: Path):
    import json
    import shutil

    from kdnas_deploy.artifact.runtime import read_card
    from kdnas_deploy.data import DataSource
    from kdnas_deploy.prepare import prepare, source_from_teacher

    labels = bench.artifact_dev_predictions(student_dir, int8_artifact, threads=1)
    card = read_card(int8_artifact)
    truth = prepare(str(student_dir), source_from_teacher(str(student_dir), DataSource()), card["max_length"]).encoded.dev["labels"]
    assert labels.dtype == np.int8 and len(labels) == len(truth) == card["data"]["dev_rows"]
    assert np.mean(labels == np.asarray(truth)) == pytest.approx(card["metrics"]["artifact_dev"]["accuracy"], abs=1e-12)
    changed = tmp_path / "int8"
    shutil.copytree(int8_artifact, changed)
    card["metrics"]["artifact_dev"]["accuracy"] += 0.01
    (changed / "kdnas_card.json").write_text(json.dumps(card))
    with pytest.raises(SystemExit, match="no longer match"):
        bench.artifact_dev_predictions(student_dir, changed, threads=1)


def test_kdnas_against_random_is_a_paired_interval_at_their_measured_latency_ratio():
    rng = np.random.default_rng(0)
    truth = rng.random(2000)
    correct = {"kd": (truth < 0.55).astype(float), "rnd": (truth < 0.50).astype(float)}  # kd right wherever rnd is
    row = lambda score, rounds: {"score_mean": score, "latency": {bench.PROFILES[0]: {"ms": min(rounds), "rounds": rounds}}}  # noqa: E731
    # Round 2 was a slow spell for random search's student: paired round by round the ratio is 1.052, 0.917 and 1.038.
    rows = {"kd": row(100 * correct["kd"].mean(), [2.64, 3.3, 2.7]), "rnd": row(100 * correct["rnd"].mean(), [2.51, 3.6, 2.6])}
    v = bench.versus_random(rows, correct, "kd", "rnd")
    lo, hi = v["ci95_points"]
    assert v["diff_points"] == pytest.approx(100 * (correct["kd"].mean() - correct["rnd"].mean()))
    assert 0 < lo < v["diff_points"] < hi and v["latency_ratio"] == pytest.approx(2.64 / 2.51)
    assert v["paired_latency_ratio"] == pytest.approx(2.7 / 2.6)
    assert bench.versus_random(rows, correct, "kd", None) == {"kdnas": rows["kd"]["score_mean"], "random": None}
