"""The replay pool (every architecture near a hand-crafted budget, proxy-scored once) and the offline replay of
both strategies on it (`kdnas_deploy.search.replay`)."""

from __future__ import annotations

import json
import time
from typing import Any

from benchmarks.glue.common import Bench, Task, keep, log
from benchmarks.glue.searches import search_dir
from kdnas_deploy.model_folder import write_json_atomic


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
    from kdnas_deploy.data.sources import DataSource
    from kdnas_deploy.data.prepare import prepare
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
