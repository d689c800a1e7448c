"""Latency under traffic: an architecture's expected latency when requests follow a length distribution.

The table holds timings at fixed shapes (rows keyed by batch and sequence length). For a distribution it times a few
node lengths (`LengthDistribution.nodes`: the powers of two that bracket the distribution's support) with the
profile's usual plan, predicts each architecture at every node, and interpolates between nodes for every length a
padded batch can have (`LengthDistribution.batch_max`). The expected latency is the mean over that distribution; p50
and p90 are the latencies at its quantiles (latency grows with length, so quantiles map through).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kdnas_deploy.hardware import HardwareProfile
from kdnas_deploy.latency.lengths import LengthDistribution, interpolate
from kdnas_deploy.latency.predictor import LatencyModel
from kdnas_deploy.latency.table import LatencyTable
from kdnas_deploy.space import StudentArch


@dataclass(frozen=True)
class TrafficPrediction:
    arch: StudentArch
    mean_ms: float  # expected latency of a batch under the distribution
    p50_ms: float
    p90_ms: float
    node_ms: dict[int, float]  # predictions at the node lengths the table timed

    @property
    def ms(self) -> float:
        return self.mean_ms


class TrafficLatency:
    """Latency of any architecture on one profile under a length distribution, from one `LatencyModel` per node
    length over the same table (the length is part of a row's key, not of the machine's fingerprint)."""

    def __init__(self, table: LatencyTable, profile: HardwareProfile, lengths: LengthDistribution,
                 **model_options: Any) -> None:
        self.profile = profile
        self.lengths = lengths
        self.padded = lengths.batch_max(profile.shape.batch_size)
        self.nodes = self.padded.nodes()
        self.models = {n: LatencyModel(table, profile.with_shape(seq_len=n), **model_options) for n in self.nodes}
        self._weights = node_weights(self.padded, self.nodes)

    def shape(self) -> str:
        """The shape latencies are reported at, in words."""
        return f"batch {self.profile.shape.batch_size}, lengths {self.lengths.describe()}"

    def predict(self, arch: StudentArch) -> TrafficPrediction:
        node_ms = {n: self.models[n].predict(arch).ms for n in self.nodes}
        values = tuple(node_ms[n] for n in self.nodes)
        return TrafficPrediction(
            arch, float(sum(w * node_ms[n] for n, w in self._weights.items())),
            interpolate(self.padded.quantile(0.5), self.nodes, values),
            interpolate(self.padded.quantile(0.9), self.nodes, values), node_ms)

    def weights(self) -> dict[int, float]:
        """How much each node length's latency counts in the expected latency: interpolation is linear in the node
        values, so mean = sum(weight[n] * latency at n). Anything timed at the node lengths (a `compare`, the finals)
        combines by these weights into the same expected latency the table predicts."""
        return dict(self._weights)

    def at(self, arch: StudentArch, length: int) -> float:
        """The predicted latency of one batch padded to `length` tokens."""
        values = tuple(self.models[n].predict(arch).ms for n in self.nodes)
        return interpolate(length, self.nodes, values)

    def by_length(self) -> list[LatencyModel]:
        """The model of each node length, longest first (the profile's own length is usually the longest, and its rows
        the most used): what a caller fills, in that order."""
        return [self.models[n] for n in sorted(self.nodes, reverse=True)]


def node_weights(padded: LengthDistribution, nodes: tuple[int, ...]) -> dict[int, float]:
    """`TrafficLatency.weights` for a padded-length distribution and its nodes."""
    weights = dict.fromkeys(nodes, 0.0)
    for length, p in zip(padded.lengths, padded.probs):
        unit = [interpolate(length, nodes, tuple(float(n == m) for m in nodes)) for n in nodes]
        for n, u in zip(nodes, unit):
            weights[n] += p * u
    return weights


@dataclass(frozen=True)
class LengthVerifyRow:
    arch: StudentArch
    length: int
    predicted_ms: float
    timing: Any  # timing.Timing

    @property
    def error_pct(self) -> float:
        return (self.predicted_ms - self.timing.median_ms) / self.timing.median_ms * 100


def verify_traffic(traffic: TrafficLatency, archs: Sequence[StudentArch], seed: int = 1,
                   progress: Callable[[StudentArch], None] | None = None) -> list[LengthVerifyRow]:
    """Each architecture timed whole at a padded length drawn from the distribution (nothing stored), beside the
    prediction interpolated between the node lengths: the error of the table at the lengths requests have, node
    lengths and the lengths between them alike."""
    from kdnas_deploy.latency.profiler import time_whole

    lengths = traffic.padded.sample(len(archs), seed)
    preds = [traffic.at(arch, length) for arch, length in zip(archs, lengths)]
    yardstick = traffic.models[max(traffic.nodes)]
    jobs = [(arch, traffic.profile.with_shape(seq_len=length)) for arch, length in zip(archs, lengths)]
    timings = time_whole(yardstick, jobs, progress)
    return [LengthVerifyRow(a, n, p, t) for a, n, p, t in zip(archs, lengths, preds, timings)]
