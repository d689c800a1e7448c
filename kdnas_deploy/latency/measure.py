"""Measure architectures on a profile: random weights -> profile graph -> timed sessions.

Building a graph and timing it are separate steps so that a profiler can spread one graph's
sessions over time (see `profiler.profile_items`): on shared or throttled machines slow spells last
tens of seconds, and sessions timed back to back all fall into the same one.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kdnas_deploy.hardware import HardwareProfile
from kdnas_deploy.latency.graph import build_profile_graph, random_model
from kdnas_deploy.latency.timing import Timing, combine_sessions, time_graph, time_graph_lengths
from kdnas_deploy.space import BERT_VOCAB_SIZE, StudentArch


@dataclass(frozen=True)
class BuiltGraph:
    arch: StudentArch
    path: Path
    vocab_size: int
    fused_attention: int
    build_s: float  # export + optimize + precision, for planning estimates

    @property
    def fused(self) -> bool:
        return self.fused_attention == self.arch.layers


@dataclass(frozen=True)
class Measurement:
    graph: BuiltGraph
    timing: Timing


class Measurer(Protocol):
    def build(self, arch: StudentArch, profile: HardwareProfile, out_dir: Path, vocab_size: int) -> BuiltGraph: ...

    def time(self, graph: BuiltGraph, profile: HardwareProfile, seed: int) -> Timing: ...


class OnnxMeasurer:
    """The real thing: the profile graph of a random-weight model, timed in one fresh session."""

    def build(self, arch: StudentArch, profile: HardwareProfile, out_dir: Path, vocab_size: int = BERT_VOCAB_SIZE) -> BuiltGraph:
        t0 = time.perf_counter()
        model = random_model(arch, seq_len=profile.shape.seq_len, vocab_size=vocab_size)
        graph = build_profile_graph(model, profile, out_dir)
        return BuiltGraph(arch, graph.path, vocab_size, graph.fused_attention, time.perf_counter() - t0)

    def time(self, graph: BuiltGraph, profile: HardwareProfile, seed: int = 0) -> Timing:
        return time_graph(graph.path, profile, seed=seed, sessions=1, vocab_size=graph.vocab_size)

    def time_lengths(self, graph: BuiltGraph, profile: HardwareProfile, lengths: tuple[int, ...],
                     seed: int = 0) -> dict[int, Timing]:
        """One fresh session, timed at each length (`timing.time_graph_lengths`)."""
        return time_graph_lengths(graph.path, profile, lengths, seed=seed, vocab_size=graph.vocab_size)


def measure_now(
    measurer: Measurer, arch: StudentArch, profile: HardwareProfile, vocab_size: int = BERT_VOCAB_SIZE
) -> Measurement:
    """Build and time `arch` with the profile's sessions back to back (one-off measurements)."""
    tmp = Path(tempfile.mkdtemp(prefix="kdnas-lat-"))
    try:
        graph = measurer.build(arch, profile, tmp, vocab_size)
        timing = combine_sessions([measurer.time(graph, profile, s) for s in range(profile.timing.sessions)])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Measurement(graph, timing)


def time_at_lengths(measurer: Measurer, graph: BuiltGraph, profile: HardwareProfile, lengths: tuple[int, ...],
                    seed: int = 0) -> dict[int, Timing]:
    """`measurer.time_lengths` where the measurer has one; otherwise a session per length (`measurer.time`)."""
    at = getattr(measurer, "time_lengths", None)
    if at is not None:
        return at(graph, profile, lengths, seed)
    return {n: measurer.time(graph, profile.with_shape(seq_len=n), seed) for n in lengths}
