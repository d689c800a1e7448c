"""The CLI through real subprocesses: real exports, ONNX Runtime sessions and SQLite files."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time

import pytest

from conftest import FAST_PROFILE, TINY_SPACE, cli

BASE = ["profile", "--hw", str(FAST_PROFILE), "--space", str(TINY_SPACE), "--no-references", "--calibration", "3", "--json"]
NEEDED = 4 + 2 + 3  # base and stem for 2 widths, 2 layer shapes, 3 calibration models


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cli(*args), capture_output=True, text=True, timeout=timeout, env=os.environ.copy())


def rows(table) -> int:
    con = sqlite3.connect(table)
    try:
        return con.execute("SELECT COUNT(*) FROM timings").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


def test_profile_fills_then_serves_from_cache(tmp_path):
    table = tmp_path / "lat.sqlite"
    first = run(*BASE, "--table", str(table), "--arch", "L3-H48-A3-I100", "--verify", "5")
    assert first.returncode == 0, first.stderr
    s = json.loads(first.stdout)
    # The extra shape lies outside the space: its base, stem and block are timed too.
    t = s["timings"]
    assert (t["needed"], t["measured"], t["cached"], t["unfused"]) == (NEEDED + 3, NEEDED + 3, 0, [])
    assert s["calibration"]["points"] == 3
    assert s["layer_fit"] is None  # 3 layer shapes in the table: too few to fit, each layer from its own block
    (pred,) = s["predictions"]
    assert pred["arch"] == "L3-H48-A3-I100" and pred["ms"] > 0 and pred["source"] == "calibrated"
    # 4 shapes in the space, 3 timed whole for calibration: one is left to verify on.
    assert s["verify"]["n"] == 1 and len(s["verify"]["rows"]) == 1
    assert rows(table) == NEEDED + 3  # verification timings are not stored

    second = run(*BASE, "--table", str(table))
    assert second.returncode == 0, second.stderr
    t = json.loads(second.stdout)["timings"]
    assert t["measured"] == 0 and t["cached"] == NEEDED


def test_human_summary_and_progress(tmp_path):
    done = run(*BASE[:-1], "--table", str(tmp_path / "t.sqlite"), "--arch", "L2-H64-A2-I128")
    assert done.returncode == 0, done.stderr
    assert f"timings: {NEEDED} needed, {NEEDED} measured now, 0 from cache" in done.stdout
    assert "L2-H64-A2-I128" in done.stdout and "calibration:" in done.stdout and "layers: each from its own" in done.stdout
    assert "fast-cpu" in done.stderr  # the progress bar names the profile
    from kdnas_deploy.instruction_set import host_instruction_set

    assert f"({host_instruction_set().summary}), onnxruntime" in " ".join(done.stdout.split())  # the machine timed
    version = run("version")
    assert version.returncode == 0 and f"{host_instruction_set().describe()}" in version.stdout


@pytest.mark.parametrize(
    "args, words",
    [
        (["--hw", "tpu"], "unknown hardware profile 'tpu'"),
        (["--hw", "cuda"], "cuda"),
        (["--arch", "L4-H250-A4-I1024"], "not divisible by 4 heads"),
        (["--space", "no-such-space.toml"], "no-such-space.toml: no such file"),
        (["--teacher", "/no/such/teacher/folder"], "cannot load the teacher config"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(tmp_path, args, words):
    res = run("profile", "--table", str(tmp_path / "t.sqlite"), *args)
    if args == ["--hw", "cuda"] and res.returncode == 0:
        pytest.skip("this machine runs the cuda profile")
    assert res.returncode == 2
    assert words in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_bad_table_file_is_a_clear_error(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_text("hello" * 1000)
    res = run(*BASE, "--table", str(junk))
    assert res.returncode == 2 and "not an SQLite file" in res.stderr and "Traceback" not in res.stderr


def test_teacher_folder_derives_the_space(tmp_path):
    from transformers import BertConfig

    BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=2, intermediate_size=128).save_pretrained(tmp_path / "teacher")
    res = run("profile", "--hw", str(FAST_PROFILE), "--teacher", str(tmp_path / "teacher"), "--no-references",
              "--calibration", "2", "--table", str(tmp_path / "t.sqlite"), "--json")
    assert res.returncode == 0, res.stderr
    s = json.loads(res.stdout)
    assert s["teacher"] == "L2-H64-A2-I128"
    assert s["space"]["name"] == "auto-L2-H64-A2-I128"
    assert [p["arch"] for p in s["predictions"]] == ["L2-H64-A2-I128"]


def test_killed_run_resumes_without_redoing_finished_timings(tmp_path):
    table = tmp_path / "lat.sqlite"
    proc = subprocess.Popen(cli(*BASE, "--table", str(table)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while rows(table) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = rows(table)
    assert 3 <= kept < NEEDED, "the run was not interrupted part-way"
    resumed = run(*BASE, "--table", str(table))
    assert resumed.returncode == 0, resumed.stderr
    t = json.loads(resumed.stdout)["timings"]
    assert t["cached"] == kept and t["measured"] == NEEDED - kept
    assert rows(table) == NEEDED


def test_two_profile_processes_share_one_table(tmp_path):
    table = tmp_path / "lat.sqlite"
    procs = [subprocess.Popen(cli(*BASE, "--table", str(table), "--seed", str(s)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for s in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (stdout, stderr) in zip(procs, outs):
        assert p.returncode == 0, stderr
        assert json.loads(stdout)["timings"]["needed"] == NEEDED
    con = sqlite3.connect(table)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # Shared blocks are stored once; each seed adds its own calibration models.
    kinds = dict(con.execute("SELECT kind, COUNT(*) FROM timings GROUP BY kind"))
    assert kinds["base"] == kinds["stem"] == kinds["block"] == 2 and 3 <= kinds["model"] <= 6
    # Each item is claimed before it is built: however the two runs interleaved, none was timed by both.
    measured = sum(json.loads(stdout)["timings"]["measured"] for stdout, _ in outs)
    assert measured == sum(kinds.values())
    assert con.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0  # every claim ended with its row


def test_multi_session_profile_with_probe(tmp_path):
    """sessions = 3: spread sessions and the probe run for real ONNX Runtime sessions."""
    text = FAST_PROFILE.read_text().replace("max_rounds = 1", "max_rounds = 1\nsessions = 3")
    profile = tmp_path / "three.toml"
    profile.write_text(text)
    table = tmp_path / "lat.sqlite"
    res = run("profile", "--hw", str(profile), "--space", str(TINY_SPACE), "--no-references", "--calibration", "3",
              "--table", str(table), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["timings"]["measured"] == NEEDED
    con = sqlite3.connect(table)
    sessions = [r[0] for r in con.execute("SELECT sessions FROM timings WHERE kind != 'probe'")]
    assert con.execute("SELECT COUNT(*) FROM timings WHERE kind = 'probe'").fetchone()[0] == 1
    assert len(sessions) == NEEDED and all(n >= 3 for n in sessions)  # the fastest of the profile's three or more


def test_profile_under_a_length_distribution_times_the_bracketing_lengths_and_verifies_between_them(tmp_path):
    """--lengths: real ONNX Runtime sessions at each node length; latency under the traffic below the fixed
    length's; --verify times whole architectures at lengths drawn from the distribution."""
    text = FAST_PROFILE.read_text().replace("seq_len = 16", "seq_len = 32").replace("max_rounds = 1", "max_rounds = 1\nsessions = 2")
    profile = tmp_path / "two.toml"
    profile.write_text(text)
    lengths = tmp_path / "lengths.txt"
    lengths.write_text("# length count\n6 5\n11 3\n20 1\n90 1\n")  # 90: capped at the profile's 32 tokens; the tiny space leaves one architecture untimed whole to verify
    table = tmp_path / "lat.sqlite"
    res = run("profile", "--hw", str(profile), "--space", str(TINY_SPACE), "--no-references", "--calibration", "3",
              "--table", str(table), "--lengths", str(lengths), "--verify", "1", "--arch", "L2-H64-A2-I128", "--json")
    assert res.returncode == 0, res.stderr
    t = json.loads(res.stdout)["traffic"]
    assert t["nodes"] == [6, 8, 16, 32] and t["lengths"]["p50"] == 6 and t["lengths"]["cap"] == 32
    assert t["measured"] == 4 * NEEDED and t["shape"].startswith("batch 1, lengths file lengths.txt")
    con = sqlite3.connect(table)
    assert sorted(r[0] for r in con.execute("SELECT DISTINCT seq_len FROM timings")) == [6, 8, 16, 32]
    assert t["verify"]["n"] == 1 and all(r["length"] in (6, 11, 20, 32) for r in t["verify"]["rows"])
    summary = json.loads(res.stdout)  # the summary's own table stays at the profile's 32 tokens, and says so
    assert summary["seq_len"] == 32 and [p["arch"] for p in summary["predictions"]] == ["L2-H64-A2-I128"]
    (under,) = t["predictions"]
    assert under["arch"] == "L2-H64-A2-I128" and all(under[k] > 0 for k in ("mean_ms", "p50_ms", "p90_ms"))
    bad = run("profile", "--hw", str(profile), "--space", str(TINY_SPACE), "--table", str(table), "--lengths", str(tmp_path))
    assert bad.returncode != 0 and "--lengths" in bad.stderr and "is a directory" in bad.stderr
    assert "Traceback" not in bad.stderr
