"""Does the KD-NAS controller find better students with fewer distillations than random search or evolution?

Two steps, so that the expensive part is done once and the comparison can be repeated over many seeds:

1. `record`: a real `kdnas-deploy search` that distils *every* architecture of a small space on the proxy set
   (`--strategy random` until the space is exhausted), with a real teacher and latencies from the real table.
   Its journal holds one real proxy score per architecture, with the noise a proxy score has.
2. `compare`: replays the three strategies over those recorded results: the same episode loop, journal and
   reward as a real search, but evaluating a candidate looks its score up instead of distilling it. With more
   than one recorded journal (other seeds), each evaluation draws one of the recorded scores at random.
   For each seed and strategy: best reward found after 8, 16 and 32 evaluations (batches of 4).
3. `budgets`: the same replay for a search with several latency budgets (`--budgets`), each strategy with the
   budgets' bands sharing every episode (what `kdnas-deploy search --budgets` does) and without them (one reward
   target, the student per budget picked afterwards). Per budget: regret, the best mean proxy score within the
   budget minus the mean score of the candidate a user would ship (the best measured one within it).

    python tools/bench_search.py record --teacher bench-distill/teacher --out bench-out/search/record
    python tools/bench_search.py compare bench-out/search/record --seeds 20
    python tools/bench_search.py budgets bench-out/search/record --seeds 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SPACE = HERE / "spaces" / "bench-search.toml"
CHECKPOINTS = (8, 16, 32)


def record(args: argparse.Namespace) -> None:
    from kdnas_deploy.space import SearchSpace

    size = len(SearchSpace.resolve(str(SPACE), None))
    episodes = -(-size // args.top_k)
    cmd = [sys.executable, "-m", "kdnas_deploy.cli", "search", "--teacher", args.teacher, "--out", str(args.out),
           "--space", str(SPACE), "--hw", args.hw, "--strategy", "random", "--episodes", str(episodes),
           "--top-k", str(args.top_k), "--proxy", str(args.proxy), "--held-out", str(args.held_out),
           "--proxy-epochs", str(args.proxy_epochs), "--max-length", str(args.max_length), "--seed", str(args.seed),
           "--no-final"]
    if (args.out / "run.json").exists():
        cmd.append("--resume")
    print(" ".join(cmd), flush=True)
    tic = time.time()
    subprocess.run(cmd, check=True)
    print(f"recorded {size} architectures in {(time.time() - tic) / 60:.1f} min", flush=True)


def _recorded(run_dirs: list[Path]) -> tuple[dict, dict, object, object]:
    from kdnas_deploy.search.journal import Journal
    from kdnas_deploy.search.reward import RewardConfig
    from kdnas_deploy.space import SearchSpace

    scores: dict = defaultdict(list)
    latency: dict = {}
    config = space = None
    for run in run_dirs:
        report = json.loads((run / "report.json").read_text())
        settings = json.loads((run / "run.json").read_text())
        r = report["reward"]
        config = RewardConfig(r["targets_ms"], form=r["form"], alpha=r["alpha"], beta=r["beta"])
        space = SearchSpace.from_dict(settings["space"], name="recorded")
        with Journal(run / "journal.sqlite") as journal:
            for c in journal.candidates("done"):
                scores[c.arch].append(float(c.score))
                latency[c.arch] = dict(c.latency)
    return scores, latency, config, space


def compare(args: argparse.Namespace) -> None:
    from kdnas_deploy.search.reward import reward
    from kdnas_deploy.search.strategies import STRATEGIES

    scores, latency, config, space = _recorded(args.runs)
    pool = set(scores)
    print(f"{len(pool)} recorded architectures of a {len(space)}-architecture space, "  # type: ignore[arg-type]
          f"{sum(map(len, scores.values()))} recorded proxy scores; reward {config}", flush=True)
    rewards_mean = {a: float(np.mean([reward(s, latency[a], config) for s in v])) for a, v in scores.items()}
    ranked = sorted(rewards_mean.values(), reverse=True)
    best_possible = ranked[0]
    results: dict[str, dict[int, list[float]]] = {s: {n: [] for n in CHECKPOINTS} for s in STRATEGIES}
    ranks: dict[str, list[int]] = {s: [] for s in STRATEGIES}
    tic = time.time()
    for seed in range(args.seeds):
        for name in STRATEGIES:
            done = _replay(name, space, config, latency, scores, seed, args.top_k, max(CHECKPOINTS))
            # What a user would ship: the architecture with the best *measured* reward, scored by its mean reward.
            for n in CHECKPOINTS:
                seen = [c for c in done[:n] if c.reward is not None]
                pick = max(seen, key=lambda c: c.reward)
                results[name][n].append(rewards_mean[pick.arch])
            ranks[name].append(ranked.index(rewards_mean[max(done, key=lambda c: c.reward or -1).arch]) + 1)
        print(f"seed {seed}: " + ", ".join(f"{s} {results[s][32][-1]:.4f}" for s in STRATEGIES), flush=True)
    summary = {
        "architectures": len(pool), "seeds": args.seeds, "batch": args.top_k, "best_possible_reward": best_possible,
        "top5_rewards": ranked[:5], "wall_s": round(time.time() - tic, 1),
        "strategies": {s: {str(n): {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                                    "median": float(np.median(v)),
                                    "hit_rate": float(np.mean([x >= best_possible - 1e-12 for x in v]))}
                           for n, v in results[s].items()} | {"median_rank_at_32": statistics.median(ranks[s])}
                       for s in STRATEGIES},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_search.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"{len(pool)} architectures, {args.seeds} seeds, batches of {args.top_k}; best reward in the space "
             f"{best_possible:.4f}. Cells: mean best reward (sd) / share of seeds that found the best.", "",
             "| strategy | " + " | ".join(f"after {n}" for n in CHECKPOINTS) + " | median rank of pick at 32 |",
             "|---|" + "---|" * (len(CHECKPOINTS) + 1)]
    for s in STRATEGIES:
        row = summary["strategies"][s]
        lines.append(f"| {s} | " + " | ".join(f"{row[str(n)]['mean']:.4f} ({row[str(n)]['sd']:.4f}) / {row[str(n)]['hit_rate']:.0%}"
                                              for n in CHECKPOINTS) + f" | {row['median_rank_at_32']} |")
    (args.out / "bench_search.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _replay(name: str, space, config, latency: dict, scores: dict, seed: int, top_k: int, n: int, bands=()) -> list:
    from kdnas_deploy.search.episodes import run_episodes
    from kdnas_deploy.search.journal import Journal
    from kdnas_deploy.search.strategies import make_strategy

    rng = np.random.default_rng(1000 + seed)

    def evaluate(arch):
        recorded = scores[arch]
        return recorded[int(rng.integers(len(recorded)))], {}

    strategy = make_strategy(name, space, config, lambda a: latency[a], seed=seed, allowed=lambda a: a in scores,
                             bands=bands)
    with tempfile.TemporaryDirectory() as tmp, Journal(Path(tmp) / "j.sqlite") as journal:
        return run_episodes(strategy, journal, evaluate, lambda a: latency[a], config, episodes=n // top_k, top_k=top_k)


def compare_budgets(args: argparse.Namespace) -> None:
    from kdnas_deploy.search.strategies import STRATEGIES, budget_bands

    scores, latency, config, space = _recorded(args.runs)
    profile = next(iter(config.targets))  # type: ignore[union-attr]
    ms = sorted(latency[a][profile] for a in scores)
    budgets = args.budgets or [float(np.percentile(ms, q)) for q in (25, 50, 75, 100)]
    mean = {a: float(np.mean(v)) for a, v in scores.items()}
    best = [max(mean[a] for a in scores if latency[a][profile] <= b) for b in budgets]
    regret: dict[tuple[str, bool], list[list[float]]] = defaultdict(list)
    tic = time.time()
    for seed in range(args.seeds):
        for name in STRATEGIES:
            for banded in (False, True):
                done = _replay(name, space, config, latency, scores, seed, args.top_k, args.candidates,
                               budget_bands(budgets, profile) if banded else ())
                row = []
                for b, top in zip(budgets, best):
                    within = [c for c in done if c.score is not None and c.latency[profile] <= b]
                    row.append(top - (mean[max(within, key=lambda c: c.score).arch] if within else 0.0))
                regret[(name, banded)].append(row)
        print(f"seed {seed} done", flush=True)
    lines = [f"{len(scores)} architectures, {args.seeds} seeds, {args.candidates} candidates in batches of {args.top_k}; "
             f"budgets {', '.join(f'{b:.2f}' for b in budgets)} ms on {profile}. Cells: mean regret in proxy-score points "
             "(best mean score within the budget minus that of the pick), and the share of seeds with no regret.", "",
             "| strategy | bands | " + " | ".join(f"{b:.2f} ms" for b in budgets) + " | mean |",
             "|---|---|" + "---|" * (len(budgets) + 1)]
    summary = {"budgets_ms": budgets, "seeds": args.seeds, "candidates": args.candidates, "wall_s": 0.0, "regret": {}}
    for (name, banded), rows in regret.items():
        r = np.array(rows) * 100
        summary["regret"][f"{name}{'-bands' if banded else ''}"] = {"mean": r.mean(0).tolist(), "zero": (r <= 1e-9).mean(0).tolist()}
        lines.append(f"| {name} | {'yes' if banded else 'no'} | "
                     + " | ".join(f"{m:.2f} / {z:.0%}" for m, z in zip(r.mean(0), (r <= 1e-9).mean(0))) + f" | {r.mean():.2f} |")
    summary["wall_s"] = round(time.time() - tic, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_search_budgets.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "bench_search_budgets.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="distil every architecture of the bench space with a real search")
    rec.add_argument("--teacher", required=True)
    rec.add_argument("--out", type=Path, required=True)
    rec.add_argument("--hw", default="cpu-int8")
    rec.add_argument("--top-k", type=int, default=4)
    rec.add_argument("--proxy", type=int, default=600)
    rec.add_argument("--held-out", type=int, default=500)
    rec.add_argument("--proxy-epochs", type=int, default=2)
    rec.add_argument("--max-length", type=int, default=64)
    rec.add_argument("--seed", type=int, default=0)
    rec.set_defaults(run=record)
    cmp_ = sub.add_parser("compare", help="replay the strategies over recorded runs")
    cmp_.add_argument("runs", type=Path, nargs="+", help="search run directories recorded with `record`")
    cmp_.add_argument("--seeds", type=int, default=20)
    cmp_.add_argument("--top-k", type=int, default=4)
    cmp_.add_argument("--out", type=Path, default=Path("bench-out/search"))
    cmp_.set_defaults(run=compare)
    bud = sub.add_parser("budgets", help="replay searches with several latency budgets, with and without bands")
    bud.add_argument("runs", type=Path, nargs="+", help="search run directories recorded with `record`")
    bud.add_argument("--budgets", type=lambda t: [float(v) for v in t.split(",")], default=None,
                     help="ms on the recorded profile (default: the recorded latencies' quartiles and maximum)")
    bud.add_argument("--seeds", type=int, default=20)
    bud.add_argument("--candidates", type=int, default=32)
    bud.add_argument("--top-k", type=int, default=4)
    bud.add_argument("--out", type=Path, default=Path("bench-out/search"))
    bud.set_defaults(run=compare_budgets)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
