#!/usr/bin/env python
"""Where should a latency band that runs dry send its slots? Mean regret per budget over seeds, on the strategy tests'
synthetic objective (tests/test_search_strategies.py), 32 candidates in batches of 4, for three rules:
- old: the dry band's slots go to the band just below it, outright (before the fix);
- per band: they are shared again among all the bands left, one weight each;
- weighted (shipped): the dry band's budget weight passes to the band below, and the slots are shared by weight.
Cases: two budgets a sliver apart above a small one (as the GLUE benchmark's table put its hand-crafted students),
and four budgets far apart (no band runs dry, and the three rules coincide).

    python tools/bench_dry_band.py [--seeds 30]     # about 10 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_search_strategies import SPACE, synthetic_latency, synthetic_score  # noqa: E402

from kdnas_deploy.search.reward import RewardConfig, reward  # noqa: E402
from kdnas_deploy.search.strategies import Observation, Proposal, _Base, budget_bands, make_strategy, share_slots  # noqa: E402


def _counts(strategy: _Base, history: Sequence[Observation]) -> list[int]:
    return [sum(1 for o in history if b.contains(strategy.latency(o.arch))) for b in strategy.bands]


def old_rule(self: _Base, k: int, history: Sequence[Observation]) -> list[Proposal]:
    seen = {o.arch for o in history}
    out: list[Proposal] = []
    for band, n in zip(self.bands, share_slots(k, _counts(self, history))):
        out += self._propose_in(n, history, seen, band)
    for band in reversed(self.bands):
        if len(out) >= k:
            break
        out += self._propose_in(k - len(out), history, seen, band)
    return out


def per_band_rule(self: _Base, k: int, history: Sequence[Observation]) -> list[Proposal]:
    seen = {o.arch for o in history}
    counts, out, live = _counts(self, history), [], list(range(len(self.bands)))
    while len(out) < k and live:
        for i, n in zip(list(live), share_slots(k - len(out), [counts[j] for j in live])):
            picks = self._propose_in(n, history, seen, self.bands[i])
            out += picks
            counts[i] += len(picks)
            if len(picks) < n:
                live.remove(i)
    return out


def regrets(name: str, budgets: list[float], seeds: int) -> np.ndarray:
    """Per seed and budget: the best true score within the budget minus the best a search of 32 found there."""
    latency = {a: synthetic_latency(a)["cpu"] for a in SPACE.enumerate()}
    best = [max(synthetic_score(a) for a in latency if latency[a] <= b) for b in budgets]
    rows = []
    for seed in range(seeds):
        config = RewardConfig({"cpu": 3.0})
        strategy = make_strategy(name, SPACE, config, synthetic_latency, seed, bands=budget_bands(budgets, "cpu"))
        history: list[Observation] = []
        while len(history) < 32:
            history += [Observation(p.arch, synthetic_score(p.arch), reward(synthetic_score(p.arch),
                                                                             synthetic_latency(p.arch), config))
                        for p in strategy.propose(4, history)]
        rows.append([top - max((o.score for o in history if latency[o.arch] <= b), default=0.0)  # type: ignore[type-var]
                     for b, top in zip(budgets, best)])
    return 100 * np.array(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--seeds", type=int, default=30)
    args = ap.parse_args()
    shapes = Counter(synthetic_latency(a)["cpu"] for a in SPACE.enumerate())  # the heads do not move it
    upper = min((ms for ms in shapes if 3.0 < ms < 6.0), key=lambda ms: (shapes[ms], ms))
    cases = {"sliver": [1.0, upper - 1e-9, upper], "four apart": [1.0, 3.0, 6.0, 12.0]}
    rules = {"old": old_rule, "per band": per_band_rule, "weighted": _Base.propose}
    print("| case | rule | strategy | mean regret per budget (points) | mean ± SE | worst budget |")
    print("|---|---|---|---|---|---|")
    for case, budgets in cases.items():
        for label, rule in rules.items():
            _Base.propose = rule  # type: ignore[method-assign]
            for name in ("kdnas", "random", "evolution"):
                r = regrets(name, budgets, args.seeds)
                se = r.mean(1).std(ddof=1) / np.sqrt(len(r))
                print(f"| {case} | {label} | {name} | {' / '.join(f'{x:.2f}' for x in r.mean(0))} | "
                      f"{r.mean():.2f} ± {se:.2f} | {r.mean(0).max():.2f} |", flush=True)


if __name__ == "__main__":
    main()
