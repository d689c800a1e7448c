from __future__ import annotations

import json
import multiprocessing as mp
import sqlite3

import pytest

from conftest import bump_schema_version
from kdnas_deploy.util.errors import KdnasError
from kdnas_deploy.latency.table import LatencyTable, default_table_path
from kdnas_deploy.latency.timing import Timing
from kdnas_deploy.space import StudentArch

T = Timing(median_ms=2.5, p10_ms=2.4, p90_ms=2.9, spread=0.2, samples=30, rounds=2, noisy=False)
A = StudentArch(2, 64, 2, 128)


def test_round_trip(tmp_path):
    path = tmp_path / "t.sqlite"
    with LatencyTable(path) as table:
        table.register("fp1", {"cpu": "x"})
        table.put("fp1", "block", A, 1, 128, T, 2, 1.5)
        table.put("fp1", "base", StudentArch(0, 64, 1, 64), 1, 128, T, 0, 0.5)
    with LatencyTable(path, readonly=True) as table:
        entry = table.get("fp1", "block", A, 1, 128)
        assert entry is not None and entry.timing == T and entry.arch == A and entry.fused
        assert entry.build_s == 1.5
        assert table.get("fp1", "block", A, 1, 64) is None  # another input shape is another key
        assert [e.kind for e in table.entries("fp1", 1, 128)] == ["base", "block"]
        assert table.fingerprints() == {"fp1": {"cpu": "x"}}
        with pytest.raises(KdnasError, match="read-only"):
            table.put("fp1", "model", A, 1, 128, T, 2, 1.0)


def test_fingerprints_are_isolated(tmp_path):
    with LatencyTable(tmp_path / "t.sqlite") as table:
        table.put("this-machine", "block", A, 1, 128, T, 2, 1.0)
        assert table.get("other-machine", "block", A, 1, 128) is None
        assert table.entries("other-machine", 1, 128) == []
        assert table.count("this-machine") == 1 and table.count("other-machine") == 0


def test_exported_rows_import_into_another_table_without_overwriting_its_own(tmp_path):
    with LatencyTable(tmp_path / "a.sqlite") as a:
        a.register("fp1", {"cpu": "x"})
        a.put("fp1", "block", A, 1, 128, T, 2, 1.5)
        a.put("fp1", "base", StudentArch(0, 64, 1, 64), 1, 128, T, 0, 0.5)
        a.register("fp2", {"cpu": "y"})
        a.put("fp2", "block", A, 1, 128, T, 2, 1.5)
        rows = a.export_rows("fp1")
        with pytest.raises(KdnasError, match="no fingerprint"):
            a.export_rows("fp3")
    assert len(rows["timings"]) == 2  # only fp1's
    own = Timing(median_ms=9.0, p10_ms=8.0, p90_ms=10.0, spread=0.2, samples=30, rounds=2, noisy=False)
    with LatencyTable(tmp_path / "b.sqlite") as b:
        b.register("fp1", {"cpu": "x"})
        b.put("fp1", "block", A, 1, 128, own, 2, 1.0)
        assert b.import_rows(json.loads(json.dumps(rows))) == 1  # survives a trip through a JSON file
        assert b.get("fp1", "block", A, 1, 128).timing == own  # its own measurement wins
        base = b.get("fp1", "base", StudentArch(0, 64, 1, 64), 1, 128)
        assert base is not None and base.timing == T and base.build_s == 0.5
        assert b.fingerprints() == {"fp1": {"cpu": "x"}}
        assert b.import_rows(rows) == 0
        with pytest.raises(KdnasError, match="not an export"):
            b.import_rows({**rows, "schema_version": 99})
        mixed = {**rows, "timings": [["fp2", *rows["timings"][0][1:]]]}
        with pytest.raises(KdnasError, match="mixes"):
            b.import_rows(mixed)


def test_damaged_foreign_and_newer_files_give_clear_errors(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database at all" * 200)
    with pytest.raises(KdnasError, match="not an SQLite file"):
        LatencyTable(junk)

    # Another application's database is recognised before anything writes to it: not switched to WAL, no -wal or
    # -shm beside it, not one byte changed.
    foreign = tmp_path / "foreign.sqlite"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE users (name TEXT)")
    con.commit()
    con.close()
    before = foreign.read_bytes()
    with pytest.raises(KdnasError, match="not a kdnas-deploy latency table"):
        LatencyTable(foreign)
    assert foreign.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign.sqlite", "junk.sqlite"]

    newer = tmp_path / "newer.sqlite"
    LatencyTable(newer).close()
    bump_schema_version(newer)
    with pytest.raises(KdnasError, match="newer kdnas-deploy"):
        LatencyTable(newer)

    with pytest.raises(KdnasError, match="not found"):
        LatencyTable(tmp_path / "absent.sqlite", readonly=True)


def test_truncated_table_is_reported_not_crashed(tmp_path):
    path = tmp_path / "t.sqlite"
    with LatencyTable(path) as table:
        for layers in range(1, 60):
            table.put("fp", "model", StudentArch(layers, 64, 2, 128), 1, 128, T, layers, 1.0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3] + b"\x00" * 100)
    with pytest.raises(KdnasError, match="damaged"):
        LatencyTable(path)


def test_a_damaged_data_page_is_refused_before_anything_writes_to_the_file(tmp_path):
    """Check first, write never: the integrity check runs on a read-only view, so a damaged table is not opened
    read-write, not switched to WAL and gets no -wal or -shm beside it."""
    path = tmp_path / "t.sqlite"
    with LatencyTable(path) as table:
        for layers in range(1, 120):
            table.put("fp", "model", StudentArch(layers, 64, 2, 128), 1, 128, T, layers, 1.0)
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode = DELETE")  # as a table copied from elsewhere arrives: one file
    page_size = con.execute("PRAGMA page_size").fetchone()[0]
    pages = con.execute("PRAGMA page_count").fetchone()[0]
    con.close()
    data = bytearray(path.read_bytes())
    assert pages > 4 and data[18] == data[19] == 1  # a rollback-journal file, as it was copied
    start = (pages - 2) * page_size  # a data page deep in the file: the header and schema still read
    data[start + 8: start + page_size] = b"\xff" * (page_size - 8)
    path.write_bytes(bytes(data))
    before = path.read_bytes()
    for readonly in (False, True):
        with pytest.raises(KdnasError, match="damaged"):
            LatencyTable(path, readonly=readonly)
        assert path.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["t.sqlite"]


def _writer(path: str, worker: int, n: int) -> None:
    with LatencyTable(path) as table:
        table.register(f"fp{worker}", {"worker": worker})
        for k in range(n):
            arch = StudentArch(k + 1, 64, 2, 128)
            table.put(f"fp{worker}", "model", arch, 1, 128, T, arch.layers, 0.1)
            table.put("shared", "model", arch, 1, 128, T, arch.layers, 0.1)  # both write the same keys


def test_two_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "t.sqlite"
    LatencyTable(path).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), w, 80)) for w in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with LatencyTable(path, readonly=True) as table:
        assert table.integrity_ok()
        assert table.count("fp1") == table.count("fp2") == table.count("shared") == 80


def _opener(path: str, barrier, failures) -> None:
    barrier.wait()
    try:
        LatencyTable(path).close()
    except KdnasError as exc:
        failures.put(str(exc))


def test_processes_opening_a_fresh_table_at_once_all_get_it(tmp_path):
    """Two `profile` runs started together on a new --table: switching it to WAL while another opener holds a lock
    fails at once, past the busy timeout. Before the retry, 10 of 120 such four-way opens failed (CI caught one)."""
    ctx = mp.get_context("fork")  # the race is in the first milliseconds: spawn's imports would spread the starts
    failures = ctx.Queue()
    for trial in range(15):
        path = str(tmp_path / f"t{trial}.sqlite")
        barrier = ctx.Barrier(4)
        procs = [ctx.Process(target=_opener, args=(path, barrier, failures)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
    messages = []
    while not failures.empty():
        messages.append(failures.get())
    assert not messages, messages[:3]


def test_default_table_lives_in_the_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("KDNAS_CACHE_DIR", str(tmp_path))
    assert default_table_path() == tmp_path / "latency.sqlite"
