"""The CPU instruction-set facts that change which ONNX Runtime kernels run, and so its timings and int8 scores.

ONNX Runtime's MLAS picks its matrix kernels once per process from the CPU's features. For int8 the tiers are, on
x86-64: AVX2 (u8 x s8 products summed with a 16-bit saturating add), AVX-512 (F, BW, DQ, VL), AVX-VNNI and
AVX512-VNNI (one dot-product instruction, no saturation), AMX (tile multiply); on Arm: NEON, the dot-product
extension, i8mm (and SVE for some kernels). Two machines with the same CPU model string can sit in different tiers
(a cloud "AMD EPYC" is Zen 2 with AVX2 only, or Zen 4 with AVX512-VNNI), so the fingerprint carries the features.

The features are read with archspec (Spack's CPU detection, maintained), which on Linux parses /proc/cpuinfo, on
macOS asks sysctl and on Windows runs CPUID. Inside a container /proc/cpuinfo is the host kernel's; inside a VM it
is what the hypervisor passes through in CPUID, which is exactly what ONNX Runtime's own CPUID check sees there.
The kernel also hides AVX-512 and AMX when it has not enabled their register state (XSAVE), as ONNX Runtime does.

This module needs neither torch nor ONNX Runtime: serving reads it to compare the CPU it runs on with the one an
artifact's card was measured on.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable

#: The features kept, by architecture: the ones that change ONNX Runtime's kernels. Names as Linux spells them.
KERNEL_FEATURES: dict[str, tuple[str, ...]] = {
    "x86_64": ("avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni", "avx_vnni",
               "amx_tile", "amx_int8", "amx_bf16"),
    "aarch64": ("asimd", "asimddp", "i8mm", "sve", "sve2", "bf16"),
}
_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}
#: The fingerprint key; a fingerprint recorded before it existed has no such key ("instruction set unknown").
INFO_KEY = "cpu_features"
UNKNOWN = "instruction set unknown"


@dataclass(frozen=True)
class InstructionSet:
    """The kernel-relevant CPU features of one machine (sorted), and its architecture."""

    arch: str
    features: tuple[str, ...]

    @classmethod
    def of(cls, arch: str, features: Iterable[str]) -> "InstructionSet":
        arch = _ALIASES.get(arch.lower(), arch.lower())
        wanted = KERNEL_FEATURES.get(arch, ())
        present = {f.lower() for f in features}
        return cls(arch, tuple(sorted(f for f in wanted if f in present)))

    @property
    def summary(self) -> str:
        """The int8 kernel tier ONNX Runtime will use here, in the words its release notes use."""
        f = set(self.features)
        if self.arch == "x86_64":
            if {"amx_tile", "amx_int8"} <= f:
                return "AMX"
            if "avx512_vnni" in f and {"avx512f", "avx512bw", "avx512vl"} <= f:
                return "AVX512-VNNI"
            if "avx_vnni" in f:
                return "AVX-VNNI"
            if {"avx512f", "avx512bw", "avx512vl"} <= f:
                return "AVX-512"
            return "AVX2" if "avx2" in f else "x86-64 without AVX2"
        if self.arch == "aarch64":
            return "Arm i8mm" if "i8mm" in f else "Arm dot-product" if "asimddp" in f else "Arm NEON"
        return self.arch

    def describe(self) -> str:
        """The tier and every kept feature: `AVX512-VNNI (avx2, avx512bw, ...)`."""
        return f"{self.summary} ({', '.join(self.features) or 'none of the features kernels use'})"

    def to_info(self) -> list[str]:
        return list(self.features)


def from_info(info: dict[str, Any] | None) -> InstructionSet | None:
    """The instruction set a fingerprint's info recorded, or None when it predates them."""
    if not info or not isinstance(info.get(INFO_KEY), list):
        return None
    return InstructionSet.of(str(info.get("machine") or platform.machine()), (str(f) for f in info[INFO_KEY]))


def describe_info(info: dict[str, Any] | None) -> str:
    isa = from_info(info)
    return isa.summary if isa else UNKNOWN


@lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def host_instruction_set() -> InstructionSet:
    return InstructionSet.of(platform.machine(), _detected_features())


def _detected_features() -> set[str]:
    import warnings

    try:
        import archspec.cpu
        from archspec.cpu.detect import detected_info

        with warnings.catch_warnings():  # archspec warns where a detector fails, then falls back to generic
            warnings.simplefilter("ignore")
            info = detected_info()
        features = set(info.features)
        if not features and info.name in archspec.cpu.TARGETS:  # Apple silicon: known by model, not by flags
            features = set(archspec.cpu.TARGETS[info.name].features)
        return features
    except Exception:  # noqa: BLE001 - an undetectable CPU is "no features", never a failed command
        return set()


def mismatch(measured_on: InstructionSet | None, here: InstructionSet, what: str = "latency and scores") -> str | None:
    """One line when the CPU here is not the instruction set `what` on the card was measured on; None when it is.
    A card without an instruction set (written before they were recorded) is said to be unknown."""
    verb = "was" if what == "latency" else "were"
    if measured_on is None:
        return (f"the card does not record the instruction set its {what} {verb} measured on (exported before "
                f"instruction sets were recorded); this CPU has {here.summary}")
    if measured_on == here:
        return None
    if measured_on.summary != here.summary:
        lower = _rank(here) < _rank(measured_on)
        where = f"{measured_on.summary}; this CPU has {here.summary}" + (" only" if lower else "")
    else:  # one tier, other features (AMX's bf16, say): name them
        missing = sorted(set(measured_on.features) - set(here.features))
        extra = sorted(set(here.features) - set(measured_on.features))
        changes = [f"lacks {', '.join(missing)}"] * bool(missing) + [f"adds {', '.join(extra)}"] * bool(extra)
        where = f"{measured_on.describe()}; this CPU {', '.join(changes)}"
    scores = " and slightly other int8 scores" if "scores" in what else ""
    return f"{what} on the card {verb} measured on {where}: ONNX Runtime picks other kernels here, so expect other " \
           f"timings{scores}"


_ORDER = ("x86-64 without AVX2", "AVX2", "AVX-512", "AVX-VNNI", "AVX512-VNNI", "AMX", "Arm NEON", "Arm dot-product",
          "Arm i8mm")


def _rank(isa: InstructionSet) -> int:
    return _ORDER.index(isa.summary) if isa.summary in _ORDER else -1
