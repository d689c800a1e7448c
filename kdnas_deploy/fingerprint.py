"""The machine fingerprint that keys every latency-table entry.

A timing is only valid on the machine, software and profile that produced it, so the key covers
the CPU (model, cores, and the instruction-set features that pick ONNX Runtime's kernels: one model string such as
"AMD EPYC" covers CPUs with AVX2 only and CPUs with AVX512-VNNI, whose int8 timings differ by 1.6x), the GPU (name, driver) when the profile uses one, ONNX Runtime (version and
providers), the exporter stack (torch, transformers, onnx, opset) and the profile's content hash.
"""

from __future__ import annotations

import hashlib
import json
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from kdnas_deploy.hardware import HardwareProfile, gpu_name
from kdnas_deploy.instruction_set import INFO_KEY, cpu_model, host_instruction_set
from kdnas_deploy.util.resources import cpu_budget

#: Bump when the way graphs are built or timed changes, so old timings stop matching.
# 2: the fastest session, not the median session. 3: random stand-in weights perturb every tensor, so int8
# graphs no longer share LayerNorm constants and carry the same DequantizeLinear nodes as trained ones.
TIMING_METHOD_VERSION = 3


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def machine_fingerprint(profile: HardwareProfile) -> dict[str, Any]:
    import onnxruntime as ort

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_count": cpu_budget(),  # the CPUs this process may use: a 2-CPU container on a 64-core node is 2
        INFO_KEY: host_instruction_set().to_info(),
        "machine": platform.machine(),
        "os": platform.system(),
        "onnxruntime": ort.__version__,
        "onnxruntime_providers": sorted(ort.get_available_providers()),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "onnx": _version("onnx"),
        "opset": profile.model.opset,
        "profile": profile.name,
        "profile_hash": profile.content_hash(),
        "timing_method": TIMING_METHOD_VERSION,
    }
    if profile.uses_gpu:
        info["gpu"] = gpu_name()
    return info


def fingerprint_id(info: dict[str, Any]) -> str:
    # The profile's name is for people; two identically configured profiles share timings.
    keyed = {k: v for k, v in info.items() if k != "profile"}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:20]
