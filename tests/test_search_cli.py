from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from conftest import FAST_PROFILE, TINY_SPACE, cli, cli_here
from kdnas_deploy.model_folder import read_info
from kdnas_deploy.search.journal import Journal


def test_tiny_search_end_to_end_then_report_and_resume(tiny_teacher_dir: Path, sst2_slice: Path, tmp_path: Path,
                                                       capsys) -> None:
    run = tmp_path / "run"
    args = ["search", "--teacher", str(tiny_teacher_dir), "--data-dir", str(sst2_slice), "--task", "sst2", "--max-length", "32",
            "--hw", str(FAST_PROFILE), "--space", str(TINY_SPACE), "--table", str(tmp_path / "lat.sqlite"),
            "--episodes", "2", "--top-k", "2", "--proxy", "100", "--held-out", "100", "--proxy-epochs", "1",
            "--final-epochs", "1", "--calibration", "2", "--budgets", "1000,0.000001,L2-H64-A4-I128", "--confirm-rounds", "2", "--out", str(run)]
    plan = subprocess.run(cli(*args, "--dry-run"), capture_output=True, text=True, timeout=300)
    assert plan.returncode == 0, plan.stderr
    assert "space tiny: 4 architectures" in plan.stdout and "fast-cpu: 0 of " in plan.stdout and "estimate:" in plan.stdout
    assert not (run / "run.json").exists()  # a dry run writes nothing
    done = subprocess.run(cli(*args), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    replan = subprocess.run(cli(*args[:-2], "--out", str(tmp_path / "other"), "--dry-run"), capture_output=True, text=True, timeout=300)
    need = plan.stdout.split("fast-cpu: 0 of ")[1].split()[0]
    assert f"fast-cpu: {need} of {need} timings present" in replan.stdout, replan.stdout
    report = json.loads((run / "report.json").read_text())
    assert len(report["candidates"]) == 4 and all(c["status"] == "done" for c in report["candidates"])
    # Every latency is the expected latency under the task's own request lengths, and every report says so.
    recorded = json.loads((run / "run.json").read_text())
    lengths = recorded["lengths"]
    assert lengths["source"].startswith("task sst2 train (") and lengths["cap"] == 32
    shape = report["latency_shape"]["fast-cpu"]
    assert shape == recorded["latency_shape"]["fast-cpu"] and shape.startswith("batch 1, lengths task sst2 train")
    assert "latency taken at batch 1, lengths task sst2 train" in " ".join(plan.stdout.split())
    assert "Every latency is taken at fast-cpu: batch 1, lengths task sst2 train" in (run / "report.md").read_text()
    import sqlite3

    timed_at = {n for (n,) in sqlite3.connect(tmp_path / "lat.sqlite").execute("SELECT DISTINCT seq_len FROM timings")}
    assert len(timed_at) >= 3 and max(int(n) for n in lengths["histogram"]) <= max(timed_at) <= lengths["cap"]
    assert set(json.loads((run / "choices.json").read_text())["length_weights"]) <= {str(n) for n in timed_at}
    assert report["teacher"]["arch"] == "L2-H64-A4-I128" and report["teacher"]["latency_ms"]["fast-cpu"] > 0
    target = report["reward"]["targets_ms"]["fast-cpu"]
    assert target == report["teacher"]["latency_ms"]["fast-cpu"] / 3  # default: 3x faster than the teacher
    assert report["best"] == max((c for c in report["candidates"]), key=lambda c: c["reward"])["arch"]
    tiny, as_teacher, roomy = report["finals"]  # sorted by budget
    assert tiny["budget_ms"] == 0.000001 and tiny["arch"] is None  # nothing is that fast: said, not faked
    # A budget given as an architecture: bounded by its table latency, confirmed against its re-timed median.
    assert as_teacher["reference"] == "L2-H64-A4-I128" and as_teacher["budget_ms"] == report["teacher"]["latency_ms"]["fast-cpu"]
    assert as_teacher["limit_ms"] == as_teacher["measured_ms"]["L2-H64-A4-I128"]
    if as_teacher["confirmed"]:
        assert as_teacher["measured_ms"][as_teacher["arch"]] <= as_teacher["limit_ms"]
    assert [c["arch"] for c in report["choices"]] == [f["arch"] for f in report["finals"]]
    assert "as fast as `L2-H64-A4-I128`" in (run / "report.md").read_text()
    chosen_at = (run / "choices.json").stat().st_mtime_ns
    # Successive halving decides the roomy budget between its 4 fits (best proxy score first): 2x the proxy's rows
    # for all 4, then 4x for the better 2; the best of the last rung wins.
    by_score = sorted(report["candidates"], key=lambda c: -c["score"])
    assert roomy["fits"] == [c["arch"] for c in by_score]
    rungs = roomy["halving"]["rungs"]
    assert [(r["proxy"], r["held_out"], len(r["scores"])) for r in rungs] == [(200, 200, 4), (400, 400, 2)]
    assert list(rungs[1]["scores"]) == rungs[0]["kept"] and "gap_se_points" in rungs[1]  # SST-2 scores accuracy
    winner = max(rungs[1]["scores"], key=rungs[1]["scores"].get)
    assert roomy["budget_ms"] == 1000 and roomy["arch"] == winner == roomy["halving"]["winner"]
    assert "Successive halving over 4 fits" in (run / "report.md").read_text()
    info = read_info(run / "students" / winner)
    assert info is not None and info.arch == winner and roomy["dev"] == info.metrics["dev"]
    settings = json.loads((run / "run.json").read_text())
    assert settings["settings"]["episodes"] == 2 and "fast-cpu" in settings["profiles"]
    assert "| 2 |" in (run / "report.md").read_text()
    assert 0.0 <= report["teacher"]["score"] <= 1.0
    assert (run / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "best" in done.stdout and "no candidate within (budget 1e-06 ms)" in done.stdout
    # The search ends by exporting its final student for the profile it searched with.
    art = roomy["artifacts"]["fast-cpu"]
    card_path = Path(art["folder"]) / "kdnas_card.json"
    card = json.loads(card_path.read_text())
    assert Path(art["folder"]) == run / "artifacts" / f"{winner}-fast-cpu" and card["arch"] == winner
    assert card["search_run"] == str(run.resolve()) and card["parity"]["max_abs_diff"] <= 1e-4
    assert card["latency"]["traffic"]["lengths"] == lengths  # the card reports the traffic the search optimised for
    assert art["artifact_dev"] == card["metrics"]["artifact_dev"] and "fast-cpu artifact" in (run / "report.md").read_text()
    exported_at = card_path.stat().st_mtime_ns

    (run / "report.md").unlink()
    (run / "pareto.png").unlink()
    assert subprocess.run(cli("report", str(run)), capture_output=True, text=True, timeout=60).returncode == 0
    assert (run / "report.md").is_file() and (run / "pareto.png").is_file()

    again = subprocess.run(cli("search", "--resume", "--out", str(run)), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    with Journal(run / "journal.sqlite") as journal:
        assert len(journal.candidates()) == 4  # nothing redone
    assert "episode" not in again.stderr  # no candidate was distilled again
    assert card_path.stat().st_mtime_ns == exported_at  # nor exported again
    assert (run / "choices.json").stat().st_mtime_ns == chosen_at  # nor re-timed: the finals stay those chosen

    # The teacher and the data moved: the run resumes from their new folders, and checks they are the same ones.
    import shutil

    moved_teacher, moved_data = tmp_path / "moved" / "teacher", tmp_path / "moved" / "data"
    shutil.copytree(tiny_teacher_dir, moved_teacher)
    shutil.copytree(sst2_slice, moved_data)
    moved = subprocess.run(cli("search", "--resume", "--out", str(run), "--teacher", str(moved_teacher), "--data-dir",
                               str(moved_data)), capture_output=True, text=True, timeout=300)
    assert moved.returncode == 0, moved.stderr
    recorded = json.loads((run / "run.json").read_text())
    assert recorded["settings"]["teacher"] == str(moved_teacher) and recorded["settings"]["data"]["data_dir"] == str(moved_data)
    assert recorded["settings"]["data"]["task"] == "sst2" and recorded["data_fingerprint"]
    with Journal(run / "journal.sqlite") as journal:
        assert len(journal.candidates()) == 4
    train = next(p for p in moved_data.iterdir() if p.name.startswith("train"))
    train.write_text(train.read_text().replace("\t1\n", "\t0\n", 1))  # one label changed: other rows
    code, err = cli_here(["search", "--resume", "--out", str(run), "--data-dir", str(moved_data)], capsys)
    assert code == 2 and "the data is not what this run started on" in err

    for bad, message in [
        (["search", "--out", str(run)], "give --teacher"),
        (["search", "--teacher", str(tiny_teacher_dir), "--out", str(run)], "already holds a search run"),
        (["search", "--resume", "--out", str(tmp_path / "nothing")], "not a search run directory"),
        (["search", "--teacher", str(tiny_teacher_dir), "--strategy", "annealing", "--out", str(tmp_path / "x")], "unknown strategy"),
        (["search", "--teacher", str(tiny_teacher_dir), "--budgets", "5,fast", "--out", str(tmp_path / "x")], "--budgets item 'fast'"),
        (["report", str(tmp_path / "nothing")], "not a search run directory"),
    ]:
        code, err = cli_here(bad, capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (bad, err)


def test_pareto_front() -> None:
    from kdnas_deploy.search.plot import pareto_front

    points = [(1.0, 0.70), (2.0, 0.80), (1.5, 0.65), (3.0, 0.79), (4.0, 0.85), (0.5, 0.60)]
    assert pareto_front(points) == [5, 0, 1, 4]


def test_config_file_with_flag_overrides(tiny_teacher_dir: Path, sst2_slice: Path, tmp_path: Path) -> None:
    config = tmp_path / "search.toml"
    config.write_text(f"""
teacher = "{tiny_teacher_dir}"
hw = ["{FAST_PROFILE}"]
space = "{TINY_SPACE}"
table = "{tmp_path / 'lat.sqlite'}"
episodes = 3
top_k = 5
proxy = 100
max_length = 32

[data]
task = "sst2"
data_dir = "{sst2_slice}"
""")
    plan = subprocess.run(cli("search", "--config", str(config), "--episodes", "2", "--out", str(tmp_path / "r"), "--dry-run"),
                          capture_output=True, text=True, timeout=300)
    assert plan.returncode == 0, plan.stderr
    assert "10 candidates x 100 proxy rows" in plan.stdout  # episodes from the flag, top_k and proxy from the file
    bad = tmp_path / "bad.toml"
    bad.write_text('teacher = "x"\nepisodez = 3\n')
    result = subprocess.run(cli("search", "--config", str(bad), "--out", str(tmp_path / "r")), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "unknown setting(s) episodez" in result.stderr
    bad.write_text("teacher = \n")
    result = subprocess.run(cli("search", "--config", str(bad), "--out", str(tmp_path / "r")), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "not valid TOML" in result.stderr


def test_search_reads_a_deployment_targets_table_and_resumes_on_another_host(tiny_teacher_dir: Path, sst2_slice: Path,
                                                                             tmp_path: Path) -> None:
    from conftest import as_other_machine
    from kdnas_deploy.latency.table import LatencyTable

    here, target, run = tmp_path / "here.sqlite", tmp_path / "target.sqlite", tmp_path / "run"
    filled = subprocess.run(cli("profile", "--hw", str(FAST_PROFILE), "--space", str(TINY_SPACE), "--teacher", str(tiny_teacher_dir),
                                "--table", str(here), "--calibration", "2", "--no-references", "--json"),
                            capture_output=True, text=True, timeout=300)
    assert filled.returncode == 0, filled.stderr
    other = as_other_machine(here, target, json.loads(filled.stdout)["fingerprint"])
    with LatencyTable(target) as table:
        rows = table.count()
    args = ["search", "--teacher", str(tiny_teacher_dir), "--data-dir", str(sst2_slice), "--task", "sst2", "--max-length", "32",
            "--hw", str(FAST_PROFILE), "--space", str(TINY_SPACE), "--table", str(target), "--machine", other,
            "--episodes", "1", "--top-k", "2", "--proxy", "100", "--held-out", "100", "--proxy-epochs", "1",
            "--calibration", "2", "--budgets", "L2-H64-A4-I128", "--no-final", "--out", str(run)]
    # The target was profiled at its profile's one length; the task's request lengths need others, never timed here.
    shaped = subprocess.run(cli(*args[:-1], str(tmp_path / "shaped")), capture_output=True, text=True, timeout=300)
    said = " ".join(shaped.stderr.split())
    assert shaped.returncode == 2 and "timings the search needs at " in said and "--lengths fixed" in said, shaped.stderr
    args[-2:-2] = ["--lengths", "fixed"]
    done = subprocess.run(cli(*args), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    said = " ".join(done.stderr.split())  # rich wraps the status line
    assert f"picked by the table: fast-cpu's latencies are machine {other}'s" in said
    report = json.loads((run / "report.json").read_text())
    assert report["latency_machines"] == {"fast-cpu": other} and f"from machine {other}" in (run / "report.md").read_text()
    assert report["choices"][0]["measured_ms"] in ({}, None)  # nothing re-timed on this host
    with LatencyTable(target) as table:
        assert table.count() == rows and set(table.fingerprints()) == {other}  # read, never filled from here
    recorded = json.loads((run / "run.json").read_text())
    assert recorded["profiles"]["fast-cpu"]["fingerprint"] == other and recorded["settings"]["machines"] == [other]

    # A run begun on the machine that measured the table (its fingerprint in run.json), resumed on this host: refused
    # as is, resumed reading that machine's timings with --machine.
    # Its teacher restored into another folder, as a later session restores it: the same teacher.
    moved = tmp_path / "restored-teacher"
    shutil.copytree(tiny_teacher_dir, moved)
    recorded["settings"]["machines"], recorded["settings"]["teacher"] = None, str(moved)
    (run / "run.json").write_text(json.dumps(recorded))
    (run / "report.json").unlink()
    refused = subprocess.run(cli("search", "--resume", "--out", str(run)), capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "machine changed" in refused.stderr and "Traceback" not in refused.stderr
    again = subprocess.run(cli("search", "--resume", "--machine", other, "--out", str(run)), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "episode" not in again.stderr and json.loads((run / "report.json").read_text())["latency_machines"] == {"fast-cpu": other}



def test_the_teachers_hash_leaves_out_the_folder_it_was_loaded_from(tiny_teacher_dir: Path, tmp_path: Path) -> None:
    from kdnas_deploy.util.hashing import stable_hash
    from kdnas_deploy.teacher_config import load_teacher_config, located_config_hash, teacher_config_hash

    moved = tmp_path / "elsewhere"
    shutil.copytree(tiny_teacher_dir, moved)
    here, there = load_teacher_config(str(tiny_teacher_dir)), load_teacher_config(str(moved))
    assert teacher_config_hash(here) == teacher_config_hash(there)
    # Runs recorded before hashed the folder in: their hash is found again from the folder they named.
    assert located_config_hash(there, str(tiny_teacher_dir)) == stable_hash(here.to_dict())
    (moved / "config.json").write_text((moved / "config.json").read_text().replace('"hidden_act": "gelu"', '"hidden_act": "relu"'))
    assert teacher_config_hash(load_teacher_config(str(moved))) != teacher_config_hash(here)
