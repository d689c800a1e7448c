"""`kdnas-deploy compare`: paired sessions, their geometric mean and one-sided bound, the record, the verdict."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from kdnas_deploy.util.errors import KdnasError
from kdnas_deploy.latency.compare import Comparison, Session, compare_graphs, ratio_bounds
from tests.conftest import cli, cli_here


def test_ratio_bounds_match_a_t_interval_on_logs():
    ratios = [0.95, 1.00, 0.98, 1.02, 0.97, 0.99]
    mean, lower, upper = ratio_bounds(ratios)
    logs = [math.log(r) for r in ratios]
    m = sum(logs) / len(logs)
    sd = math.sqrt(sum((x - m) ** 2 for x in logs) / (len(logs) - 1))
    assert mean == pytest.approx(math.exp(m))
    assert upper == pytest.approx(math.exp(m + 2.015048 * sd / math.sqrt(6)), rel=1e-5)  # t(0.95, 5)
    assert lower == pytest.approx(math.exp(m - 2.015048 * sd / math.sqrt(6)), rel=1e-5)
    # Symmetric in log space: the ratios of B over A give the reciprocal bounds.
    inv = ratio_bounds([1 / r for r in ratios])
    assert inv[0] == pytest.approx(1 / mean) and inv[2] == pytest.approx(1 / lower)
    assert ratio_bounds([1.01])[1:] == (None, None)
    with pytest.raises(ValueError):
        ratio_bounds([1.0, 0.0])


def _comparison(ratios, hours_apart=0.5):
    return Comparison("a", "b", "cpu-int8", {}, [Session(i * hours_apart * 3600, [r], [1.0], r) for i, r in enumerate(ratios)])


def test_verdict_needs_sessions_span_and_a_bound_under_the_tolerance():
    tight = [0.97, 0.98, 0.97, 0.98, 0.975, 0.97]
    assert _comparison(tight).verdict().status == "within"
    # The same ratios timed within minutes say nothing about the hours the rule asks for.
    short = _comparison(tight, hours_apart=0.1).verdict()
    assert short.status == "too little evidence" and "span" in short.reason
    few = _comparison(tight[:4]).verdict()
    assert few.status == "too little evidence" and "4 of 6 sessions" in few.reason
    # A mean under 1.03 does not pass when the sessions scatter: the bound decides.
    scattered = _comparison([0.95, 1.08, 0.96, 1.07, 0.97, 1.06])
    mean, _, upper = scattered.bounds()
    assert mean < 1.03 < upper and scattered.verdict().status == "not shown"


def test_compare_resumes_from_its_record_spaces_sessions_and_refuses_other_graphs(tmp_path, fast_profile, int8_artifact):
    from kdnas_deploy.artifact.runtime import artifact_graph

    graph, _ = artifact_graph(int8_artifact)
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    shutil.copy(graph, a)
    shutil.copy(graph, b)
    now, slept = [1000.0], []

    def sleep(s):
        slept.append(s)
        now[0] += s

    def timer(pa, pb, profile, rounds, seed):
        now[0] += 60  # a session takes a minute
        return [2.0 + 0.01 * seed / 1000] * rounds, [2.0] * rounds

    record = tmp_path / "cmp.json"
    first = compare_graphs(a, b, fast_profile, sessions=2, rounds=3, every_s=600, record=record, sleep=sleep,
                           clock=lambda: now[0], timer=timer)
    assert len(first.sessions) == 2 and slept == [pytest.approx(540)]  # 10 min from start to start
    again = compare_graphs(a, b, fast_profile, sessions=3, rounds=3, every_s=600, record=record, sleep=sleep,
                           clock=lambda: now[0], timer=timer)
    assert [round(r, 4) for r in again.ratios] == [1.0, 1.005, 1.01]  # the two recorded sessions kept, one added
    assert json.loads(record.read_text())["sessions"][2]["ratio"] == pytest.approx(1.01)
    # The record keeps the CPU its sessions ran on; sessions from another instruction set are refused.
    from conftest import other_cpu_features
    from kdnas_deploy.instruction_set import host_instruction_set

    kept = json.loads(record.read_text())
    assert kept["machine"]["cpu_features"] == list(host_instruction_set().features)
    assert again.summary()["instruction_set"] == host_instruction_set().summary
    record.write_text(json.dumps({**kept, "machine": {**kept["machine"], "cpu_features": other_cpu_features()}}))
    with pytest.raises(KdnasError, match="its sessions ran on .*give another --record"):
        compare_graphs(a, b, fast_profile, sessions=4, rounds=3, record=record, timer=timer, clock=lambda: now[0])
    # a record from before machines were kept: its sessions are of an unknown CPU, and more may be added
    record.write_text(json.dumps({k: v for k, v in kept.items() if k != "machine"}))
    old = compare_graphs(a, b, fast_profile, sessions=3, rounds=3, record=record, timer=timer, clock=lambda: now[0])
    assert old.machine is None and old.summary()["instruction_set"] == "instruction set unknown"
    b.write_bytes(b.read_bytes() + b"\0")  # another graph: the record's sessions are not its sessions
    with pytest.raises(KdnasError, match="b_sha256"):
        compare_graphs(a, b, fast_profile, sessions=4, rounds=3, record=record, timer=timer, clock=lambda: now[0])


def test_compare_cli_times_two_real_artifacts(int8_artifact, tmp_path, capsys):
    import subprocess

    record = tmp_path / "r.json"
    run = subprocess.run(cli("compare", str(int8_artifact), str(int8_artifact), "--sessions", "2", "--rounds", "2",
                             "--record", str(record), "--json"), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["sessions"] == 2 and len(summary["ratios"]) == 2 and summary["upper_95"] is not None
    assert summary["verdict"] == "too little evidence"  # two sessions in a minute: the rule needs 6 over 2 h
    assert summary["lower_95"] <= summary["geomean_ratio"] <= summary["upper_95"]
    assert len(json.loads(record.read_text())["sessions"]) == 2
    code, err = cli_here(["compare", str(int8_artifact), str(int8_artifact), "--sessions", "2", "--rounds", "2",
                          "--record", str(record), "--check"], capsys)
    assert code == 1  # --check: not shown within, so a script can stop on it


def test_compare_under_traffic_times_the_bracketing_lengths_and_keeps_its_record_to_that_shape(int8_artifact, tmp_path,
                                                                                                capsys):
    import subprocess

    lengths = tmp_path / "lengths.txt"
    lengths.write_text("9 3\n20 1\n")
    record = tmp_path / "r.json"
    run = subprocess.run(cli("compare", str(int8_artifact), str(int8_artifact), "--sessions", "1", "--rounds", "2",
                             "--lengths", str(lengths), "--record", str(record), "--json"),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["shape"].startswith("batch 1, lengths file lengths.txt: mean 11.8 tokens")
    saved = json.loads(record.read_text())
    # the nodes 8, 16, 32 bracket 9 and 20: 9 gives 7/8 of its weight to 8 and 1/8 to 16; 20 gives 3/4 to 16, 1/4 to 32
    assert saved["key"]["length_weights"] == {"8": 0.65625, "16": 0.28125, "32": 0.0625}
    assert saved["shape"] == summary["shape"]
    # the same record at the profile's one length is another comparison: refused, not mixed
    code, err = cli_here(["compare", str(int8_artifact), str(int8_artifact), "--sessions", "2", "--rounds", "2",
                          "--record", str(record)], capsys)
    assert code == 2 and "length_weights changed" in err
    code, err = cli_here(["compare", str(int8_artifact), str(int8_artifact), "--lengths", str(tmp_path)], capsys)
    assert code == 2 and "--lengths" in err and "is a directory" in err


def test_compare_bad_input_is_one_line(tmp_path, int8_artifact, fp32_artifact, capsys):
    (tmp_path / "x.txt").write_text("not a graph")
    cases = [
        (["compare", str(tmp_path / "missing"), str(int8_artifact)], "no such artifact folder"),
        (["compare", str(tmp_path / "x.txt"), str(int8_artifact)], "expected an artifact folder"),
        (["compare", str(tmp_path), str(int8_artifact)], "not an exported artifact"),
        (["compare", str(int8_artifact), str(fp32_artifact)], "different profiles"),
        (["compare", str(int8_artifact), str(int8_artifact), "--record", str(tmp_path)], "is a directory"),
    ]
    from kdnas_deploy.artifact.runtime import artifact_graph

    graph, _ = artifact_graph(int8_artifact)
    cases.append((["compare", str(graph), str(graph)], "give --hw"))
    for args, message in cases:
        code, err = cli_here(args, capsys)
        assert code == 2 and message in err and "Traceback" not in err, (args, err)
