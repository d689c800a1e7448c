"""What every stage of the GLUE benchmark shares: the plan, the work folder, the record, one command runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdnas_deploy.util.paths import glue_dir, minilm_backbone

REPO = Path(__file__).resolve().parent.parent.parent
PLAN = REPO / "benchmarks" / "glue" / "plan.toml"
RECORD = REPO / "benchmarks" / "glue" / "record"
STAGES = ("teacher", "search", "pool", "replay", "finals", "report")
TABLE = "latency.sqlite"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def load_plan(path: Path = PLAN) -> dict[str, Any]:
    with path.open("rb") as f:
        return tomllib.load(f)


def plan_commits(path: Path = PLAN) -> list[str]:
    """The commits that touched the plan, oldest first: the page names them, so a reader can check that every one
    predates the results."""
    out = subprocess.run(["git", "log", "--format=%h", "--", str(path)], cwd=REPO, capture_output=True, text=True)
    return list(reversed(out.stdout.split())) if out.returncode == 0 else []


@dataclass
class Task:
    name: str
    cfg: dict[str, Any]
    work: Path

    @property
    def out(self) -> Path:
        return self.work / self.name

    @property
    def data_dir(self) -> Path:
        return glue_dir() / self.cfg["folder"]

    @property
    def teacher(self) -> Path:
        return self.out / "teacher"

    record_root: Path = RECORD

    @property
    def record(self) -> Path:
        return self.record_root / self.name


class Bench:
    def __init__(self, work: Path, plan: dict[str, Any]):
        self.work, self.plan = work, plan
        (work / "logs").mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "KDNAS_CACHE_DIR": str((work / "cache").resolve()), "HF_HUB_OFFLINE": "1"}

    @property
    def table(self) -> Path:
        return self.work / TABLE

    def cli(self, name: str, args: list[str]) -> None:
        """One `kdnas-deploy` command, its output in WORK/logs/NAME.log; a failure stops the run (resume later)."""
        path = self.work / "logs" / f"{name}.log"
        log(f"{name}: kdnas-deploy {' '.join(args[:1])} ... (log {path})")
        tic = time.monotonic()
        with path.open("a") as f:
            f.write(f"\n$ kdnas-deploy {' '.join(args)}\n")
            f.flush()
            code = subprocess.run([sys.executable, "-m", "kdnas_deploy.cli", *args], stdout=f, stderr=f, env=self.env).returncode
        if code != 0:
            sys.exit(f"{name} failed with status {code}; see {path}")
        log(f"{name}: done in {(time.monotonic() - tic) / 60:.1f} min")


def keep(task: Task, name: str, source: Path) -> None:
    """Copies a small finished result into the record."""
    target = task.record / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def restore(task: Task) -> None:
    """Recorded results missing from the work folder are copied back (never over newer work)."""
    if not task.record.is_dir():
        return
    for path in task.record.rglob("*.json"):
        target = task.out / path.relative_to(task.record)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


def check_profiles(bench: Bench, task: Task) -> None:
    """The plan names profiles, and what a name means can change between versions (a profile file edited). A run
    goes on only with the definitions its searches used: otherwise it stops with one line naming the commit to run
    from."""
    import json

    from kdnas_deploy.hardware import load_profile

    names = {bench.plan["search"]["hw"], bench.plan["rules"]["latency"]["profile"]}
    for strategy in ("kdnas", "random"):
        run = task.out / f"search-{strategy}" / "run.json"
        if not run.is_file():
            continue
        recorded = json.loads(run.read_text(encoding="utf-8")).get("profiles", {})
        for name in names:
            if name in recorded and recorded[name]["content_hash"] != load_profile(name).content_hash():
                sys.exit(f"{task.name}: profile {name} is not the definition this run's searches timed (hash "
                         f"{recorded[name]['content_hash']}, this checkout {load_profile(name).content_hash()}): "
                         f"go on from the commit the run started at ({PINNED_COMMIT}: git worktree add ../bench-tree "
                         f"{PINNED_COMMIT})")


#: The commit the MNLI run of the plan went on from after its random search stopped (`cpu-int8`: dynamic int8,
#: hash 0c9dead907523368).
PINNED_COMMIT = "7468ab4"


# ---------------------------------------------------------------- teacher and searches

def backbone() -> str:
    try:
        return str(minilm_backbone())
    except LookupError as e:
        sys.exit(str(e))
