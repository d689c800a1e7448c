"""Every student x seed distilled and exported (int8), and the latency sessions (`kdnas-deploy compare`'s function)
that run between the distillations once the seed-0 artifacts exist."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.glue.common import Bench, Task, keep, log
from benchmarks.glue.searches import picks
from kdnas_deploy.model_folder import write_json_atomic


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
