"""Texts to the graph's inputs, with the artifact's own tokenizer files.

An artifact folder holds the `tokenizer.json` of a fast tokenizer (export saves it with `save_pretrained`); it is
read with the `tokenizers` library alone. Going through `AutoTokenizer` encodes the same, but imports
transformers and torch under it: 5-7 s before the first prediction of every `predict` call and every server
start, for an artifact that needs neither to run. The settings are the ones `AutoTokenizer` applies to the same
file for `truncation=True, max_length=..., padding=True`: truncation longest-first to `max_length` on the
configured side, padding to the batch's longest row with the pad token on the configured side. The tests check
the two agree on real GLUE text. A folder without `tokenizer.json` (a slow tokenizer's vocabulary only) falls back
to `AutoTokenizer`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from kdnas_deploy.util.errors import KdnasError, first_line

TOKENIZER_FILE = "tokenizer.json"
SETTINGS_FILES = ("tokenizer_config.json", "special_tokens_map.json")


class TextEncoder(Protocol):
    def __call__(self, firsts: list[str], seconds: list[str] | None) -> dict[str, np.ndarray]: ...


def load_text_encoder(folder: str | Path, max_length: int) -> TextEncoder:
    folder = Path(folder)
    if (folder / TOKENIZER_FILE).is_file():
        return FastTextEncoder(folder, max_length)
    return TransformersTextEncoder(folder, max_length)


def _settings(folder: Path) -> dict[str, Any]:
    """tokenizer_config.json over special_tokens_map.json, as transformers reads them."""
    merged: dict[str, Any] = {}
    for name in reversed(SETTINGS_FILES):
        path = folder / name
        if path.is_file():
            try:
                merged.update(json.loads(path.read_text(encoding="utf-8")))
            except ValueError as exc:
                raise KdnasError(f"{path}: not valid JSON ({first_line(exc)})") from None
    return merged


def _token_text(token: Any) -> str | None:
    # A special token is saved as its text, or as an AddedToken's dict.
    return token.get("content") if isinstance(token, dict) else token


class FastTextEncoder:
    def __init__(self, folder: Path, max_length: int):
        from tokenizers import Tokenizer

        path = folder / TOKENIZER_FILE
        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # noqa: BLE001  (the Rust library raises plain Exceptions for a bad file)
            raise KdnasError(f"cannot load the tokenizer {path}: {first_line(exc)}") from None
        settings = _settings(folder)
        pad_token = _token_text(settings.get("pad_token"))
        pad_id = self.tokenizer.token_to_id(pad_token) if pad_token else None
        if pad_id is None:
            raise KdnasError(f"{folder}: the tokenizer has no pad token ({pad_token!r}), which batches need")
        self.tokenizer.enable_truncation(max_length, strategy="longest_first",
                                         direction=settings.get("truncation_side", "right"))
        self.tokenizer.enable_padding(direction=settings.get("padding_side", "right"), pad_id=pad_id,
                                      pad_type_id=0, pad_token=pad_token)

    def __call__(self, firsts: list[str], seconds: list[str] | None) -> dict[str, np.ndarray]:
        batch = self.tokenizer.encode_batch(list(zip(firsts, seconds)) if seconds is not None else firsts)
        return {"input_ids": np.array([e.ids for e in batch], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in batch], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in batch], dtype=np.int64)}


class TransformersTextEncoder:
    def __init__(self, folder: Path, max_length: int):
        from kdnas_deploy.model_folder import load_tokenizer

        self.tokenizer = load_tokenizer(str(folder))
        self.max_length = max_length

    def __call__(self, firsts: list[str], seconds: list[str] | None) -> dict[str, np.ndarray]:
        enc = self.tokenizer(firsts, seconds, truncation=True, max_length=self.max_length, padding=True,
                             return_tensors="np", return_token_type_ids=True)
        return {k: np.asarray(v, dtype=np.int64) for k, v in enc.items()}
