"""A small Gaussian process regressor (Matern 5/2, hyper-parameters by marginal likelihood over a grid).

The controller's predictor: a few dozen to a few hundred distilled candidates, five features each, so an
exact GP is fast (milliseconds) and gives calibrated uncertainty for exploration without extra dependencies.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

LENGTHSCALES = (0.1, 0.2, 0.35, 0.6, 1.0, 1.7)
NOISES = (1e-4, 1e-3, 1e-2, 3e-2, 0.1, 0.3)


def matern52(a: np.ndarray, b: np.ndarray, lengthscale: float) -> np.ndarray:
    d = np.sqrt(np.maximum(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1), 0.0)) / lengthscale
    s5 = math.sqrt(5.0) * d
    return (1.0 + s5 + 5.0 / 3.0 * d * d) * np.exp(-s5)


class GaussianProcess:
    """Zero-mean GP on standardised targets; `noise` is relative to the targets' variance."""

    def __init__(self) -> None:
        self.x: np.ndarray | None = None
        self.lengthscale = LENGTHSCALES[2]
        self.noise = NOISES[2]

    def fit(self, x: np.ndarray, y: np.ndarray) -> GaussianProcess:
        x, y = np.asarray(x, float), np.asarray(y, float)
        self.mu, self.sigma = float(y.mean()), float(y.std()) or 1.0
        z = (y - self.mu) / self.sigma
        best = -math.inf
        for ls, noise in itertools.product(LENGTHSCALES, NOISES):
            fitted = self._solve(x, z, ls, noise)
            if fitted is not None and fitted[2] > best:
                best = fitted[2]
                self.lengthscale, self.noise = ls, noise
                self.chol, self.alpha = fitted[0], fitted[1]
        self.x, self.y = x, y
        return self

    @staticmethod
    def _solve(x: np.ndarray, z: np.ndarray, ls: float, noise: float) -> tuple[np.ndarray, np.ndarray, float] | None:
        k = matern52(x, x, ls) + noise * np.eye(len(x))
        try:
            chol = np.linalg.cholesky(k)
        except np.linalg.LinAlgError:
            return None
        alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, z))
        loglik = -0.5 * z @ alpha - np.log(np.diag(chol)).sum() - 0.5 * len(z) * math.log(2 * math.pi)
        return chol, alpha, float(loglik)

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation of the (unstandardised) target."""
        if self.x is None:
            raise RuntimeError("fit the GP before predicting")
        ks = matern52(np.asarray(x, float), self.x, self.lengthscale)
        mean = ks @ self.alpha
        v = np.linalg.solve(self.chol, ks.T)
        var = np.maximum(1.0 - (v * v).sum(0), 1e-12)
        return self.mu + self.sigma * mean, self.sigma * np.sqrt(var)
