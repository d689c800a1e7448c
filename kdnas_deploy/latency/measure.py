"""Measure architectures on a profile: random weights -> profile graph -> timed sessions.

Building a graph and timing it are separate steps so that a profiler can spread one graph's
sessions over time (see `profiler.profile_items`): on shared or throttled machines slow spells last
tens of seconds, and sessions timed back to back all fall into the same one.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kdnas_deploy.hardware import HardwareProfile, TimingSection
from kdnas_deploy.latency.graph import build_profile_graph, random_model
from kdnas_deploy.latency.timing import Timing, combine_sessions, dummy_feeds, make_session, time_callable, time_graph
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

    @contextmanager
    def held(self, graph: BuiltGraph, profile: HardwareProfile, burst_ms: float) -> Iterator[Callable[[], float]]:
        """One session kept open on `graph`; each call of the yielded function times a burst of runs lasting about
        `burst_ms` and returns their median (ms). The probe's timer: without a session to load, a burst beside
        every timed session costs a tenth of a fresh session."""
        sess = make_session(graph.path, profile)
        feeds = dummy_feeds(sess, profile.shape.batch_size, profile.shape.seq_len, 0, graph.vocab_size)
        outputs = [o.name for o in sess.get_outputs()]
        burst = TimingSection(warmup=1, repeats=5, min_round_ms=burst_ms, sessions=1, max_spread=1.0, max_rounds=1)
        try:
            yield lambda: time_callable(lambda: sess.run(outputs, feeds), burst).median_ms
        finally:
            del sess


@contextmanager
def held_timer(measurer: Measurer, graph: BuiltGraph, profile: HardwareProfile, burst_ms: float
               ) -> Iterator[Callable[[], float]]:
    """`measurer.held` where the measurer has one; otherwise a fresh session per call (`measurer.time`)."""
    held = getattr(measurer, "held", None)
    if held is not None:
        with held(graph, profile, burst_ms) as timer:
            yield timer
        return
    calls = iter(range(1 << 62))
    yield lambda: measurer.time(graph, profile, next(calls)).median_ms


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
