"""The search journal: one SQLite row per candidate, written the moment its state changes.

A candidate is written as `pending` with the controller's prediction before it is distilled, then turned
`done` (score, reward, metrics, wall time) or `failed` (the error) in one transaction. A killed search loses
at most the candidates that were in flight; `--resume` re-runs exactly those.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdnas_deploy.util.errors import KdnasError
from kdnas_deploy.space import StudentArch

APP_ID = "kdnas-deploy search journal"
JOURNAL_FILE = "journal.sqlite"  # its name in a search run folder
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS candidates (
    arch TEXT PRIMARY KEY,
    episode INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'done', 'failed')),
    predicted_reward REAL, predicted_score REAL, uncertainty REAL,
    latency TEXT NOT NULL,
    score REAL, reward REAL, metrics TEXT,
    wall_s REAL, error TEXT,
    created REAL NOT NULL, finished REAL
);
CREATE TABLE IF NOT EXISTS rungs (
    arch TEXT NOT NULL,
    rung TEXT NOT NULL,
    score REAL, metrics TEXT, wall_s REAL, error TEXT,
    finished REAL NOT NULL,
    PRIMARY KEY (arch, rung)
);
"""


@dataclass(frozen=True)
class Candidate:
    arch: StudentArch
    episode: int
    status: str
    latency: dict[str, float]
    predicted_reward: float | None = None
    predicted_score: float | None = None
    uncertainty: float | None = None
    score: float | None = None
    reward: float | None = None
    metrics: dict[str, Any] | None = None
    wall_s: float | None = None
    error: str | None = None


class Journal:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(_SCHEMA)
            # The same meta keys as the latency table, so one file can never pass for the other.
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('app', ?)", (APP_ID,))
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            meta = dict(self.db.execute("SELECT key, value FROM meta"))
        except sqlite3.DatabaseError as exc:
            raise KdnasError(f"{self.path}: not a usable search journal ({exc})") from None
        if meta["app"] != APP_ID:
            raise KdnasError(f"{self.path}: not a usable search journal (it is a {meta['app']})")
        if int(meta["schema_version"]) > SCHEMA_VERSION:
            raise KdnasError(f"{self.path} was written by a newer kdnas-deploy (journal schema {meta['schema_version']})")

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    def add_pending(self, arch: StudentArch, episode: int, latency: dict[str, float], predicted_reward: float | None = None,
                    predicted_score: float | None = None, uncertainty: float | None = None) -> None:
        """Records a candidate before distillation (replacing a pending row left by a killed run)."""
        with self.db:
            existing = self.db.execute("SELECT status FROM candidates WHERE arch=?", (str(arch),)).fetchone()
            if existing and existing[0] != "pending":
                raise KdnasError(f"{arch} is already in the journal as {existing[0]}")
            self.db.execute(
                "INSERT OR REPLACE INTO candidates (arch, episode, status, predicted_reward, predicted_score, uncertainty,"
                " latency, created) VALUES (?, ?, 'pending', ?, ?, ?, ?, ?)",
                (str(arch), episode, predicted_reward, predicted_score, uncertainty, json.dumps(latency), time.time()))

    def finish(self, arch: StudentArch, score: float, reward: float | None, metrics: dict[str, Any], wall_s: float) -> None:
        with self.db:
            self.db.execute("UPDATE candidates SET status='done', score=?, reward=?, metrics=?, wall_s=?, finished=? WHERE arch=?",
                            (score, reward, json.dumps(metrics), wall_s, time.time(), str(arch)))

    def fail(self, arch: StudentArch, error: str, wall_s: float) -> None:
        with self.db:
            self.db.execute("UPDATE candidates SET status='failed', error=?, wall_s=?, finished=? WHERE arch=?",
                            (error, wall_s, time.time(), str(arch)))

    def candidates(self, status: str | None = None) -> list[Candidate]:
        query = "SELECT arch, episode, status, latency, predicted_reward, predicted_score, uncertainty, score, reward," \
                " metrics, wall_s, error FROM candidates"
        rows = self.db.execute(query + (" WHERE status=?" if status else "") + " ORDER BY episode, created",
                               (status,) if status else ()).fetchall()
        return [Candidate(StudentArch.parse(r[0]), r[1], r[2], json.loads(r[3]), r[4], r[5], r[6], r[7], r[8],
                          json.loads(r[9]) if r[9] else None, r[10], r[11]) for r in rows]

    def record_rung(self, arch: StudentArch, rung: str, score: float | None, metrics: dict[str, Any], wall_s: float,
                    error: str | None = None) -> None:
        """A successive-halving rung's result for `arch` (`rung` names its rows, held-out slice and recipe)."""
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO rungs VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (str(arch), rung, score, json.dumps(metrics), wall_s, error, time.time()))

    def rung_results(self, rung: str) -> dict[StudentArch, tuple[float | None, dict[str, Any], str | None]]:
        """Every recorded result of one rung: {arch: (score or None, metrics, error)}."""
        rows = self.db.execute("SELECT arch, score, metrics, error FROM rungs WHERE rung=?", (rung,)).fetchall()
        return {StudentArch.parse(r[0]): (r[1], json.loads(r[2]) if r[2] else {}, r[3]) for r in rows}

    def last_episode(self) -> int:
        """The highest episode with every candidate finished (0 when none)."""
        rows = self.db.execute("SELECT episode, SUM(status='pending') FROM candidates GROUP BY episode ORDER BY episode").fetchall()
        done = 0
        for episode, pending in rows:
            if pending:
                break
            done = episode
        return done
