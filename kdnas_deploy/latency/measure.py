"""Measure one architecture on one profile: random weights -> profile graph -> timed session."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from kdnas_deploy.hardware import HardwareProfile
from kdnas_deploy.latency.graph import build_profile_graph, random_model
from kdnas_deploy.latency.timing import Timing, time_graph
from kdnas_deploy.space import StudentArch


@dataclass(frozen=True)
class Measurement:
    arch: StudentArch
    timing: Timing
    fused_attention: int
    build_s: float  # export + optimize + precision, for planning estimates

    @property
    def fused(self) -> bool:
        return self.fused_attention == self.arch.layers


def build_arch_graph(arch: StudentArch, profile: HardwareProfile, out_dir: str | Path):
    """The profile graph of a random-weight model of shape `arch` (weights do not change latency)."""
    return build_profile_graph(random_model(arch, seq_len=profile.shape.seq_len), profile, out_dir)


def measure_arch(arch: StudentArch, profile: HardwareProfile) -> Measurement:
    with tempfile.TemporaryDirectory(prefix="kdnas-lat-") as tmp:
        t0 = time.perf_counter()
        graph = build_arch_graph(arch, profile, tmp)
        build_s = time.perf_counter() - t0
        timing = time_graph(graph.path, profile)
    return Measurement(arch, timing, graph.fused_attention, build_s)
