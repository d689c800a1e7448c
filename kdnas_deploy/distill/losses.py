"""Distillation losses: soft targets on logits, hidden states through a learned projection, and MiniLM-style
attention relations. All of them take an attention mask and ignore padding, so padding a batch further never
changes a loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def logit_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0, regression: bool = False) -> torch.Tensor:
    """KL(teacher || student) of temperature-softened distributions, times T^2 (Hinton et al.) so its gradient
    scale does not shrink as T grows; mean squared error on the raw outputs for regression."""
    if regression:
        return F.mse_loss(student.float().view(-1), teacher.float().view(-1))
    t = temperature
    log_p_student = F.log_softmax(student.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher.float() / t, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean") * t * t


def label_loss(logits: torch.Tensor, labels: torch.Tensor, regression: bool = False) -> torch.Tensor:
    """The ordinary supervised loss on gold labels (cross-entropy, or MSE for regression)."""
    if regression:
        return F.mse_loss(logits.float().view(-1), labels.float().view(-1))
    return F.cross_entropy(logits.float(), labels)


class HiddenProjection(nn.Module):
    """Maps student hidden states to the teacher's width (TinyBERT's W_h), one matrix shared by all layers.

    It starts as the inverse of inheritance's slicing: student dimension i to teacher dimension i, so an
    inherited student begins near zero loss on the dimensions it kept; the rest is learned.
    """

    def __init__(self, student_hidden: int, teacher_hidden: int):
        super().__init__()
        self.linear = nn.Linear(student_hidden, teacher_hidden)
        with torch.no_grad():
            self.linear.weight.zero_()
            n = min(student_hidden, teacher_hidden)
            self.linear.weight[:n, :n] = torch.eye(n)
            self.linear.bias.zero_()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden)


def masked_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the real (unpadded) tokens, averaged over dimensions."""
    weight = mask.to(student.dtype).unsqueeze(-1)
    diff = (student.float() - teacher.float()) ** 2 * weight
    return diff.sum() / (weight.sum() * student.shape[-1]).clamp_min(1.0)


def hidden_loss(student_states: list[torch.Tensor], teacher_states: list[torch.Tensor],
                projection: nn.Module, mask: torch.Tensor) -> torch.Tensor:
    """Mean over matched layer pairs of the masked MSE between projected student and teacher hidden states."""
    losses = [masked_mse(projection(s), t, mask) for s, t in zip(student_states, teacher_states, strict=True)]
    return torch.stack(losses).mean()


def relation_heads(student_width: int, teacher_width: int, wanted: int) -> int:
    """The most relation heads, at most `wanted`, that split both widths evenly."""
    common = math.gcd(student_width, teacher_width)
    return max(r for r in range(1, wanted + 1) if common % r == 0)


def _relation_log_probs(x: torch.Tensor, heads: int, mask: torch.Tensor) -> torch.Tensor:
    """log softmax(X_r X_r^T / sqrt(d_r)) per relation head r; padded keys get no probability."""
    batch, length, width = x.shape
    d = width // heads
    x = x.float().view(batch, length, heads, d).transpose(1, 2)
    scores = x @ x.transpose(-1, -2) / math.sqrt(d)
    # A large finite negative, not -inf: the KL below multiplies teacher probabilities (0 here) by log ratios.
    scores = scores.masked_fill(~mask.bool()[:, None, None, :], -1e9)
    return F.log_softmax(scores, dim=-1)


def relation_kl(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, heads: int) -> torch.Tensor:
    """MiniLMv2's self-attention relation loss for one kind of vector (queries, keys or values).

    Both sides are split into the same number of relation heads, whatever their own head counts and widths,
    and the token-to-token relation distributions are matched with KL(teacher || student), averaged over
    relation heads and real query tokens.
    """
    log_s = _relation_log_probs(student, heads, mask)
    log_t = _relation_log_probs(teacher, heads, mask)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)  # batch, heads, queries
    weight = mask.to(kl.dtype)[:, None, :]
    return (kl * weight).sum() / (weight.sum() * heads).clamp_min(1.0)


def attention_relation_loss(student_qkv: tuple[torch.Tensor, ...], teacher_qkv: tuple[torch.Tensor, ...],
                            mask: torch.Tensor, heads: int) -> torch.Tensor:
    """Mean of the query-query, key-key and value-value relation losses (MiniLMv2)."""
    return torch.stack([relation_kl(s, t, mask, heads) for s, t in zip(student_qkv, teacher_qkv, strict=True)]).mean()
