"""The teacher and the two searches (KD-NAS and random), each one `kdnas-deploy` command, resumable."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from benchmarks.glue.common import Bench, Task, backbone, keep


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
