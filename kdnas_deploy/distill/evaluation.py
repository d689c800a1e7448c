"""Scoring a PyTorch model on an encoded split: inference only, with no training code, so that export (which
checks an artifact against its PyTorch model) does not load the training loop."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from kdnas_deploy.data.batching import MODEL_INPUTS, sorted_row_batches
from kdnas_deploy.data.tasks import Task, compute_metrics


def sorted_batches(dataset: Any, batch_size: int, pad_token_id: int = 0) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
    """(row indices, padded batch of tensors) in length order, so batches carry little padding: the numpy batches
    ONNX Runtime scores (`batching.sorted_row_batches`), as torch tensors."""
    for idx, batch in sorted_row_batches(dataset, batch_size, pad_token_id):
        yield idx, {k: torch.from_numpy(v) for k, v in batch.items()}


@torch.no_grad()
def predict_logits(model: nn.Module, dataset: Any, batch_size: int = 128, pad_token_id: int = 0,
                   device: torch.device | str = "cpu") -> np.ndarray:
    """Logits for every row, computed in length-sorted batches and returned in row order."""
    was_training = model.training
    model.eval()
    out = np.zeros((len(dataset), model.config.num_labels), dtype=np.float32)
    for idx, batch in sorted_batches(dataset, batch_size, pad_token_id):
        inputs = {k: batch[k].to(device) for k in MODEL_INPUTS}
        out[idx] = model(**inputs).logits.float().cpu().numpy()
    model.train(was_training)
    return out


def evaluate_model(model: nn.Module, dataset: Any, task: Task, batch_size: int = 128, pad_token_id: int = 0,
                   device: torch.device | str = "cpu") -> dict[str, float]:
    logits = predict_logits(model, dataset, batch_size, pad_token_id, device)
    return compute_metrics(task, logits, np.asarray(dataset["labels"]))
