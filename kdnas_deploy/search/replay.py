"""Search strategies replayed offline on recorded proxy scores: their outcomes as distributions, not one pick.

One search is one draw: whether KD-NAS beat random search in a run says little when the two picks' rewards tie
within the proxy's noise. Once every architecture of a band has been proxy-scored (a "pool"), a strategy can be run
again without distilling anything: it proposes from the pool, and its proposals' recorded scores are what it sees.
Hundreds of seeded replays per strategy at each candidate count give the distribution of the best score it finds,
and its regret against the pool's best.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from kdnas_deploy.search.reward import reward
from kdnas_deploy.search.strategies import Band, Observation, make_strategy
from kdnas_deploy.space import SearchSpace, StudentArch


@dataclass(frozen=True)
class ReplayOutcome:
    strategy: str
    candidates: int
    seed: int
    proposed: tuple[str, ...]
    best_score: float
    regret: float  # the pool's best score minus the best found


def replay_search(strategy: str, space: SearchSpace, band: Band, scores: Mapping[StudentArch, float],
                  latency: Callable[[StudentArch], Mapping[str, float]], candidates: int, top_k: int = 4,
                  seed: int = 0) -> ReplayOutcome:
    """One search of `candidates` candidates in episodes of `top_k`, confined to the band's pool (`scores`: every
    in-band architecture's recorded proxy score), each proposal answered from the record."""
    pool = set(scores)
    algo = make_strategy(strategy, space, band.config, latency, seed, allowed=pool.__contains__, bands=[band])
    history: list[Observation] = []
    while len(history) < candidates:
        proposals = algo.propose(min(top_k, candidates - len(history)), history)
        if not proposals:
            break  # the pool is exhausted
        for p in proposals:
            score = scores[p.arch]
            history.append(Observation(p.arch, score, reward(score, latency(p.arch), band.config)))
    best = max(o.score for o in history if o.score is not None)
    return ReplayOutcome(strategy, candidates, seed, tuple(str(o.arch) for o in history), best,
                         max(scores.values()) - best)


def mean_difference_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95, n: int = 5000,
                             seed: int = 0) -> tuple[float, float, float]:
    """mean(a) - mean(b) with a percentile bootstrap interval (`scipy.stats.bootstrap`, independent resamples of
    each side)."""
    from scipy.stats import bootstrap

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if np.ptp(x) == 0 and np.ptp(y) == 0:  # no spread to resample: the interval is the difference itself
        return float(x.mean() - y.mean()), float(x.mean() - y.mean()), float(x.mean() - y.mean())
    res = bootstrap((x, y), lambda u, v, axis=-1: u.mean(axis=axis) - v.mean(axis=axis), n_resamples=n,
                    confidence_level=confidence, method="percentile", random_state=np.random.default_rng(seed))
    return float(x.mean() - y.mean()), float(res.confidence_interval.low), float(res.confidence_interval.high)
