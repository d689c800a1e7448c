"""Tokenising a task's splits with the teacher's tokenizer, cached on disk between runs, and batching them.

Rows are tokenised without padding; `collate` pads each batch to its own longest row, which makes short-text
tasks like SST-2 several times cheaper to train on than padding everything to `max_length`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdnas_deploy.data.batching import MODEL_INPUTS, pad_rows
from kdnas_deploy.data.sources import TaskData
from kdnas_deploy.util.paths import cache_dir

#: Bump when the encoded columns change, so old cache entries are not read.
ENCODING_VERSION = 1
#: Batch key of the rows' indices in the training set (kept on the host): added for an objective that looks its rows
#: up, such as one reading the teacher's cached outputs.
ROW_IDS = "row_ids"


@dataclass
class EncodedData:
    train: Any  # datasets.Dataset with input_ids, attention_mask, token_type_ids, labels
    dev: Any
    max_length: int
    pad_token_id: int


def tokenizer_hash(tokenizer: Any) -> str:
    """Identifies what a tokenizer does (vocabulary, normaliser, special tokens), not where it was loaded from."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest.update(backend.to_str().encode() if backend is not None else repr(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(repr(tokenizer.all_special_tokens).encode())
    return digest.hexdigest()[:16]


def encode(data: TaskData, tokenizer: Any, max_length: int = 128, cache: Path | None | bool = True) -> EncodedData:
    """Tokenised train and dev splits; read from the cache when the same data, tokenizer and length were seen.

    `cache`: True for the user cache dir, a folder, or False to skip caching.
    """
    key = hashlib.sha256(f"{ENCODING_VERSION}|{data.fingerprint}|{tokenizer_hash(tokenizer)}|{max_length}".encode()).hexdigest()[:24]
    root = None if cache is False else (cache_dir() / "tokenized" if cache is True else Path(cache))
    folder = root / key if root is not None else None
    splits = _read_cache(folder) if folder is not None else None
    if splits is None:
        splits = {name: _tokenize(ds, tokenizer, max_length) for name, ds in (("train", data.train), ("dev", data.dev))}
        if folder is not None:
            _write_cache(folder, splits)
    return EncodedData(splits["train"], splits["dev"], max_length, tokenizer.pad_token_id or 0)


def _tokenize(dataset: Any, tokenizer: Any, max_length: int) -> Any:
    pair = "text_pair" in dataset.column_names

    def run(batch: dict[str, list]) -> dict[str, list]:
        enc = tokenizer(batch["text"], batch["text_pair"] if pair else None, truncation=True, max_length=max_length)
        if "token_type_ids" not in enc:
            enc["token_type_ids"] = [[0] * len(ids) for ids in enc["input_ids"]]
        return {**{k: enc[k] for k in MODEL_INPUTS}, "labels": batch["label"]}

    return dataset.map(run, batched=True, batch_size=1000, remove_columns=dataset.column_names,
                       load_from_cache_file=False, desc="tokenising")


def _read_cache(folder: Path) -> dict[str, Any] | None:
    from datasets import load_from_disk

    if not (folder / "complete").exists():
        return None
    try:
        return {name: load_from_disk(str(folder / name)) for name in ("train", "dev")}
    except (OSError, ValueError, FileNotFoundError):
        return None  # a damaged entry is rebuilt, not fatal


def _write_cache(folder: Path, splits: dict[str, Any]) -> None:
    """Written beside its final place and renamed in, so a crash never leaves a half entry that looks whole."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        for name, ds in splits.items():
            ds.save_to_disk(str(tmp / name))
        (tmp / "complete").write_text("ok\n")
        if folder.exists():
            shutil.rmtree(tmp)  # another process finished the same entry first
            return
        os.replace(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def collate(rows: list[dict[str, Any]], pad_token_id: int = 0) -> dict[str, Any]:
    """Pads a list of encoded rows to the longest one, as torch tensors (`batching.pad_rows` for numpy)."""
    import torch  # here, so that encoding and the data layer import without torch

    return {k: torch.from_numpy(v) for k, v in pad_rows(rows, pad_token_id).items()}
