"""Student's t interval of a mean: what the latency comparison (over sessions) and the benchmark's score rule (over
seeds) both state."""

from __future__ import annotations

import math
from collections.abc import Sequence


def mean_t_interval(values: Sequence[float], quantile: float) -> tuple[float, float | None, float | None]:
    """The mean and mean -/+ t(quantile, n-1) * sd / sqrt(n) (None with fewer than two values). `quantile` 0.95
    gives one-sided 95% bounds on either side; 0.975 the two-sided 95% interval."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None, None
    from scipy.stats import t

    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(t.ppf(quantile, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half
