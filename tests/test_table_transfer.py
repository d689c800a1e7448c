"""Moving timings between latency tables: `table list`, `table merge`, `table export`, on real SQLite files."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess

import pytest

from conftest import cli, cli_here
from kdnas_deploy.fingerprint import fingerprint_id, machine_fingerprint
from kdnas_deploy.hardware import load_profile
from kdnas_deploy.latency.table import LatencyTable, check_export
from kdnas_deploy.latency.timing import Timing
from kdnas_deploy.latency.transfer import export, merge, read_exports
from kdnas_deploy.space import StudentArch
from kdnas_deploy.util.errors import KdnasError

T = Timing(median_ms=2.5, p10_ms=2.4, p90_ms=2.9, spread=0.2, samples=30, rounds=2, noisy=False)
OWN = Timing(median_ms=9.0, p10_ms=8.0, p90_ms=10.0, spread=0.2, samples=30, rounds=2, noisy=False)
A = StudentArch(2, 64, 2, 128)
B = StudentArch(2, 128, 4, 256)
BASE = StudentArch(0, 64, 1, 64)
#: What a deployment target's fingerprint holds for these tests: a CPU, its instruction set and the profile.
TARGET = {"cpu": "Target CPU", "cpu_count": 4, "cpu_features": ["avx2", "fma"], "machine": "x86_64",
          "profile": "cpu-int8"}


def _target_table(path, fid="target1", cpu="Target CPU"):
    """A table as `profile` on a deployment target leaves it: one machine, a few kinds of rows."""
    with LatencyTable(path) as t:
        t.register(fid, {**TARGET, "cpu": cpu})
        t.put(fid, "block", A, 1, 128, T, 2, 1.5)
        t.put(fid, "block", B, 1, 128, T, 2, 1.5)
        t.put(fid, "base", BASE, 1, 128, T, 0, 0.5)
    return path


def test_merge_adds_another_machines_rows_keeps_its_own_and_adds_nothing_twice(tmp_path):
    source = _target_table(tmp_path / "target.sqlite")
    _target_table(tmp_path / "second.sqlite", fid="target2", cpu="Second CPU")
    with LatencyTable(tmp_path / "home.sqlite") as home:
        home.register("target1", TARGET)
        home.put("target1", "block", A, 1, 128, OWN, 2, 1.0)  # measured here before
        merged = merge(home, [source, tmp_path / "second.sqlite"])
        assert [(m.machine, m.offered, m.added) for m in merged] == [("target1", 3, 2), ("target2", 3, 3)]
        assert home.get("target1", "block", A, 1, 128).timing == OWN  # its own measurement wins
        assert home.get("target1", "block", B, 1, 128).timing == T
        assert home.get("target2", "base", BASE, 1, 128).build_s == 0.5
        assert [m.added for m in merge(home, [source])] == [0]
        by_id = {m.id: m for m in home.machines()}
        assert by_id["target1"].rows == {"base": 1, "block": 2} and by_id["target1"].shapes == [(1, 128)]
        assert by_id["target2"].info["cpu"] == "Second CPU"


def test_export_file_round_trips_and_machine_selects(tmp_path):
    source = _target_table(tmp_path / "target.sqlite")
    with LatencyTable(source) as t:
        t.register("other", {**TARGET, "cpu": "y"})
        t.put("other", "block", A, 1, 64, T, 2, 1.0)
        document = export(t, ["target1"])
        with pytest.raises(KdnasError, match="no timings of machine nope"):
            export(t, ["nope"])
    exported = tmp_path / "target1.json"
    exported.write_text(json.dumps(document))
    assert [e["fingerprint"]["id"] for e in read_exports(exported)] == ["target1"]
    assert [e["fingerprint"]["id"] for e in read_exports(source, ["other"])] == ["other"]
    with LatencyTable(tmp_path / "home.sqlite") as home:
        assert [m.added for m in merge(home, [exported])] == [3]
        assert home.fingerprints() == {"target1": TARGET}
        with pytest.raises(KdnasError, match="no source holds machine other"):
            merge(home, [exported], ["other"])


def _export_of(tmp_path):
    with LatencyTable(_target_table(tmp_path / "t.sqlite")) as t:
        return t.export_rows("target1")


@pytest.mark.parametrize("spoil, message", [
    (lambda d: d["columns"].__setitem__(5, "median_ms) VALUES (1); DROP TABLE timings; --"), "columns are not"),
    (lambda d: d["timings"][0].__setitem__(d["columns"].index("median_ms"), "fast"), "median_ms 'fast' is not"),
    (lambda d: d["timings"][0].__setitem__(d["columns"].index("median_ms"), float("nan")), "median_ms nan is not"),
    (lambda d: d["timings"][0].__setitem__(d["columns"].index("batch"), True), "batch True is not an integer"),
    (lambda d: d["timings"][0].__setitem__(d["columns"].index("arch"), "L2-H100-A3-I64"), "not a valid architecture"),
    (lambda d: d["timings"][0].__setitem__(d["columns"].index("kind"), "guess"), "kind 'guess' is not one of"),
    (lambda d: d["timings"][1].pop(), "row 1 does not hold 18 values"),
    (lambda d: d["fingerprint"].__setitem__("id", "../../etc"), "fingerprint is not an id"),
    (lambda d: d.__setitem__("timings", "rows"), "timings are not a list"),
])
def test_hostile_exports_are_refused_whole_before_anything_is_written(tmp_path, spoil, message):
    good = _target_table(tmp_path / "good.sqlite", fid="good")
    document = _export_of(tmp_path)
    spoil(document)
    with pytest.raises(KdnasError, match=message):
        check_export(document)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(document))
    with LatencyTable(tmp_path / "home.sqlite") as home:
        with pytest.raises(KdnasError, match="bad.json: latency table export|bad.json: not an export"):
            merge(home, [good, bad])
        assert home.count() == 0  # the good source was not merged half-way either
        assert home.machines() == []


def test_sources_that_are_not_timings_get_one_line(tmp_path):
    home_path = _target_table(tmp_path / "home.sqlite")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01binary" * 50)
    text = tmp_path / "notes.json"
    text.write_text("{ not json")
    stranger = tmp_path / "stranger.sqlite"
    with sqlite3.connect(stranger) as db:
        db.execute("CREATE TABLE people (name TEXT)")
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with LatencyTable(home_path) as home:
        for source, message in [(home_path, "is the table being merged into"), (tmp_path, "is a directory"),
                                (junk, "a binary file"), (text, "neither a latency table"),
                                (stranger, "not a kdnas-deploy latency table"), (listed, "not an export"),
                                (tmp_path / "missing.sqlite", "cannot read")]:
            with pytest.raises(KdnasError, match=message):
                merge(home, [source])
        assert home.count() == 3


def test_table_commands_on_the_cli(tmp_path, capsys):
    """list marks the rows this host reads; export and merge move them; bad paths give one line and status 2."""
    here = fingerprint_id(machine_fingerprint(load_profile("cpu")))
    source = _target_table(tmp_path / "target.sqlite")
    with LatencyTable(source) as t:
        t.register(here, machine_fingerprint(load_profile("cpu")))
        t.put(here, "model", A, 1, 128, T, 2, 3.0)
    exported = tmp_path / "out" / "rows.json"
    assert cli_here(["table", "export", "--table", str(source), "--out", str(exported), "--machine", "target1"], capsys)[0] == 0
    home = tmp_path / "home.sqlite"
    assert cli_here(["table", "merge", str(exported), "--table", str(home)], capsys)[0] == 0
    assert cli_here(["table", "list", "--table", str(home), "--json"], capsys)[0] == 0
    proc = subprocess.run(cli("table", "list", "--table", str(source), "--json"), capture_output=True, text=True,
                          timeout=120, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr
    listed = {m["id"]: m for m in json.loads(proc.stdout)}
    assert listed[here]["this_host"] and not listed["target1"]["this_host"]
    from kdnas_deploy.instruction_set import host_instruction_set

    assert listed[here]["instruction_set"] == host_instruction_set().summary
    assert listed["target1"]["instruction_set"] == "AVX2"  # TARGET's features: avx2, fma
    assert cli_here(["table", "list", "--table", str(source)], capsys)[0] == 0
    assert listed["target1"]["rows"] == {"base": 1, "block": 2}
    with LatencyTable(home, readonly=True) as t:
        assert [m.id for m in t.machines()] == ["target1"] and t.count() == 3
    for args, message in [
        (["table", "list", "--table", str(tmp_path / "none.sqlite")], "no latency table at"),
        (["table", "export", "--table", str(source), "--out", str(tmp_path)], "is a directory"),
        (["table", "merge", str(tmp_path / "junk"), "--table", str(home)], "cannot read"),
        (["table", "merge", str(source), "--table", str(home), "--machine", "abc"], "no source holds machine abc"),
    ]:
        code, err = cli_here(args, capsys)
        assert code == 2 and message in err and "Traceback" not in err, (args, err)
        assert len(err.strip().splitlines()) == 1, err
