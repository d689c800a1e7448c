from __future__ import annotations

import math

import pytest
import torch

from kdnas_deploy.distill.losses import (
    HiddenProjection,
    attention_relation_loss,
    hidden_loss,
    logit_kd,
    masked_mse,
    relation_heads,
    relation_kl,
)


def test_logit_kd_known_value() -> None:
    teacher = torch.tensor([[math.log(3.0), 0.0]])  # p = (0.75, 0.25)
    student = torch.zeros(1, 2)  # q = (0.5, 0.5)
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert logit_kd(student, teacher).item() == pytest.approx(expected, rel=1e-6)
    # T=2: p = softmax(log3 / 2, 0) = (sqrt3, 1) / (sqrt3 + 1), times T^2
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    expected_t2 = 4 * (p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5))
    assert logit_kd(student, teacher, temperature=2.0).item() == pytest.approx(expected_t2, rel=1e-6)
    assert logit_kd(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)


def test_logit_kd_regression_is_mse() -> None:
    assert logit_kd(torch.tensor([[1.0], [3.0]]), torch.tensor([[2.0], [1.0]]), regression=True).item() == pytest.approx(2.5)


def test_masked_mse_ignores_padding() -> None:
    mask = torch.tensor([[1, 1, 0]])
    a = torch.tensor([[[1.0, 2.0], [0.0, 0.0], [9.0, 9.0]]])
    b = torch.zeros(1, 3, 2)
    assert masked_mse(a, b, mask).item() == pytest.approx((1 + 4) / 4)
    a2 = a.clone()
    a2[0, 2] = -100.0
    assert masked_mse(a2, b, mask).item() == masked_mse(a, b, mask).item()


def test_projection_starts_as_inverse_slice() -> None:
    proj = HiddenProjection(2, 3)
    out = proj(torch.tensor([[[1.0, 2.0]]]))
    assert out.tolist() == [[[1.0, 2.0, 0.0]]]
    mask = torch.ones(1, 1)
    teacher = [torch.tensor([[[1.0, 2.0, 3.0]]])]
    assert hidden_loss([torch.tensor([[[1.0, 2.0]]])], teacher, proj, mask).item() == pytest.approx(9 / 3)


def test_relation_heads_divide_both_widths() -> None:
    assert relation_heads(384, 384, 12) == 12
    assert relation_heads(312, 384, 12) == 12  # gcd 24
    assert relation_heads(128, 384, 12) == 8
    assert relation_heads(100, 384, 12) == 4


def _loop_relation_kl(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, heads: int) -> float:
    """The definition written out slowly: per batch row, relation head and real query token."""
    total, count = 0.0, 0
    for b in range(s.shape[0]):
        real = [i for i in range(s.shape[1]) if mask[b, i]]
        for r in range(heads):
            ds, dt = s.shape[-1] // heads, t.shape[-1] // heads
            xs = s[b, real, r * ds:(r + 1) * ds]
            xt = t[b, real, r * dt:(r + 1) * dt]
            ps = torch.softmax(xs @ xs.T / math.sqrt(ds), -1)
            pt = torch.softmax(xt @ xt.T / math.sqrt(dt), -1)
            total += float((pt * (pt.log() - ps.log())).sum())
            count += len(real)
    return total / count


def test_relation_kl_matches_definition_across_widths() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 12), torch.randn(2, 5, 20)  # widths 12 and 20, 4 relation heads (3 and 5 dims)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    got = relation_kl(s, t, mask, 4).item()
    assert got == pytest.approx(_loop_relation_kl(s, t, mask, 4), rel=1e-5)
    assert got > 0
    assert relation_kl(t, t, mask, 4).item() == pytest.approx(0.0, abs=1e-6)
    s2 = s.clone()
    s2[1, 3:] = 50.0  # padding positions change, loss must not
    assert relation_kl(s2, t, mask, 4).item() == pytest.approx(got, rel=1e-6)


def test_attention_relation_loss_is_mean_of_q_k_v() -> None:
    torch.manual_seed(1)
    mask = torch.ones(1, 4)
    s = tuple(torch.randn(1, 4, 8) for _ in range(3))
    t = tuple(torch.randn(1, 4, 16) for _ in range(3))
    parts = [relation_kl(a, b, mask, 2).item() for a, b in zip(s, t)]
    assert attention_relation_loss(s, t, mask, 2).item() == pytest.approx(sum(parts) / 3, rel=1e-6)
