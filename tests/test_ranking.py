"""Importance ranking of a teacher's units: the ranked copy computes what the teacher computes, units that cannot
matter rank last, and a sliced student inherits the units that do."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset

from kdnas_deploy.data.sources import DataSource
from kdnas_deploy.distill.api import distill
from kdnas_deploy.distill.ranking import importance_rows, rank_teacher, unit_importance
from kdnas_deploy.distill.student import build_student
from kdnas_deploy.distill.trainer import TrainConfig
from kdnas_deploy.search.settings import SearchSettings, load_settings
from kdnas_deploy.util.errors import KdnasError
from kdnas_deploy.space import StudentArch
from test_student import _inputs, tiny_teacher


def _rows(n: int = 40, labels: int = 3, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 16, size=n)
    return Dataset.from_dict({
        "input_ids": [[2, *rng.integers(5, 120, size=k - 2).tolist(), 3] for k in lengths],
        "attention_mask": [[1] * k for k in lengths],
        "token_type_ids": [[0] * (k // 2) + [1] * (k - k // 2) for k in lengths],
        "labels": rng.integers(0, labels, size=n).tolist(),
    })


def _silence(model, heads: dict[int, list[int]], neurons: dict[int, list[int]], hidden: list[int]) -> None:  # type: ignore[no-untyped-def]
    """Units whose output nothing reads (zeroed outgoing weights), or, for hidden dimensions, that are zero
    wherever a LayerNorm writes the residual stream: their first-order importance is exactly zero."""
    size = model.config.hidden_size // model.config.num_attention_heads
    with torch.no_grad():
        for layer, dead in heads.items():
            weight = model.bert.encoder.layer[layer].attention.output.dense.weight
            for h in dead:
                weight[:, h * size:(h + 1) * size] = 0
        for layer, dead in neurons.items():
            model.bert.encoder.layer[layer].output.dense.weight[:, dead] = 0
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p[hidden] = 0


def test_the_ranked_copy_computes_what_the_teacher_computes() -> None:
    teacher = tiny_teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ranked, importance = rank_teacher(teacher, _rows(), is_regression=False)
    with torch.no_grad():
        expected, got = teacher(**_inputs()).logits, ranked(**_inputs()).logits
    assert torch.allclose(expected, got, atol=1e-5), (expected - got).abs().max()
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # the teacher is left alone
    assert not teacher.training and all(p.requires_grad for p in teacher.parameters())
    assert importance.rows == 40 and len(importance.heads) == 4 and importance.ffn[0].shape == (128,)
    # and it really was reordered: the units are not in the teacher's order any more
    assert not torch.equal(ranked.bert.encoder.layer[0].intermediate.dense.weight,
                           teacher.bert.encoder.layer[0].intermediate.dense.weight)


def test_units_that_cannot_matter_rank_last_and_a_sliced_student_leaves_them_out() -> None:
    teacher = tiny_teacher()
    live_neurons = [5, 17, 40, 99]
    _silence(teacher, heads={1: [0, 1]}, neurons={2: [i for i in range(128) if i not in live_neurons]}, hidden=list(range(8)))
    importance = unit_importance(teacher, _rows(), is_regression=False)
    assert np.all(importance.heads[1][:2] == 0) and np.all(importance.heads[1][2:] > 0)
    assert set(importance.ffn_order(2)[:4]) == set(live_neurons)
    assert set(importance.hidden_order()[-8:]) == set(range(8))

    ranked, _ = rank_teacher(teacher, _rows(), is_regression=False)
    arch = StudentArch(4, 56, 4, 4)  # 56 of 64 hidden dimensions, 4 of 128 neurons; heads 14 wide of 16
    first, best = build_student(teacher, arch), build_student(ranked, arch)
    # taken first, layer 2's 4 neurons are dead; ranked, they are the 4 live ones with their outgoing weights
    assert torch.count_nonzero(first.bert.encoder.layer[2].output.dense.weight) == 0
    got = best.bert.encoder.layer[2].output.dense.weight[:, :4]
    live = teacher.bert.encoder.layer[2].output.dense.weight[8:, live_neurons]  # rows: the 56 live hidden dims
    assert sorted(got.abs().sum(dim=0).tolist()) == pytest.approx(sorted(live.abs().sum(dim=0).tolist()), rel=1e-5)
    # the 8 dead hidden dimensions are the ones a 56-wide student leaves out: its LayerNorms keep no zeros
    assert torch.count_nonzero(first.bert.embeddings.LayerNorm.weight) == 48
    assert torch.count_nonzero(best.bert.embeddings.LayerNorm.weight) == 56
    # and the dead heads of layer 1 are not among its first two
    order = importance.head_order(1)
    assert set(order[:2].tolist()).isdisjoint({0, 1})


def test_regression_and_sampling() -> None:
    teacher = tiny_teacher(labels=1)
    rows = _rows(labels=2).map(lambda r: {"labels": float(r["labels"]) * 2.5})
    _, importance = rank_teacher(teacher, rows, is_regression=True, rows=16)
    assert importance.rows == 16 and np.all(np.isfinite(importance.hidden)) and importance.hidden.sum() > 0
    assert importance_rows(rows, 16, seed=1)["input_ids"] == importance_rows(rows, 16, seed=1)["input_ids"]
    assert len(importance_rows(rows, 100)) == 40
    with pytest.raises(KdnasError, match="at least one training row"):
        unit_importance(teacher, rows.select([]), is_regression=True)
    with pytest.raises(KdnasError, match="rank the teacher first"):
        build_student(teacher, StudentArch(1, 32, 2, 64), init="ranked")  # type: ignore[arg-type]


def test_distill_ranked_records_it(tiny_teacher_dir: Path, sst2_slice: Path, tmp_path: Path) -> None:
    info = distill(str(tiny_teacher_dir), DataSource(task="sst2", data_dir=str(sst2_slice)), "L1-H48-A4-I64",
                   tmp_path / "s", init="ranked", proxy=200, held_out=100, max_length=64, train_config=TrainConfig(epochs=1))
    assert info.init == "ranked" and json.loads((tmp_path / "s" / "kdnas.json").read_text())["init"] == "ranked"
    assert 0 <= info.metrics["held_out"]["score"] <= 1


def test_search_settings_take_the_init_and_old_runs_keep_inherit(tmp_path: Path) -> None:
    with pytest.raises(KdnasError, match="--init 'zeros': use inherit, ranked, random"):
        SearchSettings(teacher="t", data={"task": "sst2"}, init="zeros")
    settings = SearchSettings(teacher="t", data={"task": "sst2"}, init="ranked")
    (tmp_path / "run.json").write_text(json.dumps({"settings": {"teacher": "t", "data": {"task": "sst2"}}}))
    assert settings.init == "ranked" and load_settings(tmp_path).init == "inherit"
