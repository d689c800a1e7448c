"""The reward that joins a candidate's task metric and its latency.

Forms:
- `soft` (MnasNet): `score * prod_p (latency_p / target_p) ** w`, with `w = alpha` when the candidate is within
  the target and `beta` when over it. MnasNet's soft constraint is alpha = beta = -0.07: 10% slower costs about
  0.7% of the score, so accuracy and latency trade smoothly and candidates just over the target still teach
  the controller something.
- `hard`: candidates over the target on any profile are rejected (reward None); within it the reward is the
  score. The right form when the latency budget is a deployment limit.
Several hardware profiles each bring their own target; their factors multiply (soft) or all must hold (hard).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from kdnas_deploy.util.errors import KdnasError

#: MnasNet's soft-constraint exponent (Tan et al., 2019).
MNASNET_W = -0.07


@dataclass(frozen=True)
class RewardConfig:
    #: Latency target in ms per hardware profile name.
    targets: Mapping[str, float]
    form: Literal["soft", "hard"] = "soft"
    alpha: float = MNASNET_W
    beta: float = MNASNET_W

    def __post_init__(self) -> None:
        if not self.targets:
            raise KdnasError("a reward needs a latency target for at least one hardware profile")
        if any(not (t > 0 and math.isfinite(t)) for t in self.targets.values()):
            raise KdnasError(f"latency targets must be positive milliseconds, got {dict(self.targets)}")
        if self.form not in ("soft", "hard"):
            raise KdnasError(f"unknown reward form {self.form!r}: use soft or hard")
        if self.alpha > 0 or self.beta > 0:
            raise KdnasError("reward exponents alpha and beta must be <= 0 (slower must never score higher)")

    @classmethod
    def from_speedup(cls, teacher_ms: Mapping[str, float], speedup: float, **kwargs: object) -> RewardConfig:
        """Targets at `teacher latency / speedup` on every profile."""
        if not speedup > 0:
            raise KdnasError(f"--speedup must be positive, got {speedup}")
        return cls({p: ms / speedup for p, ms in teacher_ms.items()}, **kwargs)  # type: ignore[arg-type]


def latency_factor(latency_ms: Mapping[str, float], config: RewardConfig) -> float:
    """The soft form's multiplier for this latency (1 at the target, below 1 when slower)."""
    factor = 1.0
    for profile, target in config.targets.items():
        if profile not in latency_ms:
            raise KdnasError(f"no latency for hardware profile {profile!r}")
        ratio = latency_ms[profile] / target
        factor *= ratio ** (config.alpha if ratio <= 1 else config.beta)
    return factor


def within_target(latency_ms: Mapping[str, float], config: RewardConfig) -> bool:
    return all(latency_ms[p] <= t for p, t in config.targets.items())


def reward(score: float, latency_ms: Mapping[str, float], config: RewardConfig) -> float | None:
    """The candidate's reward; None when the hard form rejects it."""
    if config.form == "hard":
        return score if within_target(latency_ms, config) else None
    return score * latency_factor(latency_ms, config)
