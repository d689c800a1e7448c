"""The latency lookup table: an SQLite file of timings keyed by machine fingerprint.

Rows are keyed by (fingerprint, kind, architecture, batch, sequence length). Kinds:
- `base`:  a 0-layer model of one width (embeddings, pooler, classifier head, session overhead);
- `stem`:  the same at the small vocabulary block graphs use;
- `block`: a model of `BLOCK_LAYERS` identical layers, from which one layer's cost is derived;
- `model`: a whole architecture, used to calibrate the composition and returned as is when asked;
- `probe`: the best time of the probe graph that tells calm sessions from slowed ones.

Each row is committed on its own, in WAL mode with a busy timeout, so a process killed at any
moment keeps every finished row and two processes can fill one table at once. Rows from another
fingerprint are never read for this machine.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from kdnas_deploy.util.errors import KdnasError, first_line
from kdnas_deploy.util.files import writable_file
from kdnas_deploy.util.resources import pid_alive
from kdnas_deploy.latency.timing import Timing
from kdnas_deploy.space import StudentArch

APP_ID = "kdnas-deploy latency table"
#: The first 16 bytes of every SQLite database file.
SQLITE_HEADER = b"SQLite format 3\x00"
SCHEMA_VERSION = 1
KINDS = ("base", "stem", "block", "model", "probe")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS fingerprints (id TEXT PRIMARY KEY, info TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS timings (
    fingerprint TEXT NOT NULL REFERENCES fingerprints(id),
    kind TEXT NOT NULL CHECK (kind IN ('base', 'stem', 'block', 'model', 'probe')),
    arch TEXT NOT NULL,
    batch INTEGER NOT NULL,
    seq_len INTEGER NOT NULL,
    median_ms REAL NOT NULL,
    p10_ms REAL NOT NULL,
    p90_ms REAL NOT NULL,
    spread REAL NOT NULL,
    samples INTEGER NOT NULL,
    rounds INTEGER NOT NULL,
    noisy INTEGER NOT NULL,
    sessions INTEGER NOT NULL,
    session_range REAL NOT NULL,
    fused_attention INTEGER NOT NULL,
    layers INTEGER NOT NULL,
    build_s REAL NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (fingerprint, kind, arch, batch, seq_len)
);
"""
#: Who is timing what: two processes filling one table share the work instead of both timing every missing item.
#: Not part of the table's content (export_rows ignores it); an older kdnas-deploy simply does not read it.
_CLAIMS = """
CREATE TABLE IF NOT EXISTS claims (
    fingerprint TEXT NOT NULL, kind TEXT NOT NULL, arch TEXT NOT NULL, batch INTEGER NOT NULL, seq_len INTEGER NOT NULL,
    host TEXT NOT NULL, pid INTEGER NOT NULL, claimed REAL NOT NULL,
    PRIMARY KEY (fingerprint, kind, arch, batch, seq_len)
)
"""
#: A claim from another host counts for this long (its process cannot be asked whether it is alive).
CLAIM_TTL_S = 3600.0
_COLUMNS = (
    "kind, arch, batch, seq_len, median_ms, p10_ms, p90_ms, spread, samples, rounds, noisy, "
    "sessions, session_range, fused_attention, build_s"
)


@dataclass(frozen=True)
class Entry:
    kind: str
    arch: StudentArch
    batch: int
    seq_len: int
    timing: Timing
    fused_attention: int
    build_s: float

    @property
    def fused(self) -> bool:
        return self.fused_attention == self.arch.layers


@dataclass
class MachineRows:
    """One machine fingerprint of a table: its description and how many timings it has, by kind and by (batch,
    sequence length)."""

    id: str
    info: dict[str, Any]
    created: float
    rows: dict[str, int]
    shapes: list[tuple[int, int]]
    last_timed: float | None

    @property
    def count(self) -> int:
        return sum(self.rows.values())


def _parse_arch(text: str) -> StudentArch:
    layers, hidden, heads, ffn = (int(part[1:]) for part in text.split("-"))
    return StudentArch(layers, hidden, heads, ffn)


#: The timings table's columns, in schema order: what an export must carry, no more and no fewer.
TIMING_COLUMNS = ("fingerprint", "kind", "arch", "batch", "seq_len", "median_ms", "p10_ms", "p90_ms", "spread",
                  "samples", "rounds", "noisy", "sessions", "session_range", "fused_attention", "layers", "build_s",
                  "created")
_INT_COLUMNS = {"batch": 1, "seq_len": 1, "samples": 0, "rounds": 0, "noisy": 0, "sessions": 0, "fused_attention": 0,
                "layers": 0}
_FINGERPRINT_RE = re.compile(r"[0-9A-Za-z_.-]{1,64}")
_ARCH_TEXT = re.compile(r"L\d{1,3}-H\d{1,5}-A\d{1,3}-I\d{1,6}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _value_problem(column: str, value: Any) -> str | None:
    """Why `value` cannot stand in `column` of an imported row, or None."""
    if column == "fingerprint":
        return None  # checked against the export's own id
    if column == "kind":
        return None if value in KINDS else f"is not one of {', '.join(KINDS)}"
    if column == "arch":
        if not isinstance(value, str) or not _ARCH_TEXT.fullmatch(value):
            return "is not an architecture (L4-H256-A4-I1024)"
        try:
            _parse_arch(value)
        except KdnasError as exc:
            return f"is not a valid architecture ({exc})"
        return None
    if column in _INT_COLUMNS:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= _INT_COLUMNS[column]
        return None if ok else f"is not an integer >= {_INT_COLUMNS[column]}"
    if not _number(value) or value < 0 or (column == "median_ms" and value == 0):
        return "is not a finite non-negative number" if column != "median_ms" else "is not a positive number"
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_export(rows: Any) -> None:
    """Raises a one-line error unless `rows` is a well-formed `export_rows` document: it may come from a file
    someone else wrote, so every column name and value is checked before anything is written. A column name is
    never put into SQL unchecked, and a string where a latency belongs would fail a search hours later."""
    if not isinstance(rows, dict) or rows.get("app") != APP_ID or rows.get("schema_version") != SCHEMA_VERSION:
        raise KdnasError("not an export of a kdnas-deploy latency table of this schema version")
    fp, columns, timings = rows.get("fingerprint"), rows.get("columns"), rows.get("timings")
    if not (isinstance(fp, dict) and isinstance(fp.get("id"), str) and _FINGERPRINT_RE.fullmatch(fp["id"])
            and isinstance(fp.get("info"), dict) and _number(fp.get("created"))):
        raise KdnasError("latency table export: its fingerprint is not an id, an info object and a time")
    if not isinstance(columns, list) or sorted(map(str, columns)) != sorted(TIMING_COLUMNS) \
            or len(set(columns)) != len(columns):
        raise KdnasError(f"latency table export: its columns are not {', '.join(TIMING_COLUMNS)}")
    if not isinstance(timings, list):
        raise KdnasError("latency table export: its timings are not a list of rows")
    for i, row in enumerate(timings):
        if not isinstance(row, list) or len(row) != len(columns):
            raise KdnasError(f"latency table export: row {i} does not hold {len(columns)} values")
        if row[columns.index("fingerprint")] != fp["id"]:
            raise KdnasError("latency table export mixes fingerprints")
        for column, value in zip(columns, row):
            problem = _value_problem(column, value)
            if problem:
                raise KdnasError(f"latency table export: row {i}: {column} {_short(value)} {problem}")


def _locked(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


class LatencyTable:
    """Open (creating unless `readonly`) a latency table at `path`."""

    def __init__(self, path: str | Path, *, readonly: bool = False, timeout_s: float = 60.0) -> None:
        self.path = Path(path).expanduser()
        self.readonly = readonly
        if readonly and not self.path.exists():
            raise KdnasError(f"latency table not found: {self.path}")
        if self.path.is_dir():
            raise KdnasError(f"--table {self.path}: is a directory, not a latency table file")
        if self.path.exists() and not self.path.is_file():
            raise KdnasError(f"--table {self.path}: not a regular file (a device or a pipe), not a latency table file")
        existing = self.path.exists() and self.path.stat().st_size > 0
        self._checked = False  # set by _recognise once an existing table of ours passed its integrity check
        if existing:
            # Recognised before anything writes to it: switching a stranger's SQLite file to WAL would change its
            # bytes and leave -wal/-shm files beside it, even though it is then refused.
            self._recognise()
        elif readonly:
            raise KdnasError(f"latency table {self.path} is empty")
        else:
            writable_file(self.path, "--table")
        if not readonly and existing and not os.access(self.path, os.W_OK):
            raise KdnasError(f"--table {self.path}: the file is read-only (open it read-only, or copy it)")
        uri = f"file:{quote(str(self.path))}?mode={'ro' if readonly else 'rwc'}"
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._db = sqlite3.connect(uri, uri=True, timeout=timeout_s, isolation_level=None)
                try:
                    self._db.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
                    if not readonly:
                        self._db.execute("PRAGMA journal_mode = WAL")
                        self._db.execute("PRAGMA synchronous = NORMAL")
                    self._init_schema()
                except BaseException:
                    self._db.close()
                    raise
                break
            except sqlite3.OperationalError as exc:
                # Two processes opening a fresh table at once: switching it to WAL while the other holds a lock fails
                # at once, without the busy timeout (SQLite's deadlock rule), about one open in twelve in four-way
                # races here. Opening again after the other's switch succeeds.
                if not _locked(exc):
                    raise KdnasError(f"latency table {self.path} is unreadable or damaged ({exc})") from None
                if time.monotonic() > deadline:
                    raise KdnasError(f"latency table {self.path} is locked by another process (waited "
                                     f"{timeout_s:g} s)") from None
                time.sleep(random.uniform(0.01, 0.1))
            except sqlite3.DatabaseError as exc:
                raise KdnasError(f"latency table {self.path} is unreadable or damaged ({exc})") from None

    def _recognise(self) -> None:
        """Refuse an existing file that is not one of our tables, or a damaged one, reading it only (no journal, no
        WAL switch): a damaged table opened read-write would be switched to WAL, its header rewritten, before the
        check refused it."""
        try:
            with self.path.open("rb") as fh:
                header = fh.read(16)
        except OSError as exc:
            raise KdnasError(f"--table {self.path}: cannot read ({exc.strerror})") from None
        if header != SQLITE_HEADER:
            raise KdnasError(f"{self.path} is not a kdnas-deploy latency table (not an SQLite file)")
        # immutable first: SQLite neither locks nor journals, and creates no -wal/-shm beside the file. A table another
        # process is writing may read inconsistently that way, so a failure is retried as an ordinary reader.
        error = "no check ran"
        for options in ("mode=ro&immutable=1", "mode=ro"):
            try:
                probe = sqlite3.connect(f"file:{quote(str(self.path))}?{options}", uri=True)
                try:
                    names = {r[0] for r in probe.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                    app = probe.execute("SELECT value FROM meta WHERE key = 'app'").fetchone() if "meta" in names else None
                    # Every page read now (milliseconds at this size), before a read-write open can touch the file.
                    check = probe.execute("PRAGMA quick_check").fetchone()[0] if app and app[0] == APP_ID else "ok"
                finally:
                    probe.close()
                if check == "ok":
                    self._checked = bool(app and app[0] == APP_ID)
                    break
                error = check
            except sqlite3.DatabaseError as exc:
                error = first_line(exc)
        else:
            raise KdnasError(f"latency table {self.path} is unreadable or damaged ({error}); move it "
                             "aside or use another --table") from None
        if names and (app is None or app[0] != APP_ID):
            raise KdnasError(f"{self.path} is an SQLite file but not a kdnas-deploy latency table")

    def _init_schema(self) -> None:
        names = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if names and "meta" not in names:
            raise KdnasError(f"{self.path} is an SQLite file but not a kdnas-deploy latency table")
        if not names:
            if self.readonly:
                raise KdnasError(f"latency table {self.path} is empty")
            with self._write() as db:
                for stmt in filter(str.strip, _SCHEMA.split(";")):
                    db.execute(stmt)
                db.execute("INSERT OR IGNORE INTO meta VALUES ('app', ?)", (APP_ID,))
                db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        # A quick_check reads every page (milliseconds for a table of this size) so that a damaged
        # file is reported now, not as a confusing error in the middle of a search; once is enough.
        if not self._checked and self._db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise KdnasError(f"latency table {self.path} is damaged; move it aside or use another --table")
        meta = dict(self._db.execute("SELECT key, value FROM meta"))
        if meta.get("app") != APP_ID:
            raise KdnasError(f"{self.path} is an SQLite file but not a kdnas-deploy latency table")
        if int(meta.get("schema_version", 0)) > SCHEMA_VERSION:
            raise KdnasError(
                f"latency table {self.path} was written by a newer kdnas-deploy (schema "
                f"{meta['schema_version']} > {SCHEMA_VERSION}); upgrade kdnas-deploy or use another --table"
            )
        if not self.readonly:
            self._db.execute(_CLAIMS)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        if self.readonly:
            raise KdnasError(f"latency table {self.path} is open read-only")
        # BEGIN IMMEDIATE takes the write lock up front, so concurrent writers queue on the busy
        # timeout instead of failing half-way through a transaction.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> LatencyTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- fingerprints ---------------------------------------------------------------------------
    def register(self, fingerprint: str, info: dict[str, Any]) -> None:
        if self.readonly:
            return
        with self._write() as db:
            db.execute(
                "INSERT OR IGNORE INTO fingerprints VALUES (?, ?, ?)",
                (fingerprint, json.dumps(info, sort_keys=True), time.time()),
            )

    def fingerprints(self) -> dict[str, dict[str, Any]]:
        return {fid: json.loads(info) for fid, info in self._db.execute("SELECT id, info FROM fingerprints")}

    # -- entries --------------------------------------------------------------------------------
    def put(
        self, fingerprint: str, kind: str, arch: StudentArch, batch: int, seq_len: int,
        timing: Timing, fused_attention: int, build_s: float,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO timings VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    fingerprint, kind, str(arch), batch, seq_len, timing.median_ms, timing.p10_ms,
                    timing.p90_ms, timing.spread, timing.samples, timing.rounds, int(timing.noisy),
                    timing.sessions, timing.session_range, fused_attention, arch.layers, build_s, time.time(),
                ),
            )
            db.execute("DELETE FROM claims WHERE fingerprint = ? AND kind = ? AND arch = ? AND batch = ? AND seq_len = ?",
                       (fingerprint, kind, str(arch), batch, seq_len))

    # -- claims -------------------------------------------------------------------------------------
    def claim(self, fingerprint: str, kind: str, arch: StudentArch, batch: int, seq_len: int) -> bool:
        """Take the item for this process unless it is timed already or a live process holds it; True if taken.

        A claim is live while its process runs (same host) or for CLAIM_TTL_S (another host): a killed profiler's
        items go to the next one that asks."""
        key = (fingerprint, kind, str(arch), batch, seq_len)
        where = "fingerprint = ? AND kind = ? AND arch = ? AND batch = ? AND seq_len = ?"
        with self._write() as db:
            if db.execute(f"SELECT 1 FROM timings WHERE {where}", key).fetchone():
                return False
            held = db.execute(f"SELECT host, pid, claimed FROM claims WHERE {where}", key).fetchone()
            if held is not None and (held[0], held[1]) != _me() and _alive(*held):
                return False
            db.execute("INSERT OR REPLACE INTO claims VALUES (?,?,?,?,?,?,?,?)", (*key, *_me(), time.time()))
        return True

    def release(self, fingerprint: str, kind: str, arch: StudentArch, batch: int, seq_len: int) -> None:
        """Give back this process's claim on an item it will not time after all."""
        with self._write() as db:
            db.execute("DELETE FROM claims WHERE fingerprint = ? AND kind = ? AND arch = ? AND batch = ? AND seq_len = ? "
                       "AND host = ? AND pid = ?", (fingerprint, kind, str(arch), batch, seq_len, *_me()))

    def get(self, fingerprint: str, kind: str, arch: StudentArch, batch: int, seq_len: int) -> Entry | None:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM timings WHERE fingerprint = ? AND kind = ? AND arch = ? AND batch = ? AND seq_len = ?",
            (fingerprint, kind, str(arch), batch, seq_len),
        ).fetchone()
        return self._entry(row) if row else None

    def entries(self, fingerprint: str, batch: int, seq_len: int, kind: str | None = None) -> list[Entry]:
        sql = f"SELECT {_COLUMNS} FROM timings WHERE fingerprint = ? AND batch = ? AND seq_len = ?"
        args: tuple[Any, ...] = (fingerprint, batch, seq_len)
        if kind:
            sql += " AND kind = ?"
            args += (kind,)
        return [self._entry(r) for r in self._db.execute(sql + " ORDER BY kind, arch", args)]

    def count(self, fingerprint: str | None = None) -> int:
        if fingerprint is None:
            return self._db.execute("SELECT COUNT(*) FROM timings").fetchone()[0]
        return self._db.execute("SELECT COUNT(*) FROM timings WHERE fingerprint = ?", (fingerprint,)).fetchone()[0]

    def export_rows(self, fingerprint: str) -> dict[str, Any]:
        """One fingerprint's rows as plain JSON-able data, for `import_rows` into a table on another machine of the
        same fingerprint (same CPU model, core count and software): a benchmark resumed on a fresh host of one
        machine kind then reads exactly the latencies an earlier session measured."""
        info = self._db.execute("SELECT info, created FROM fingerprints WHERE id = ?", (fingerprint,)).fetchone()
        if info is None:
            raise KdnasError(f"latency table {self.path} has no fingerprint {fingerprint}")
        cur = self._db.execute("SELECT * FROM timings WHERE fingerprint = ? ORDER BY kind, arch, batch, seq_len",
                               (fingerprint,))
        columns = [d[0] for d in cur.description]
        return {"app": APP_ID, "schema_version": SCHEMA_VERSION,
                "fingerprint": {"id": fingerprint, "info": json.loads(info[0]), "created": info[1]},
                "columns": columns, "timings": [list(row) for row in cur]}

    def import_rows(self, rows: dict[str, Any]) -> int:
        """Adds rows written by `export_rows`; a row this table already has is kept as it is (its own measurement
        wins). Returns how many rows were added; `check_export` vets them first."""
        check_export(rows)
        fp, columns, timings = rows["fingerprint"], rows["columns"], rows["timings"]
        before = self.count()
        with self._write() as db:
            db.execute("INSERT OR IGNORE INTO fingerprints VALUES (?, ?, ?)",
                       (fp["id"], json.dumps(fp["info"], sort_keys=True), fp["created"]))
            db.executemany(f"INSERT OR IGNORE INTO timings ({', '.join(columns)}) VALUES "
                           f"({', '.join('?' * len(columns))})", timings)
        return self.count() - before

    def machines(self) -> list[MachineRows]:
        """What the table holds, per machine fingerprint: its description and its rows by kind and shape."""
        found: dict[str, MachineRows] = {}
        for fid, info, created in self._db.execute("SELECT id, info, created FROM fingerprints ORDER BY created, id"):
            found[fid] = MachineRows(fid, json.loads(info), created, {}, [], None)
        for fid, kind, n, last in self._db.execute(
                "SELECT fingerprint, kind, COUNT(*), MAX(created) FROM timings GROUP BY fingerprint, kind"):
            m = found.setdefault(fid, MachineRows(fid, {}, 0.0, {}, [], None))
            m.rows[kind] = n
            m.last_timed = max(last, m.last_timed or last)
        for fid, batch, seq_len in self._db.execute(
                "SELECT DISTINCT fingerprint, batch, seq_len FROM timings ORDER BY batch, seq_len"):
            found[fid].shapes.append((batch, seq_len))
        return list(found.values())

    def integrity_ok(self) -> bool:
        return self._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    @staticmethod
    def _entry(row: tuple[Any, ...]) -> Entry:
        kind, arch, batch, seq_len, med, p10, p90, spread, samples, rounds, noisy, sessions, srange, fused, build_s = row
        timing = Timing(med, p10, p90, spread, samples, rounds, bool(noisy), sessions, srange)
        return Entry(kind, _parse_arch(arch), batch, seq_len, timing, fused, build_s)


def _me() -> tuple[str, int]:
    return socket.gethostname(), os.getpid()  # read each time: a forked worker is another process


def _alive(host: str, pid: int, claimed: float) -> bool:
    if host != _me()[0]:
        return time.time() - claimed < CLAIM_TTL_S
    return pid_alive(pid)


def default_table_path() -> Path:
    """`latency.sqlite` in the user's cache dir."""
    from kdnas_deploy.util.paths import cache_dir

    return cache_dir() / "latency.sqlite"
