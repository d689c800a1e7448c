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
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from kdnas_deploy.util.errors import KdnasError
from kdnas_deploy.util.files import writable_file
from kdnas_deploy.util.resources import pid_alive
from kdnas_deploy.latency.timing import Timing
from kdnas_deploy.space import StudentArch

APP_ID = "kdnas-deploy latency table"
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


def _parse_arch(text: str) -> StudentArch:
    layers, hidden, heads, ffn = (int(part[1:]) for part in text.split("-"))
    return StudentArch(layers, hidden, heads, ffn)


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
        try:
            self._db = sqlite3.connect(uri, uri=True, timeout=timeout_s, isolation_level=None)
            self._db.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
            if not readonly:
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute("PRAGMA synchronous = NORMAL")
            self._init_schema()
        except sqlite3.DatabaseError as exc:
            raise KdnasError(f"latency table {self.path} is unreadable or damaged ({exc})") from None

    def _recognise(self) -> None:
        """Refuse an existing file that is not one of our tables, reading it only (no journal, no WAL switch)."""
        try:
            with self.path.open("rb") as fh:
                header = fh.read(16)
        except OSError as exc:
            raise KdnasError(f"--table {self.path}: cannot read ({exc.strerror})") from None
        if header != b"SQLite format 3\x00":
            raise KdnasError(f"{self.path} is not a kdnas-deploy latency table (not an SQLite file)")
        # immutable first: SQLite neither locks nor journals, and creates no -wal/-shm beside the file. A table another
        # process is writing may read inconsistently that way, so a failure is retried as an ordinary reader.
        for options in ("mode=ro&immutable=1", "mode=ro"):
            try:
                probe = sqlite3.connect(f"file:{quote(str(self.path))}?{options}", uri=True)
                try:
                    names = {r[0] for r in probe.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                    app = probe.execute("SELECT value FROM meta WHERE key = 'app'").fetchone() if "meta" in names else None
                finally:
                    probe.close()
                break
            except sqlite3.DatabaseError as exc:
                error = exc
        else:
            raise KdnasError(f"latency table {self.path} is unreadable or damaged ({error})") from None
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
        # file is reported now, not as a confusing error in the middle of a search.
        if self._db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
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
        wins). Returns how many rows were added."""
        if rows.get("app") != APP_ID or int(rows.get("schema_version", 0)) != SCHEMA_VERSION:
            raise KdnasError("not an export of a kdnas-deploy latency table of this schema version")
        columns, fp = rows["columns"], rows["fingerprint"]
        at = columns.index("fingerprint")
        if any(row[at] != fp["id"] for row in rows["timings"]):
            raise KdnasError("latency table export mixes fingerprints")
        before = self.count()
        with self._write() as db:
            db.execute("INSERT OR IGNORE INTO fingerprints VALUES (?, ?, ?)",
                       (fp["id"], json.dumps(fp["info"], sort_keys=True), fp["created"]))
            db.executemany(f"INSERT OR IGNORE INTO timings ({', '.join(columns)}) VALUES "
                           f"({', '.join('?' * len(columns))})", rows["timings"])
        return self.count() - before

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
