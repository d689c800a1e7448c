"""Model folders this tool reads and writes: a Hugging Face folder (config, safetensors weights, tokenizer)
plus `kdnas.json`, which says what the model is so later commands never ask the user again.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from kdnas_deploy.util.errors import KdnasError, first_line
from kdnas_deploy.teacher_config import SUPPORTED_MODEL_TYPES, load_teacher_config

INFO_FILE = "kdnas.json"


class ModelInfo(BaseModel):
    """The contents of `kdnas.json`."""

    kind: Literal["teacher", "student"]
    arch: str
    teacher: str | None = None
    backbone: str | None = None
    task: str
    data: dict[str, Any] = Field(default_factory=dict)
    label_names: list[str] = Field(default_factory=list)
    max_length: int
    init: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))


def model_ref(name_or_path: str) -> str:
    """A local folder as an absolute path (kdnas.json must work from any directory); a hub id unchanged."""
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.is_dir() else name_or_path


def versions() -> dict[str, str]:
    import torch
    import transformers

    from kdnas_deploy import __version__

    return {"kdnas_deploy": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Written beside its final place and renamed in: readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def read_info(folder: str | Path) -> ModelInfo | None:
    """The folder's `kdnas.json`, or None for a folder (or hub id) without one."""
    path = Path(folder) / INFO_FILE
    if not path.is_file():
        return None
    try:
        return ModelInfo.model_validate_json(path.read_text())
    except ValueError as exc:
        raise KdnasError(f"{path}: not a valid {INFO_FILE} ({first_line(exc)})") from None


def save_model_folder(model: Any, tokenizer: Any, info: ModelInfo, out: Path) -> None:
    """Weights, config and tokenizer via `save_pretrained`; `kdnas.json` last, so its presence means complete."""
    out.mkdir(parents=True, exist_ok=True)
    (out / INFO_FILE).unlink(missing_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    write_json_atomic(out / INFO_FILE, info.model_dump())


def load_classifier(name_or_path: str, attn_implementation: str = "sdpa") -> Any:
    """A BERT-architecture `AutoModelForSequenceClassification` from a hub id or folder, in eval mode.

    Refused when the weights have no classification head: transformers would add a random one and the model would
    load, score at chance and teach a student noise. A backbone is made a classifier by `kdnas-deploy teacher`."""
    from transformers import AutoModelForSequenceClassification

    load_teacher_config(name_or_path)  # one-line errors for missing or unsupported models
    try:
        model, loading = AutoModelForSequenceClassification.from_pretrained(
            name_or_path, attn_implementation=attn_implementation, output_loading_info=True)
    except Exception as exc:  # noqa: BLE001 - damaged weights raise OSError, ValueError, safetensors' own errors...
        raise KdnasError(f"cannot load a sequence classifier from {name_or_path!r}: {first_line(exc)}") from None
    if model.config.model_type not in SUPPORTED_MODEL_TYPES:  # pragma: no cover - config check above
        raise KdnasError(f"{name_or_path!r} is a {model.config.model_type!r} model; only BERT-architecture models are supported")
    missing_head = [k for k in loading.get("missing_keys", []) if k.startswith("classifier.")]
    if missing_head:
        raise KdnasError(f"{name_or_path!r} has no trained classification head (its weights lack {missing_head[0]}): "
                         "it is a backbone; make it a teacher with kdnas-deploy teacher --backbone")
    return model.eval()


def load_tokenizer(name_or_path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except Exception as exc:  # noqa: BLE001 - a damaged tokenizer file raises the Rust library's plain Exception
        raise KdnasError(f"cannot load a tokenizer from {name_or_path!r}: {first_line(exc)}") from None
