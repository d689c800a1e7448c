"""Padding encoded rows into batches with numpy alone: what PyTorch training and ONNX Runtime inference share.

Rows are tokenised without padding (`encode`); a batch is padded to its own longest row, and batches for inference
are taken in length order so that they carry little padding. This module imports no torch, so an artifact can
score rows where only ONNX Runtime is installed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def pad_rows(rows: Sequence[dict[str, Any]], pad_token_id: int = 0) -> dict[str, np.ndarray]:
    """The rows padded to the longest: int64 model inputs, and labels as float32 (regression) or int64."""
    width = max(len(r["input_ids"]) for r in rows)
    batch: dict[str, np.ndarray] = {}
    for key in MODEL_INPUTS:
        fill = pad_token_id if key == "input_ids" else 0
        batch[key] = np.array([list(r[key]) + [fill] * (width - len(r[key])) for r in rows], dtype=np.int64)
    labels = [r["labels"] for r in rows]
    batch["labels"] = np.array(labels, dtype=np.float32 if isinstance(labels[0], float) else np.int64)
    return batch


def sorted_row_batches(dataset: Any, batch_size: int, pad_token_id: int = 0,
                       order: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """(row indices, padded numpy batch) in length order, or in the `order` given (row indices)."""
    if order is None:
        order = np.argsort(np.array([len(ids) for ids in dataset["input_ids"]]), kind="stable")  # equal lengths keep order
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield idx, pad_rows([dataset[int(i)] for i in idx], pad_token_id)
