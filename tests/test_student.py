from __future__ import annotations

import pytest
import torch

from kdnas_deploy.distill.student import build_student, layer_map, parse_layer_map
from kdnas_deploy.util.errors import KdnasError
from kdnas_deploy.space import StudentArch


def tiny_teacher(layers: int = 4, hidden: int = 64, heads: int = 4, ffn: int = 128, labels: int = 3, attn: str = "eager"):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=120, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=ffn, num_labels=labels, max_position_embeddings=64, attn_implementation=attn)
    torch.manual_seed(7)
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():  # non-trivial LayerNorm and bias values, so a wrong slice cannot hide behind ones and zeros
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _inputs(batch: int = 3, length: int = 11) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, 7:] = 0
    return {"input_ids": torch.randint(0, 120, (batch, length)), "attention_mask": mask,
            "token_type_ids": torch.cat([torch.zeros(batch, 5), torch.ones(batch, length - 5)], 1).long()}


def test_layer_map() -> None:
    assert layer_map(3, 6) == [1, 3, 5]
    assert layer_map(4, 12) == [2, 5, 8, 11]
    assert layer_map(6, 6) == list(range(6))
    assert layer_map(1, 6) == [5]
    assert layer_map(8, 6)[-1] == 5
    assert parse_layer_map("2,4,6", 3, 6) == [1, 3, 5]
    with pytest.raises(KdnasError, match="names 2 teacher layers"):
        parse_layer_map("2,4", 3, 6)
    with pytest.raises(KdnasError, match="numbered 1..6"):
        parse_layer_map("0,4,6", 3, 6)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_inherit_same_shape_is_exact(attn: str) -> None:
    teacher = tiny_teacher(attn=attn)
    student = build_student(teacher, StudentArch.from_config(teacher.config), "inherit", seed=123, attn_implementation=attn).eval()
    inputs = _inputs()
    with torch.no_grad():
        t, s = teacher(**inputs, output_hidden_states=True), student(**inputs, output_hidden_states=True)
    assert torch.equal(s.logits, t.logits)
    assert all(torch.equal(a, b) for a, b in zip(s.hidden_states, t.hidden_states))
    random = build_student(teacher, StudentArch.from_config(teacher.config), "random", seed=123).eval()
    with torch.no_grad():
        assert not torch.allclose(random(**inputs).logits, t.logits)


def test_inherit_slices_heads_layers_and_ffn() -> None:
    teacher = tiny_teacher()  # 4 x 64, 4 heads of 16
    student = build_student(teacher, StudentArch(2, 32, 2, 48))  # 2 heads of 16
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    # student layer 0 <- teacher layer 1, layer 1 <- teacher layer 3
    tq, sq = t_sd["bert.encoder.layer.1.attention.self.query.weight"], s_sd["bert.encoder.layer.0.attention.self.query.weight"]
    assert torch.equal(sq, tq[:32, :32])  # heads 0-1, all 16 dims each, first 32 hidden inputs
    assert torch.equal(s_sd["bert.encoder.layer.1.intermediate.dense.weight"], t_sd["bert.encoder.layer.3.intermediate.dense.weight"][:48, :32])
    assert torch.equal(s_sd["bert.encoder.layer.1.output.dense.weight"], t_sd["bert.encoder.layer.3.output.dense.weight"][:32, :48])
    assert torch.equal(s_sd["bert.embeddings.word_embeddings.weight"], t_sd["bert.embeddings.word_embeddings.weight"][:, :32])
    assert torch.equal(s_sd["classifier.weight"], t_sd["classifier.weight"][:, :32])


def test_inherit_narrower_heads_takes_each_heads_first_dims() -> None:
    teacher = tiny_teacher()  # 4 heads of 16
    student = build_student(teacher, StudentArch(1, 32, 4, 64))  # 4 heads of 8
    tk = teacher.state_dict()["bert.encoder.layer.3.attention.self.key.weight"]
    sk = student.state_dict()["bert.encoder.layer.0.attention.self.key.weight"]
    rows = [h * 16 + j for h in range(4) for j in range(8)]
    assert torch.equal(sk, tk[rows, :32])
    to = teacher.state_dict()["bert.encoder.layer.3.attention.output.dense.weight"]
    assert torch.equal(student.state_dict()["bert.encoder.layer.0.attention.output.dense.weight"], to[:32][:, rows])


def test_wider_student_keeps_overlap_and_random_rest() -> None:
    teacher = tiny_teacher()
    student = build_student(teacher, StudentArch(2, 96, 6, 256), seed=1)
    s_ffn = student.state_dict()["bert.encoder.layer.0.intermediate.dense.weight"]
    t_ffn = teacher.state_dict()["bert.encoder.layer.1.intermediate.dense.weight"]
    assert torch.equal(s_ffn[:128, :64], t_ffn)
    assert s_ffn[128:].abs().sum() > 0  # not zero-filled: the model still trains
    with torch.no_grad():
        assert torch.isfinite(student.eval()(**_inputs()).logits).all()


def test_any_arch_string_builds() -> None:
    teacher = tiny_teacher(hidden=48, heads=12, ffn=96)
    student = build_student(teacher, StudentArch.parse("L4-H36-A12-I80"))  # TinyBERT-like odd widths
    assert student.config.hidden_size == 36 and student.config.num_labels == 3
    with torch.no_grad():
        assert student.eval()(**_inputs()).logits.shape == (3, 3)
    with pytest.raises(KdnasError, match="not divisible"):
        StudentArch.parse("L4-H100-A12-I80")
    with pytest.raises(KdnasError, match="unknown initialisation"):
        build_student(teacher, StudentArch(1, 48, 12, 96), init="copy")  # type: ignore[arg-type]
