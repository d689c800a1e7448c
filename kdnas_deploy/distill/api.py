"""The distillation engine as a library: make a teacher, distil a student, evaluate; what the CLI calls.

`distill_student` is the core the search calls for every candidate (teacher and encoded data already in
memory); `distill` and `make_teacher` wrap it and fine-tuning with loading, proxy sampling, evaluation on the
dev split and saving a model folder.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kdnas_deploy.data.sources import DataSource, subsample
from kdnas_deploy.distill import DEFAULT_INIT
from kdnas_deploy.distill.objective import DistillationObjective, DistillConfig, SupervisedObjective
from kdnas_deploy.distill.ranking import rank_teacher
from kdnas_deploy.distill.student import Init, build_student
from kdnas_deploy.distill.teacher_cache import TeacherCache
from kdnas_deploy.distill.evaluation import evaluate_model
from kdnas_deploy.distill.trainer import (
    TrainConfig,
    TrainProgress,
    TrainResult,
    CHECKPOINT,
    resolve_device,
    seed_everything,
    train,
)
from kdnas_deploy.util.errors import KdnasError, first_line
from kdnas_deploy.util.files import writable_dir
from kdnas_deploy.util.hashing import stable_hash
from kdnas_deploy.data.prepare import check_fits_task, prepare, proxy_split, source_from_teacher
from kdnas_deploy.model_folder import (
    ModelInfo,
    load_classifier,
    model_ref,
    read_info,
    save_model_folder,
    versions,
)
from kdnas_deploy.space import StudentArch
from kdnas_deploy.data.tasks import Task
from kdnas_deploy.teacher_config import load_teacher_config

@dataclass
class DistillResult:
    student: Any
    arch: StudentArch
    metrics: dict[str, float]
    train: TrainResult
    wall_seconds: float


def distill_student(
    teacher: Any,
    task: Task,
    pad_token_id: int,
    arch: StudentArch,
    train_set: Any,
    eval_set: Any,
    *,
    init: Init = DEFAULT_INIT,
    train_config: TrainConfig | None = None,
    distill_config: DistillConfig | None = None,
    checkpoint_dir: Path | None = None,
    key: str = "",
    progress: TrainProgress | None = None,
    teacher_cache: TeacherCache | None = None,
) -> DistillResult:
    """Builds a student of `arch` from `teacher`, distils it on `train_set`, scores it on `eval_set`.

    Takes the task and pad id rather than the whole `Prepared` so that a search can ship just the proxy rows
    to a Ray worker. `teacher_cache` (built from this teacher on `train_set`, see `TeacherCache.for_distillation`)
    replaces the teacher's forward pass at every step."""
    train_config = train_config or TrainConfig()
    distill_config = distill_config or DistillConfig()
    check_fits_task(teacher, task)
    tic = time.perf_counter()
    teacher, init = starting_point(teacher, init, train_set, task, pad_token_id, train_config.seed)
    seed_everything(train_config.seed)
    student = build_student(teacher, arch, init, seed=train_config.seed, layers=distill_config.layer_map)
    if teacher_cache is not None and not teacher_cache.matches(train_set, teacher):
        raise KdnasError("the teacher cache was built from another teacher or other training rows than these (with "
                         "--init ranked, build it from the ranked copy that `starting_point` returns)")
    objective = DistillationObjective(student, teacher, distill_config, task.is_regression, teacher_cache)
    device = resolve_device(train_config.device)
    pad = pad_token_id

    def evaluate() -> dict[str, float]:
        return evaluate_model(student, eval_set, task, train_config.eval_batch_size, pad, device)

    try:
        result = train(objective, train_set, train_config, pad_token_id=pad, evaluate=evaluate,
                       checkpoint_dir=checkpoint_dir, key=key, progress=progress)
    finally:
        objective.close()
    student.cpu().eval()
    teacher.cpu()
    return DistillResult(student, arch, result.final_metrics, result, time.perf_counter() - tic)


def starting_point(teacher: Any, init: Init, train_set: Any, task: Task, pad_token_id: int,
                   seed: int) -> tuple[Any, Init]:
    """The teacher a student is built from and distilled against, and how `build_student` starts it: `ranked`
    becomes `inherit` from the importance-ranked copy. That copy computes what the teacher computes, so it is also
    the teacher distilled from, and the student's inherited units line up with the teacher's in the hidden and
    relation losses. A search calls this once and reuses the result for every candidate."""
    if init != "ranked":
        return teacher, init
    return rank_teacher(teacher, train_set, task.is_regression, pad_token_id, seed=seed)[0], "inherit"


def label_settings(task: Task) -> dict[str, Any]:
    """The config fields that name a task's outputs (what pipelines and exporters read)."""
    if task.is_regression:
        return {"num_labels": 1, "problem_type": "regression"}
    return {"num_labels": task.num_labels, "id2label": dict(enumerate(task.label_names)),
            "label2id": {name: i for i, name in enumerate(task.label_names)}}


def _save(model: Any, tokenizer: Any, info: ModelInfo, out: Path) -> None:
    """The finished model folder; the training checkpoint it supersedes goes."""
    save_model_folder(model, tokenizer, info, out)
    (out / CHECKPOINT).unlink(missing_ok=True)


#: Bytes per trained parameter: fp32 weights, gradients and AdamW's two moments; the teacher needs its weights only.
TRAINING_BYTES_PER_PARAMETER = 16


def ensure_training_memory(arch: StudentArch, teacher_config: Any | None) -> None:
    """One line before anything is allocated when training `arch` (beside the teacher) cannot fit in memory."""
    from kdnas_deploy.util.resources import ensure_memory

    vocab = teacher_config.vocab_size if teacher_config is not None else 30522
    need = TRAINING_BYTES_PER_PARAMETER * arch.parameter_count(vocab_size=vocab)
    if teacher_config is not None:
        need += 4 * StudentArch.from_config(teacher_config).parameter_count(vocab_size=vocab)
    ensure_memory(need, f"training {arch}")


def distill(
    teacher_path: str,
    source: DataSource,
    arch: str | StudentArch,
    out: Path,
    *,
    init: Init = DEFAULT_INIT,
    proxy: int | None = None,
    held_out: int | None = None,
    train_samples: int | None = None,
    max_length: int = 128,
    train_config: TrainConfig | None = None,
    distill_config: DistillConfig | None = None,
    evaluate_dev: bool = True,
    progress: TrainProgress | None = None,
) -> ModelInfo:
    """Distils a student of `arch` from a teacher folder or hub id and saves it as a model folder in `out`.

    `proxy=N` trains on a seeded, label-stratified sample of N training rows and scores on a held-out slice
    of the training set; otherwise it trains on the whole training set (or `train_samples` seeded rows)
    and scores on the dev split. `evaluate_dev` adds dev-split metrics to a proxy run's folder.
    A checkpoint is kept in `out` after every epoch; running the same command again resumes from it.
    """
    train_config = train_config or TrainConfig()
    distill_config = distill_config or DistillConfig()
    student_arch = arch if isinstance(arch, StudentArch) else StudentArch.parse(arch)
    resolve_device(train_config.device)
    writable_dir(out, "--out")  # now, not at the first checkpoint an epoch later
    teacher_path = model_ref(teacher_path)
    teacher_config = load_teacher_config(teacher_path)
    ensure_training_memory(student_arch, teacher_config)
    teacher = load_classifier(teacher_path)  # first: a wrong teacher is the error to report, not missing data
    source = source_from_teacher(teacher_path, source)
    if distill_config.layer_map is not None and len(distill_config.layer_map) != student_arch.layers:
        raise KdnasError(f"the layer map names {len(distill_config.layer_map)} teacher layers; {student_arch} has {student_arch.layers}")
    prepared = prepare(teacher_path, source, max_length)
    encoded = prepared.encoded
    if proxy is not None:
        split = proxy_split(prepared, proxy, held_out, train_config.seed)
        train_set, eval_set = encoded.train.select(split.train_rows), encoded.train.select(split.held_out_rows)
        eval_name = "held_out"
    else:
        train_set, eval_set = subsample(encoded.train, train_samples, train_config.seed), encoded.dev
        eval_name = "dev"
    key = stable_hash({"teacher": teacher_path, "data": prepared.data.fingerprint, "arch": str(student_arch), "init": init,
                   "proxy": proxy, "held_out": held_out, "train_samples": train_samples, "max_length": max_length,
                   "train": asdict(train_config), "distill": asdict(distill_config)})
    result = distill_student(teacher, prepared.task, encoded.pad_token_id, student_arch, train_set, eval_set, init=init, train_config=train_config,
                             distill_config=distill_config, checkpoint_dir=out, key=key, progress=progress)
    metrics: dict[str, Any] = {eval_name: result.metrics}
    if proxy is not None and evaluate_dev:
        metrics["dev"] = evaluate_model(result.student, encoded.dev, prepared.task, train_config.eval_batch_size,
                                        encoded.pad_token_id)
    for name, value in label_settings(prepared.task).items():
        setattr(result.student.config, name, value)
    info = ModelInfo(
        kind="student", arch=str(student_arch), teacher=teacher_path, task=prepared.task.name,
        data={**source.to_dict(), "origin": prepared.data.origin}, label_names=list(prepared.task.label_names),
        max_length=max_length, init=init, metrics=metrics,
        training=_training_record(result.train, train_config, len(train_set), proxy, held_out, train_samples,
                                  distill_config, result.wall_seconds),
        versions=versions(),
    )
    _save(result.student, prepared.tokenizer, info, out)
    return info


def _training_record(result: TrainResult, config: TrainConfig, rows: int, proxy: int | None, held_out: int | None,
                     train_samples: int | None, distill_config: DistillConfig | None, wall: float) -> dict[str, Any]:
    record: dict[str, Any] = {
        "rows": rows, "proxy": proxy, "held_out": held_out, "train_samples": train_samples,
        "config": asdict(config), "history": result.history, "steps": result.steps,
        "train_seconds": round(result.train_seconds, 2), "wall_seconds": round(wall, 2),
        "examples_per_second": round(result.examples_per_second, 1),
    }
    if distill_config is not None:
        record["distill"] = asdict(distill_config)
    return record


def make_teacher(
    backbone: str,
    source: DataSource,
    out: Path,
    *,
    train_samples: int | None = None,
    max_length: int = 128,
    train_config: TrainConfig | None = None,
    progress: TrainProgress | None = None,
) -> ModelInfo:
    """Fine-tunes a pretrained BERT-family backbone on the task, evaluates it on dev and saves it in `out`."""
    from transformers import AutoModelForSequenceClassification

    train_config = train_config or TrainConfig(epochs=3, learning_rate=5e-5)
    resolve_device(train_config.device)
    writable_dir(out, "--out")  # now, not at the first checkpoint an epoch later
    backbone = model_ref(backbone)
    config = load_teacher_config(backbone)  # one-line errors for a missing or unsupported backbone, before any data work
    ensure_training_memory(StudentArch.from_config(config), None)
    prepared = prepare(backbone, source, max_length)
    task = prepared.task
    seed_everything(train_config.seed)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            backbone, attn_implementation="sdpa", ignore_mismatched_sizes=True, **label_settings(task))
    except Exception as exc:  # noqa: BLE001 - damaged weights raise OSError, ValueError, safetensors' own errors...
        raise KdnasError(f"cannot load backbone {backbone!r}: {first_line(exc)}") from None
    encoded = prepared.encoded
    train_set = subsample(encoded.train, train_samples, train_config.seed)
    device = resolve_device(train_config.device)
    pad = encoded.pad_token_id
    objective = SupervisedObjective(model, task.is_regression)
    key = stable_hash({"backbone": backbone, "data": prepared.data.fingerprint, "train_samples": train_samples,
                   "max_length": max_length, "train": asdict(train_config)})
    tic = time.perf_counter()
    result = train(objective, train_set, train_config, pad_token_id=pad,
                   evaluate=lambda: evaluate_model(model, encoded.dev, task, train_config.eval_batch_size, pad, device),
                   checkpoint_dir=out, key=key, progress=progress)
    model.cpu().eval()
    info = ModelInfo(
        kind="teacher", arch=str(StudentArch.from_config(model.config)), backbone=backbone, task=task.name,
        data={**source.to_dict(), "origin": prepared.data.origin}, label_names=list(task.label_names),
        max_length=max_length, metrics={"dev": result.final_metrics},
        training=_training_record(result, train_config, len(train_set), None, None, train_samples, None,
                                  time.perf_counter() - tic),
        versions=versions(),
    )
    _save(model, prepared.tokenizer, info, out)
    return info


def evaluate_folder(model_path: str, source: DataSource, max_length: int | None = None, batch_size: int = 128) -> dict[str, float]:
    """Dev-split metrics of a saved model folder (its kdnas.json supplies the task when no data flags are given)."""
    info = read_info(model_path)
    source = source_from_teacher(model_path, source)
    model = load_classifier(model_path)
    prepared = prepare(model_path, source, max_length or (info.max_length if info else 128))
    check_fits_task(model, prepared.task)
    return evaluate_model(model, prepared.encoded.dev, prepared.task, batch_size, prepared.encoded.pad_token_id)
