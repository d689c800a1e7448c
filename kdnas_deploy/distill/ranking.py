"""Ranking a teacher's units by importance, so that inheriting a narrower student keeps the ones that matter.

Inheritance slices a teacher to a student's widths by taking the *first* attention heads, FFN neurons and
hidden dimensions. In a trained model that order is arbitrary: a student with a quarter of the FFN keeps a
random quarter of it. `rank_teacher` returns a copy of the teacher whose heads and FFN neurons (per layer)
and hidden dimensions (model-wide, since every layer reads and writes the same residual stream) are permuted
into descending importance, so the same slicing keeps the most important units. This is DynaBERT's "network
rewiring" (Hou et al. 2020) extended to the hidden size.

A permutation of these units changes no output, so the ranked copy is also the teacher the student is distilled
from; hidden-state and attention-relation losses then compare the student with the teacher in the same unit
order (tests hold the copy to the teacher's outputs).

Importance is first-order Taylor (Michel et al. 2019, "Are sixteen heads really better than one?"; Molchanov
et al. 2019): the estimated change in the task loss when a unit's output is zeroed, |sum over tokens of a *
dL/da| for one example, summed over examples. Heads are scored at the attention output's input (a head's
context vectors), FFN neurons at the FFN output's input (after the activation), hidden dimensions at every
LayerNorm output (the residual stream as each layer hands it on). The loss is the task loss on the gold labels:
at the teacher's own predictions the distillation loss has zero gradient.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kdnas_deploy.distill.losses import label_loss
from kdnas_deploy.distill.student import LAYER_RE, param_dims
from kdnas_deploy.distill.evaluation import sorted_batches
from kdnas_deploy.data.encode import MODEL_INPUTS
from kdnas_deploy.util.errors import KdnasError

#: Training rows the importance is estimated on: enough that rankings are stable (Michel et al. use a few
#: hundred examples), few enough that it costs seconds next to a proxy run's minutes.
RANKING_ROWS = 512
RANKING_BATCH = 32


@dataclass
class Importance:
    """Summed first-order importance of every unit: per layer for heads and FFN neurons, model-wide for hidden."""

    heads: list[np.ndarray]
    ffn: list[np.ndarray]
    hidden: np.ndarray
    rows: int

    def head_order(self, layer: int) -> np.ndarray:
        return _descending(self.heads[layer])

    def ffn_order(self, layer: int) -> np.ndarray:
        return _descending(self.ffn[layer])

    def hidden_order(self) -> np.ndarray:
        return _descending(self.hidden)


def _descending(scores: np.ndarray) -> np.ndarray:
    return np.argsort(-scores, kind="stable")


def importance_rows(dataset: Any, rows: int = RANKING_ROWS, seed: int = 0) -> Any:
    """A seeded sample of at most `rows` training rows (all of a smaller set)."""
    if len(dataset) <= rows:
        return dataset
    pick = np.random.default_rng(seed).choice(len(dataset), size=rows, replace=False)
    return dataset.select(sorted(int(i) for i in pick))


def unit_importance(model: Any, dataset: Any, is_regression: bool, pad_token_id: int = 0,
                    batch_size: int = RANKING_BATCH) -> Importance:
    """First-order importance of every head, FFN neuron and hidden dimension of a BERT-family classifier,
    estimated on `dataset` (tokenised rows with labels). The model's weights and mode are left as they were."""
    if len(dataset) == 0:
        raise KdnasError("unit importance needs at least one training row")
    config = model.config
    n_layers, n_heads = config.num_hidden_layers, config.num_attention_heads
    head_size = config.hidden_size // n_heads
    layers = model.bert.encoder.layer
    sites: dict[str, torch.Tensor] = {}
    heads = [torch.zeros(n_heads, dtype=torch.float64) for _ in range(n_layers)]
    ffn = [torch.zeros(config.intermediate_size, dtype=torch.float64) for _ in range(n_layers)]
    hidden = torch.zeros(config.hidden_size, dtype=torch.float64)

    def keep_input(name: str):  # type: ignore[no-untyped-def]
        def hook(_module: Any, inputs: tuple) -> None:
            inputs[0].retain_grad()
            sites[name] = inputs[0]
        return hook

    def keep_output(name: str):  # type: ignore[no-untyped-def]
        def hook(_module: Any, _inputs: tuple, output: torch.Tensor) -> None:
            output.retain_grad()
            sites[name] = output
        return hook

    def taylor(name: str) -> torch.Tensor:
        act = sites[name]
        return (act.detach() * act.grad).double().sum(dim=1)  # (batch, units): a * dL/da over tokens

    handles = [model.bert.embeddings.LayerNorm.register_forward_hook(keep_output("ln:emb"))]
    for i, layer in enumerate(layers):
        handles.append(layer.attention.output.dense.register_forward_pre_hook(keep_input(f"ctx:{i}")))
        handles.append(layer.output.dense.register_forward_pre_hook(keep_input(f"ffn:{i}")))
        handles.append(layer.attention.output.LayerNorm.register_forward_hook(keep_output(f"ln:att{i}")))
        handles.append(layer.output.LayerNorm.register_forward_hook(keep_output(f"ln:out{i}")))
    was_training = model.training
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    # Dropout off: the ranking is of the model as it predicts. Gradients on, so activations carry them.
    model.eval()
    model.requires_grad_(True)
    device = next(model.parameters()).device
    try:
        for _rows, batch in sorted_batches(dataset, batch_size, pad_token_id):
            inputs = {k: batch[k].to(device) for k in MODEL_INPUTS}
            labels = batch["labels"].to(device)
            with torch.enable_grad():
                logits = model(**inputs).logits
                # Summed over the batch, not averaged, so every row weighs the same whatever its batch's size.
                (label_loss(logits, labels, is_regression) * len(labels)).backward()
            for i in range(n_layers):
                ctx = taylor(f"ctx:{i}").view(-1, n_heads, head_size).sum(dim=-1)
                heads[i] += ctx.abs().sum(dim=0).cpu()
                ffn[i] += taylor(f"ffn:{i}").abs().sum(dim=0).cpu()
            for name in [n for n in sites if n.startswith("ln:")]:
                hidden += taylor(name).abs().sum(dim=0).cpu()
            sites.clear()
            model.zero_grad(set_to_none=True)
    finally:
        for handle in handles:
            handle.remove()
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
        model.train(was_training)
    return Importance([h.numpy() for h in heads], [f.numpy() for f in ffn], hidden.numpy(), len(dataset))


@torch.no_grad()
def permute_units(model: Any, hidden: np.ndarray, heads: list[np.ndarray], ffn: list[np.ndarray]) -> None:
    """Reorders, in place, the hidden dimensions, each layer's heads and each layer's FFN neurons of a BERT
    classifier: unit k of the result is unit `order[k]` of the input. Outputs are unchanged."""
    config = model.config
    head_size = config.hidden_size // config.num_attention_heads
    hidden_idx = torch.as_tensor(np.asarray(hidden), dtype=torch.long)
    for name, param in model.named_parameters():
        kinds = param_dims(name)
        if not kinds:
            continue
        match = LAYER_RE.search(name)
        layer = int(match.group(1)) if match else None
        value = param.data
        for axis, kind in enumerate(kinds):
            if kind == "h":
                index = hidden_idx
            elif kind == "a" and layer is not None:
                order = torch.as_tensor(np.asarray(heads[layer]), dtype=torch.long)
                index = (order[:, None] * head_size + torch.arange(head_size)[None, :]).reshape(-1)
            elif kind == "f" and layer is not None:
                index = torch.as_tensor(np.asarray(ffn[layer]), dtype=torch.long)
            else:
                continue
            value = value.index_select(axis, index)
        param.data.copy_(value)


def rank_teacher(teacher: Any, dataset: Any, is_regression: bool, pad_token_id: int = 0,
                 rows: int = RANKING_ROWS, seed: int = 0) -> tuple[Any, Importance]:
    """A copy of `teacher` with its units in descending importance (estimated on a seeded sample of at most
    `rows` rows of `dataset`), and the importance itself. The teacher is not modified."""
    ranked = copy.deepcopy(teacher)
    importance = unit_importance(ranked, importance_rows(dataset, rows, seed), is_regression, pad_token_id)
    n_layers = ranked.config.num_hidden_layers
    permute_units(ranked, importance.hidden_order(), [importance.head_order(i) for i in range(n_layers)],
                  [importance.ffn_order(i) for i in range(n_layers)])
    return ranked, importance
