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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from kdnas_deploy.errors import KdnasError
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


class Strategy(Protocol):
    name: str

    def propose(self, k: int, history: Sequence[Observation]) -> list[Proposal]: ...


class _Base:
    name = "base"

    def __init__(self, space: SearchSpace, config: RewardConfig, latency: LatencyFn, seed: int = 0, pool: int = 4096,
                 allowed: Allowed | None = None):
        self.space, self.config, self.latency = space, config, latency
        self.rng = np.random.default_rng(seed)
        self.pool_size = pool
        self.allowed = allowed

    def _feasible(self, arch: StudentArch) -> bool:
        if self.allowed is not None and not self.allowed(arch):
            return False
        return self.config.form != "hard" or within_target(self.latency(arch), self.config)

    def _candidates(self, seen: set[StudentArch]) -> list[StudentArch]:
        """Unseen feasible architectures: all of them when the space is small, else a fresh random pool."""
        archs = self.space.enumerate() if len(self.space) <= self.pool_size else self.space.sample(self.pool_size, self.rng)
        return [a for a in archs if a not in seen and self._feasible(a)]

    def _random(self, k: int, seen: set[StudentArch]) -> list[Proposal]:
        pool = self._candidates(seen)
        return [Proposal(pool[i]) for i in self.rng.permutation(len(pool))[:k]]


class RandomSearch(_Base):
    name = "random"

    def propose(self, k: int, history: Sequence[Observation]) -> list[Proposal]:
        return self._random(k, {o.arch for o in history})


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

    def propose(self, k: int, history: Sequence[Observation]) -> list[Proposal]:
        seen = {o.arch for o in history}
        scored = [o for o in history if o.reward is not None]
        if len(scored) < self.population:
            return self._random(k, seen)
        population = scored[-self.population:]  # oldest age out
        out: list[Proposal] = []
        for _ in range(k):
            child = None
            for _attempt in range(50):
                picks = self.rng.choice(len(population), size=min(self.tournament, len(population)), replace=False)
                parent = max((population[i] for i in picks), key=lambda o: o.reward)  # type: ignore[arg-type, return-value]
                candidate = self._mutate(parent.arch)
                if candidate in self.space and candidate not in seen and self._feasible(candidate):
                    child = candidate
                    break
            if child is None:  # a crowded neighbourhood: fall back to a fresh random architecture
                pool = self._candidates(seen)
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
        pool = self._candidates({o.arch for o in history})
        if not pool:
            return []
        if not self.fit(history):
            return self._space_filling(pool, k)
        assert self.gp is not None
        x_pool = self.space.encode(pool)
        factors = np.array([self._factor(a) for a in pool])
        x_obs, y_obs = self.gp.x, self.gp.y
        chosen: list[Proposal] = []
        gp = self.gp
        for _ in range(min(k, len(pool))):
            mean, std = gp.predict(x_pool)
            acquisition = (mean + self.kappa * std) * factors
            for p in chosen:
                acquisition[pool.index(p.arch)] = -np.inf
            i = int(acquisition.argmax())
            chosen.append(Proposal(pool[i], float(mean[i] * factors[i]), float(mean[i]), float(std[i])))
            # Kriging believer: pretend the pick scored its predicted mean, so the next pick looks elsewhere.
            x_obs = np.vstack([x_obs, x_pool[i]])
            y_obs = np.append(y_obs, mean[i])
            gp = _refit_same(gp, x_obs, y_obs)
        return chosen

    def _factor(self, arch: StudentArch) -> float:
        """reward(score) / score: exact, since the reward is linear in the score for a given latency."""
        value = reward(1.0, self.latency(arch), self.config)
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
                  allowed: Allowed | None = None) -> Strategy:
    """A strategy by name; `allowed` says which architectures a deployment accepts (size limits)."""
    classes = {"kdnas": KdnasController, "random": RandomSearch, "evolution": RegularizedEvolution}
    if name not in classes:
        raise KdnasError(f"unknown strategy {name!r}: use {', '.join(STRATEGIES)}")
    return classes[name](space, config, latency, seed=seed, allowed=allowed)
