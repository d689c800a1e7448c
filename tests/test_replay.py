"""Offline replay: strategies proposing from a scored pool, confined to a band, answered from the record."""

from __future__ import annotations

import pytest

from kdnas_deploy.search.replay import mean_difference_interval, replay_search
from kdnas_deploy.search.strategies import Band
from kdnas_deploy.space import SearchSpace

SPACE = SearchSpace(layers=(1, 2, 3, 4), hidden=(64, 128, 256), heads=(2, 4), ffn_ratios=(1, 2, 3, 4))


def latency(arch):
    return {"cpu": arch.layers * arch.hidden * (1 + arch.ffn / arch.hidden) / 100}


def test_replay_proposes_only_from_the_band_pool_and_scores_from_the_record():
    band = Band("cpu", 4.0, 9.0)
    pool = {a: 0.5 + 0.001 * a.layers * a.hidden / 8 + 0.0001 * a.ffn / a.hidden for a in SPACE if band.contains(latency(a))}
    assert 8 < len(pool) < len(SPACE)
    for strategy in ("kdnas", "random"):
        out = replay_search(strategy, SPACE, band, pool, latency, candidates=8, top_k=4, seed=3)
        assert len(out.proposed) == 8 == len(set(out.proposed))
        assert {str(a) for a in pool} >= set(out.proposed)
        assert out.best_score == max(pool[a] for a in pool if str(a) in out.proposed)
        assert out.regret == pytest.approx(max(pool.values()) - out.best_score)
    # Asked for more than the pool holds: it stops when the pool is exhausted, and then finds the best.
    everything = replay_search("random", SPACE, band, pool, latency, candidates=len(pool) + 5, seed=0)
    assert len(everything.proposed) == len(pool) and everything.regret == 0
    # Seeded: the same seed replays the same search.
    assert replay_search("kdnas", SPACE, band, pool, latency, 8, seed=1) == replay_search("kdnas", SPACE, band, pool, latency, 8, seed=1)


def test_mean_difference_interval_brackets_the_difference():
    diff, lo, hi = mean_difference_interval([1.0, 2.0, 3.0, 2.0], [0.0, 1.0, 0.5, 0.5])
    assert diff == pytest.approx(1.5) and lo < diff < hi and lo > 0
