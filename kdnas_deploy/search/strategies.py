"""Search strategies: each proposes the next batch of architectures to distil, given everything seen so far.

- `kdnas`: the controller. A Gaussian process predicts the proxy score of every architecture from its encoding;
  the latency part of the reward is exact (from the latency table). Candidates are ranked by the reward of an
  optimistic score (mean + kappa * std, upper confidence bound); a batch is kept diverse by conditioning the
  GP on each pick before choosing the next ("kriging believer"), so near-duplicates lose their exploration
  bonus. The first batch is space-filling (farthest-point sampling over the encodings).
- `random`: uniform over the unseen architectures.
- `evolution`: regularized evolution (Real et al., 2019): tournament selection from the most recent
  population, one-step mutation of one dimension, oldest members age out.
Every strategy skips architectures already distilled, those a deployment limit rules out (`allowed`: parameters,
artifact size), and, under a hard reward, those over the latency target (their latency is known before any
distillation).

With latency budgets (`bands`), one search serves several deployment limits: the budgets cut the latency axis
into bands, (previous budget, budget], and each episode's candidates are shared among the bands, most to the
band with the fewest candidates so far. Within a band a strategy runs as it would under a hard reward at the
band's budget (the controller ranks by optimistic score, evolution selects by score), so every budget gets
candidates near it instead of whatever a single reward target happens to favour. The controller's score model
is shared by all bands: what a 2-layer student teaches it about width also informs the 6-layer band.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from kdnas_deploy.util.errors import KdnasError
from kdnas_deploy.search.gp import GaussianProcess
from kdnas_deploy.search.reward import RewardConfig, reward, within_target
from kdnas_deploy.space import SearchSpace, StudentArch

LatencyFn = Callable[[StudentArch], Mapping[str, float]]
Allowed = Callable[[StudentArch], bool]
STRATEGIES = ("kdnas", "random", "evolution")


@dataclass(frozen=True)
class Observation:
    """A distilled candidate: its proxy score and measured reward (None if rejected or failed)."""

    arch: StudentArch
    score: float | None
    reward: float | None


@dataclass(frozen=True)
class Proposal:
    arch: StudentArch
    #: The controller's prediction before distillation (None for strategies that do not predict).
    predicted_reward: float | None = None
    predicted_score: float | None = None
    uncertainty: float | None = None


@dataclass(frozen=True)
class Band:
    """A latency budget's share of the search: architectures over `low_ms` and at most `high_ms` on `profile`."""

    profile: str
    low_ms: float
    high_ms: float

    def contains(self, latency_ms: Mapping[str, float]) -> bool:
        return self.low_ms < latency_ms[self.profile] <= self.high_ms

    @property
    def config(self) -> RewardConfig:
        """The reward a strategy optimises inside the band: the score, for anything within the budget."""
        return RewardConfig({self.profile: self.high_ms}, form="hard")


def budget_bands(budgets: Sequence[float], profile: str) -> list[Band]:
    """Bands that partition the latency axis at the budgets: (0, b1], (b1, b2], ..."""
    edges = sorted(set(budgets))
    if not edges or any(not b > 0 for b in edges):
        raise KdnasError(f"latency budgets must be positive milliseconds, got {list(budgets)}")
    return [Band(profile, low, high) for low, high in zip([0.0, *edges[:-1]], edges)]


def share_slots(k: int, counts: Sequence[int], weights: Sequence[float] | None = None) -> list[int]:
    """`k` new candidates shared among bands that hold `counts` already: each to the band with the fewest so far
    per unit of `weight` (the budgets it searches for; 1 each by default), ties to the larger budget, listed last,
    whose students are the costliest to get wrong."""
    have, out = list(counts), [0] * len(counts)
    w = list(weights) if weights is not None else [1.0] * len(counts)
    for _ in range(k):
        i = min(range(len(have)), key=lambda j: (have[j] / w[j], -j))
        have[i] += 1
        out[i] += 1
    return out


class Strategy(Protocol):
    name: str

    def propose(self, k: int, history: Sequence[Observation]) -> list[Proposal]: ...


class _Base:
    name = "base"

    def __init__(self, space: SearchSpace, config: RewardConfig, latency: LatencyFn, seed: int = 0, pool: int = 4096,
                 allowed: Allowed | None = None, bands: Sequence[Band] = ()):
        self.space, self.config, self.latency = space, config, latency
        self.rng = np.random.default_rng(seed)
        self.pool_size = pool
        self.allowed = allowed
        self.bands = list(bands)

    def _feasible(self, arch: StudentArch, band: Band | None = None) -> bool:
        if self.allowed is not None and not self.allowed(arch):
            return False
        if band is not None:
            return band.contains(self.latency(arch))
        return self.config.form != "hard" or within_target(self.latency(arch), self.config)

    def _candidates(self, seen: set[StudentArch], band: Band | None = None) -> list[StudentArch]:
        """Unseen feasible architectures: all of them when the space is small, else a fresh random pool."""
        archs = self.space.enumerate() if len(self.space) <= self.pool_size else self.space.sample(self.pool_size, self.rng)
        return [a for a in archs if a not in seen and self._feasible(a, band)]

    def _random(self, k: int, seen: set[StudentArch], band: Band | None = None) -> list[Proposal]:
        pool = self._candidates(seen, band)
        return [Proposal(pool[i]) for i in self.rng.permutation(len(pool))[:k]]

    def _reward(self, o: Observation, band: Band | None) -> float | None:
        """An observation's reward as the strategy should see it: inside a band, the band's hard reward."""
        if band is None or o.score is None:
            return o.reward
        return reward(o.score, self.latency(o.arch), band.config)

    def propose(self, k: int, history: Sequence[Observation]) -> list[Proposal]:
        seen = {o.arch for o in history}
        if not self.bands:
            return self._propose(k, history, seen, None)
        counts = [sum(1 for o in history if b.contains(self.latency(o.arch))) for b in self.bands]
        weights = [1.0] * len(self.bands)
        out: list[Proposal] = []
        live = list(range(len(self.bands)))
        # A band that runs dry (two budgets a hair apart leave the larger one a sliver) passes its budget's weight to
        # the nearest band below it, where the finals will find that budget's pick, and the slots left are shared
        # again. Handing a dry band's slots to its neighbour outright starved every other budget.
        while len(out) < k and live:
            for i, n in zip(list(live), share_slots(k - len(out), [counts[j] for j in live], [weights[j] for j in live])):
                picks = self._propose_in(n, history, seen, self.bands[i])
                out += picks
                counts[i] += len(picks)
                if len(picks) < n:
                    live.remove(i)
                    below = [j for j in live if j < i]
                    if below:
                        weights[below[-1]] += weights[i]
        return out

    def _propose_in(self, n: int, history: Sequence[Observation], seen: set[StudentArch], band: Band) -> list[Proposal]:
        picks = self._propose(n, history, seen, band) if n > 0 else []
        seen.update(p.arch for p in picks)
        return picks

    def _propose(self, k: int, history: Sequence[Observation], seen: set[StudentArch], band: Band | None) -> list[Proposal]:
        raise NotImplementedError


class RandomSearch(_Base):
    name = "random"

    def _propose(self, k: int, history: Sequence[Observation], seen: set[StudentArch], band: Band | None) -> list[Proposal]:
        return self._random(k, seen, band)


class RegularizedEvolution(_Base):
    name = "evolution"

    def __init__(self, *args, population: int = 16, tournament: int = 4, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.population, self.tournament = population, tournament

    def _mutate(self, arch: StudentArch) -> StudentArch:
        """One dimension moved one step to a neighbouring allowed value (the parent itself if that is invalid)."""
        s = self.space
        ratio = min(s.ffn_ratios, key=lambda r: abs(r - arch.ffn / arch.hidden))  # ratios may be fractional (1.5)
        current = {"layers": arch.layers, "hidden": arch.hidden, "heads": arch.heads, "ratio": ratio}
        allowed = {"layers": s.layers, "hidden": s.hidden, "heads": s.heads, "ratio": s.ffn_ratios}
        name = list(current)[self.rng.integers(len(current))]
        values = sorted(allowed[name])
        i = values.index(current[name]) if current[name] in values else 0
        step = int(self.rng.choice([-1, 1]))
        current[name] = values[min(max(i + step, 0), len(values) - 1)]
        if current["hidden"] % current["heads"]:
            return arch
        return StudentArch(current["layers"], current["hidden"], current["heads"], s.ffn_size(current["hidden"], current["ratio"]))

    def _propose(self, k: int, history: Sequence[Observation], seen: set[StudentArch], band: Band | None) -> list[Proposal]:
        seen = set(seen)
        scored = [(o, r) for o in history if (r := self._reward(o, band)) is not None]
        if len(scored) < self.population:
            return self._random(k, seen, band)
        population = scored[-self.population:]  # oldest age out
        out: list[Proposal] = []
        for _ in range(k):
            child = None
            for _attempt in range(50):
                picks = self.rng.choice(len(population), size=min(self.tournament, len(population)), replace=False)
                parent = max((population[i] for i in picks), key=lambda pair: pair[1])[0]
                candidate = self._mutate(parent.arch)
                if candidate in self.space and candidate not in seen and self._feasible(candidate, band):
                    child = candidate
                    break
            if child is None:  # a crowded neighbourhood: fall back to a fresh random architecture
                pool = self._candidates(seen, band)
                if not pool:
                    break
                child = pool[int(self.rng.integers(len(pool)))]
            seen.add(child)
            out.append(Proposal(child))
        return out


class KdnasController(_Base):
    name = "kdnas"

    def __init__(self, *args, kappa: float = 1.0, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.kappa = kappa
        self.gp: GaussianProcess | None = None

    def fit(self, history: Sequence[Observation]) -> bool:
        """Refits the predictor on every candidate with a score; False while there are too few."""
        scored = [o for o in history if o.score is not None]
        if len(scored) < 3:
            self.gp = None
            return False
        x = self.space.encode([o.arch for o in scored])
        self.gp = GaussianProcess().fit(x, np.array([o.score for o in scored]))
        return True

    def predict(self, archs: Sequence[StudentArch]) -> list[Proposal]:
        """Predicted score, its uncertainty and the predicted reward of each architecture."""
        if self.gp is None:
            raise KdnasError("the controller has not been fitted yet")
        mean, std = self.gp.predict(self.space.encode(list(archs)))
        return [Proposal(a, reward(float(m), self.latency(a), self.config), float(m), float(s))
                for a, m, s in zip(archs, mean, std)]

    def _space_filling(self, pool: list[StudentArch], k: int) -> list[Proposal]:
        x = self.space.encode(pool)
        chosen = [int(self.rng.integers(len(pool)))]
        dist = np.linalg.norm(x - x[chosen[0]], axis=1)
        while len(chosen) < min(k, len(pool)):
            nxt = int(dist.argmax())
            chosen.append(nxt)
            dist = np.minimum(dist, np.linalg.norm(x - x[nxt], axis=1))
        return [Proposal(pool[i]) for i in chosen]

    def propose(self, k: int, history: Sequence[Observation]) -> list[Proposal]:
        self.fit(history)  # once per episode: every band's picks come from the same score model
        return super().propose(k, history)

    def _propose(self, k: int, history: Sequence[Observation], seen: set[StudentArch], band: Band | None) -> list[Proposal]:
        pool = self._candidates(seen, band)
        if not pool:
            return []
        if self.gp is None:  # too few scores to fit yet
            return self._space_filling(pool, k)
        x_pool = self.space.encode(pool)
        factors = np.array([self._factor(a, band) for a in pool])
        x_obs, y_obs = self.gp.x, self.gp.y
        chosen: list[Proposal] = []
        gp = self.gp
        for _ in range(min(k, len(pool))):
            mean, std = gp.predict(x_pool)
            acquisition = (mean + self.kappa * std) * factors
            for p in chosen:
                acquisition[pool.index(p.arch)] = -np.inf
            i = int(acquisition.argmax())
            # The predicted reward is the journal's (the run's reward config), whatever band chose the pick.
            chosen.append(Proposal(pool[i], reward(float(mean[i]), self.latency(pool[i]), self.config), float(mean[i]), float(std[i])))
            # Kriging believer: pretend the pick scored its predicted mean, so the next pick looks elsewhere.
            x_obs = np.vstack([x_obs, x_pool[i]])
            y_obs = np.append(y_obs, mean[i])
            gp = _refit_same(gp, x_obs, y_obs)
        return chosen

    def _factor(self, arch: StudentArch, band: Band | None = None) -> float:
        """reward(score) / score: exact, since the reward is linear in the score for a given latency."""
        value = reward(1.0, self.latency(arch), band.config if band else self.config)
        return 0.0 if value is None else value


def _refit_same(gp: GaussianProcess, x: np.ndarray, y: np.ndarray) -> GaussianProcess:
    """The GP conditioned on more points, with the fitted hyper-parameters kept."""
    new = GaussianProcess()
    new.mu, new.sigma, new.lengthscale, new.noise = gp.mu, gp.sigma, gp.lengthscale, gp.noise
    solved = GaussianProcess._solve(x, (y - gp.mu) / gp.sigma, gp.lengthscale, gp.noise)
    if solved is None:
        return gp
    new.chol, new.alpha, _ = solved
    new.x, new.y = x, y
    return new


def make_strategy(name: str, space: SearchSpace, config: RewardConfig, latency: LatencyFn, seed: int = 0,
                  allowed: Allowed | None = None, bands: Sequence[Band] = ()) -> Strategy:
    """A strategy by name; `allowed` says which architectures a deployment accepts (size limits), `bands` which
    latency budgets share each episode's candidates."""
    classes = {"kdnas": KdnasController, "random": RandomSearch, "evolution": RegularizedEvolution}
    if name not in classes:
        raise KdnasError(f"unknown strategy {name!r}: use {', '.join(STRATEGIES)}")
    return classes[name](space, config, latency, seed=seed, allowed=allowed, bands=bands)
