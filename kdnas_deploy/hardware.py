"""Hardware profiles: a TOML file that says how a model runs and how it is timed.

A profile fixes everything that changes latency: the ONNX Runtime execution provider and its
options, threads, graph optimization level, the precision of the graph (fp32, int8, fp16), the
input shape, and the timing protocol (warm-up, repeats, noise rule). `--hw NAME` picks a profile
shipped in `hardware_profiles/`; `--hw path/to/file.toml` reads a user's own.
"""

from __future__ import annotations

import hashlib
import json
from enum import Enum
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kdnas_deploy.util.errors import KdnasError
from kdnas_deploy.util.files import read_toml

GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider",
                 "MIGraphXExecutionProvider", "DmlExecutionProvider")


@lru_cache(maxsize=1)
def known_providers() -> tuple[str, ...]:
    """Every execution provider ONNX Runtime knows by name (built into this install or not), and those older builds
    had: a profile may name any of them; `check_runnable` says whether this machine's install offers it."""
    import onnxruntime as ort

    return tuple(dict.fromkeys([*ort.get_all_providers(), *GPU_PROVIDERS]))


class Precision(str, Enum):
    fp32 = "fp32"
    int8 = "int8"
    fp16 = "fp16"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RuntimeSection(_Strict):
    provider: str = Field(description="ONNX Runtime execution provider")
    provider_options: dict[str, str | int | float | bool] = Field(default_factory=dict)
    intra_op_threads: int = Field(0, ge=0, description="0 lets ONNX Runtime use one per physical core")
    inter_op_threads: int = Field(1, ge=0)
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = "all"
    execution_mode: Literal["sequential", "parallel"] = "sequential"
    allow_spinning: bool = True

    @model_validator(mode="after")
    def _known_provider(self) -> RuntimeSection:
        if self.provider not in known_providers():
            raise ValueError(f"unknown provider {self.provider!r} (ONNX Runtime knows: {', '.join(known_providers())})")
        return self


class ModelSection(_Strict):
    precision: Precision
    opset: int = Field(17, ge=14, le=21)
    #: Run ONNX Runtime's transformer optimizer (Attention/LayerNorm/GELU fusion) before precision.
    optimize: bool = True
    #: int8 only: per-channel weight scales and the reduced 7-bit range some older CPUs need.
    per_channel: bool = False
    reduce_range: bool = False
    #: int8 only: activation scales computed per batch at run time (dynamic: a text's answer can depend on its
    #: batch-mates) or fixed from training rows when the artifact is built (static: it cannot).
    activations: Literal["dynamic", "static"] = "dynamic"
    #: static int8: training rows whose activation ranges set the scales (a seeded sample).
    calibration_rows: int = Field(256, ge=1, le=100_000)


class ShapeSection(_Strict):
    batch_size: int = Field(ge=1, le=4096)
    seq_len: int = Field(ge=1, le=8192)


class TimingSection(_Strict):
    warmup: int = Field(5, ge=0)
    repeats: int = Field(30, ge=3)
    #: A round lasts at least this long: fast graphs get more repeats, so a 0.2 ms model is not
    #: judged on 6 ms of samples that one scheduler hiccup can skew.
    min_round_ms: float = Field(0.0, ge=0)
    #: Fresh sessions per measurement (the fastest one's median counts): session-to-session variation
    #: (memory placement, thread start-up, neighbours) is larger than within-session jitter on small CPUs.
    sessions: int = Field(1, ge=1)
    #: Noise rule: a round of `repeats` whose spread ((p90 - p10) / median) is above this is
    #: measured again, up to `max_rounds` rounds; the calmest round is kept.
    max_spread: float = Field(0.15, gt=0)
    max_rounds: int = Field(4, ge=1)


class HardwareProfile(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    runtime: RuntimeSection
    model: ModelSection
    shape: ShapeSection
    timing: TimingSection = TimingSection()

    @model_validator(mode="after")
    def _precision_fits_provider(self) -> HardwareProfile:
        gpu = self.runtime.provider in GPU_PROVIDERS
        if self.model.precision is Precision.fp16 and not gpu:
            raise ValueError(f"precision fp16 needs a GPU provider ({', '.join(GPU_PROVIDERS)})")
        if self.model.precision is Precision.int8 and gpu:
            raise ValueError("precision int8 runs on CPU providers only")
        if self.model.activations == "static" and self.model.precision is not Precision.int8:
            raise ValueError("model.activations = 'static' is for precision int8 only")
        return self

    # -- derived ----------------------------------------------------------------------------------
    @property
    def precision(self) -> Precision:
        return self.model.precision

    @property
    def uses_gpu(self) -> bool:
        return self.runtime.provider in GPU_PROVIDERS

    def with_shape(self, batch_size: int | None = None, seq_len: int | None = None) -> HardwareProfile:
        """The same profile timing another input shape (`--batch`, `--seq-len`)."""
        shape = self.shape.model_copy(
            update={k: v for k, v in (("batch_size", batch_size), ("seq_len", seq_len)) if v is not None}
        )
        try:
            return HardwareProfile.model_validate({**self.model_dump(), "shape": shape.model_dump()})
        except ValidationError as exc:
            raise KdnasError(f"hardware profile {self.name!r}: {_first_error(exc)}") from None

    def content_hash(self) -> str:
        """Hash of what changes a timing, except the input shape (which keys table entries itself)."""
        payload = self.model_dump(mode="json", exclude={"name", "description", "shape"})
        if self.model.activations == "dynamic":
            # Fields added after tables were filled, with no effect on a dynamic (or fp32, fp16) graph: left out, so
            # every table row timed before them still belongs to its profile.
            for key in ("activations", "calibration_rows"):
                payload["model"].pop(key)
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def providers(self) -> list[Any]:
        """The provider list for an InferenceSession, with the profile's options."""
        opts = {k: str(v) for k, v in self.runtime.provider_options.items()}
        if opts.get("device_id") == "0":
            # ORT's default device. Named, it makes ORT >= 1.26 look for a plugin EP device of that id first and log a
            # warning for every session when none is registered (seen on an H200 with onnxruntime-gpu 1.31).
            del opts["device_id"]
        chosen: list[Any] = [(self.runtime.provider, opts)] if opts else [self.runtime.provider]
        if self.runtime.provider != "CPUExecutionProvider":
            chosen.append("CPUExecutionProvider")
        return chosen

    def check_runnable(self) -> None:
        """Fail with one clear line when this machine cannot run the profile."""
        import onnxruntime as ort

        available = ort.get_available_providers()
        provider = self.runtime.provider
        if provider not in available:
            hint = " (install kdnas-deploy[gpu] on a machine with an NVIDIA GPU)" if self.uses_gpu else ""
            raise KdnasError(
                f"hardware profile {self.name!r} needs {provider}, but this onnxruntime offers "
                f"{', '.join(p for p in available if p != 'AzureExecutionProvider')}{hint}"
            )
        if provider == "CUDAExecutionProvider" and gpu_name() is None:
            raise KdnasError(
                f"hardware profile {self.name!r} needs a CUDA GPU, but none is visible on this machine"
            )


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        return f"missing field {where}"
    if err["type"] == "extra_forbidden":
        return f"unknown field {where}"
    return f"{where}: {msg}" if where else msg


def profiles_dir() -> Path:
    """Shipped profiles: inside the installed package, or at the top of a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "hardware_profiles", here.parent / "hardware_profiles"):
        if candidate.is_dir():
            return candidate
    raise KdnasError("the shipped hardware profiles are missing from this installation")


def shipped_profiles() -> list[str]:
    return sorted(p.stem for p in profiles_dir().glob("*.toml"))


def parse_profile(data: dict[str, Any], source: str) -> HardwareProfile:
    try:
        return HardwareProfile.model_validate(data)
    except ValidationError as exc:
        raise KdnasError(f"hardware profile {source}: {_first_error(exc)}") from None


def load_profile(name_or_path: str | Path) -> HardwareProfile:
    """`cpu`, `cpu-int8`, `cpu-int8-static`, `cuda` (shipped) or the path of a TOML file."""
    text = str(name_or_path)
    path = Path(text)
    if not (text.endswith(".toml") or path.exists()):
        path = profiles_dir() / f"{text}.toml"
        if not path.exists():
            raise KdnasError(
                f"unknown hardware profile {text!r}: shipped profiles are {', '.join(shipped_profiles())}, "
                "or give the path of a .toml file"
            )
    data = read_toml(path, "hardware profile")
    data.setdefault("name", path.stem)
    return parse_profile(data, str(path))


@lru_cache(maxsize=1)
def gpu_name() -> str | None:
    """Name and driver of the first NVIDIA GPU, or None (no GPU, or no driver)."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.strip().splitlines()
    except (subprocess.SubprocessError, OSError):
        return None
    return out[0].strip() if out else None
