"""The teacher's outputs computed once for a search's proxy rows: what students read from it equals what the teacher
computes in their own batches, and a student distilled from it learns the same."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from kdnas_deploy.data.sources import DataSource
from kdnas_deploy.distill.api import distill_student
from kdnas_deploy.data.prepare import prepare, proxy_split
from kdnas_deploy.distill.objective import DistillConfig, DistillationObjective
from kdnas_deploy.distill.student import build_student
from kdnas_deploy.distill.teacher_cache import TeacherCache
from kdnas_deploy.distill.trainer import TrainConfig, _batches, batch_order
from kdnas_deploy.data.encode import ROW_IDS
from kdnas_deploy.util.errors import KdnasError
from kdnas_deploy.model_folder import load_classifier
from kdnas_deploy.space import StudentArch


@pytest.fixture(scope="module")
def proxy(tiny_teacher_dir: Path, sst2_slice: Path):
    prepared = prepare(str(tiny_teacher_dir), DataSource(task="sst2", data_dir=str(sst2_slice)), 64)
    split = proxy_split(prepared, 300, 200, seed=0)
    rows = prepared.encoded.train
    train = rows.select(split.train_rows).flatten_indices(keep_in_memory=True)
    held_out = rows.select(split.held_out_rows).flatten_indices(keep_in_memory=True)
    return load_classifier(str(tiny_teacher_dir)), prepared, train, held_out


def test_cached_outputs_are_what_the_teacher_computes_in_the_batch(proxy) -> None:
    teacher, prepared, train, _ = proxy
    pad = prepared.encoded.pad_token_id
    cache = TeacherCache.for_distillation(teacher, train, pad, DistillConfig())
    assert cache is not None and cache.layers == (0, 1) and cache.qkv_layer == 1 and cache.matches(train)
    assert cache.tokens.dtype == torch.float32
    student = build_student(teacher, StudentArch(1, 64, 4, 128), "random", seed=0).eval()  # no dropout: same forward
    live = DistillationObjective(student, teacher, DistillConfig(), regression=False)
    cached = DistillationObjective(student, teacher, DistillConfig(), regression=False, teacher_cache=cache)
    assert cached.wants_rows and not live.wants_rows
    order = batch_order([len(r) for r in train["input_ids"]], 32, 0, torch.Generator().manual_seed(0))  # random lengths
    for batch in list(_batches(train, order, pad, with_rows=True))[:3]:
        with torch.no_grad():
            _, live_parts = live(batch)
            _, cached_parts = cached(batch)
        assert live_parts.keys() == cached_parts.keys() == {"logits", "hidden", "relation"}
        for k in live_parts:  # other batch shapes round differently, nothing more
            assert float(cached_parts[k]) == pytest.approx(float(live_parts[k]), rel=1e-4, abs=1e-6), k
        got = cache.gather(batch[ROW_IDS], batch["input_ids"].shape[1], "cpu")
        with torch.no_grad():
            out = teacher(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}, output_hidden_states=True)
        mask = batch["attention_mask"].bool()
        assert torch.allclose(got.logits, out.logits, atol=1e-5)
        assert torch.allclose(got.hidden[1][mask], out.hidden_states[2][mask], atol=1e-4)
        assert torch.all(got.hidden[1][~mask] == 0)  # padding is zeros: every loss masks it
    live.close(), cached.close()


def test_a_cache_is_used_only_where_it_holds_what_the_student_reads(proxy) -> None:
    teacher, prepared, train, _ = proxy
    pad = prepared.encoded.pad_token_id
    logits_only = TeacherCache.for_distillation(teacher, train, pad, DistillConfig(hidden_weight=0, relation_weight=0))
    assert logits_only is not None and logits_only.layers == () and logits_only.qkv_layer is None
    assert logits_only.tokens.shape[1] == 0
    student = build_student(teacher, StudentArch(1, 64, 4, 128), "random", seed=0)
    full = DistillationObjective(student, teacher, DistillConfig(), False, logits_only)
    light = DistillationObjective(student, teacher, DistillConfig(hidden_weight=0, relation_weight=0), False, logits_only)
    assert not full.wants_rows and light.wants_rows
    full.close(), light.close()  # the teacher's hooks would stay on the shared teacher
    # too little memory: fp16 first, then no cache at all
    need = sum(len(r) for r in train["input_ids"]) * 5 * 64 * 4
    half = TeacherCache.for_distillation(teacher, train, pad, DistillConfig(), budget_bytes=need - 1)
    assert half is not None and half.tokens.dtype == torch.float16
    assert TeacherCache.for_distillation(teacher, train, pad, DistillConfig(), budget_bytes=need // 4) is None


def test_a_student_distilled_from_the_cache_matches_one_distilled_live(proxy) -> None:
    teacher, prepared, train, held_out = proxy
    pad, task = prepared.encoded.pad_token_id, prepared.task
    cache = TeacherCache.for_distillation(teacher, train, pad, DistillConfig())
    config = TrainConfig(epochs=2, seed=3, learning_rate=1e-3)
    arch = StudentArch(1, 64, 4, 128)
    live = distill_student(teacher, task, pad, arch, train, held_out, init="random", train_config=config)
    first = distill_student(teacher, task, pad, arch, train, held_out, init="random", train_config=config,
                            teacher_cache=cache)
    again = distill_student(teacher, task, pad, arch, train, held_out, init="random", train_config=config,
                            teacher_cache=cache)
    assert first.metrics == again.metrics  # deterministic with the cache, like without
    for a, b in zip(first.student.state_dict().values(), again.student.state_dict().values()):
        assert torch.equal(a, b)
    live_loss = [h["loss"] for h in live.train.history]
    cached_loss = [h["loss"] for h in first.train.history]
    assert cached_loss == pytest.approx(live_loss, rel=1e-3)
    assert first.metrics["score"] == pytest.approx(live.metrics["score"], abs=0.02)
    with pytest.raises(KdnasError, match="other training rows"):
        distill_student(teacher, task, pad, arch, held_out, held_out, init="random", train_config=config,
                        teacher_cache=cache)
    with pytest.raises(KdnasError, match="another teacher"):  # ranked: distilled from a permuted copy, not this one
        distill_student(teacher, task, pad, arch, train, held_out, init="ranked", train_config=config,
                        teacher_cache=cache)


def test_the_proxy_evaluator_builds_the_cache_once_and_never_ships_it(proxy) -> None:
    from kdnas_deploy.search.evaluator import ProxyEvaluator

    teacher, prepared, _, _ = proxy
    evaluate = ProxyEvaluator.from_prepared(teacher, prepared, 200, 100, init="random",
                                            train_config=TrainConfig(epochs=1))
    score, metrics = evaluate(StudentArch(1, 32, 2, 64))
    cache = evaluate._cache
    assert cache is not None and 0 <= score <= 1
    evaluate(StudentArch(1, 64, 4, 128))
    assert evaluate._cache is cache  # built once for every candidate
    shipped = pickle.loads(pickle.dumps(evaluate))
    assert shipped._cache is None and not shipped._cache_built
    assert shipped(StudentArch(1, 32, 2, 64))[0] == pytest.approx(score)  # a worker builds its own, the same
