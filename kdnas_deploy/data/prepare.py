"""A task's data made ready for a teacher: loaded, tokenised with its tokenizer (cached), and split into the fixed
proxy rows a search scores candidates on. Shared by distillation, search, export and the tools; no torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kdnas_deploy.data.sources import DataSource, TaskData, load_task_data, stratified_split
from kdnas_deploy.data.encode import EncodedData, encode
from kdnas_deploy.util.errors import KdnasError
from kdnas_deploy.model_folder import INFO_FILE, load_tokenizer, read_info
from kdnas_deploy.data.tasks import Task

#: Held-out rows a proxy run is scored on, unless told otherwise (fewer when the training set is small).
DEFAULT_HELD_OUT = 1000


@dataclass
class Prepared:
    """A task's data, encoded with a tokenizer: what every run on the same teacher and task shares."""

    data: TaskData
    tokenizer: Any
    encoded: EncodedData
    source: DataSource

    @property
    def task(self) -> Task:
        return self.data.task


def prepare(model_path: str, source: DataSource, max_length: int = 128, cache: Path | bool = True) -> Prepared:
    """Loads the task's data and tokenises it with `model_path`'s tokenizer (cached between runs)."""
    if max_length < 8:
        raise KdnasError(f"--max-length {max_length} is too short; use at least 8 tokens")
    data = load_task_data(source)
    tokenizer = load_tokenizer(model_path)
    return Prepared(data, tokenizer, encode(data, tokenizer, max_length, cache), source)


@dataclass
class ProxySplit:
    """The fixed rows of a proxy run: a label-stratified training sample and a disjoint held-out slice."""

    train_rows: list[int]
    held_out_rows: list[int]
    seed: int


def proxy_split(prepared: Prepared, n: int, held_out: int | None = None, seed: int = 0) -> ProxySplit:
    """Same data, n, held-out size and seed: same rows, for every candidate of a search."""
    labels = np.asarray(prepared.encoded.train["labels"])
    total = len(labels)
    if n < 2:
        raise KdnasError(f"--proxy {n}: a proxy set needs at least 2 rows")
    if held_out is None:
        held_out = min(DEFAULT_HELD_OUT, max(1, (total - n) // 2), max(1, total // 5))
    if n + held_out > total:
        raise KdnasError(f"--proxy {n} plus {held_out} held-out rows needs {n + held_out} training rows; the task has {total}")
    train_rows, held_rows = stratified_split(labels, n, held_out, seed, prepared.task.is_regression)
    return ProxySplit(train_rows, held_rows, seed)


def check_fits_task(model: Any, task: Task, what: str = "the teacher",
                    fix: str = "use a teacher fine-tuned on this task (kdnas-deploy teacher)") -> None:
    if model.config.num_labels != task.num_labels:
        raise KdnasError(f"{what} has {model.config.num_labels} output(s) but task {task.name} needs "
                         f"{task.num_labels}; {fix}")


def source_from_teacher(teacher: str, source: DataSource) -> DataSource:
    """No data flags: the data the teacher was fine-tuned on, as its kdnas.json records it."""
    if any(v is not None for v in asdict(source).values()):
        return source
    info = read_info(teacher)
    if info is None or not info.data:
        raise KdnasError(_no_task(teacher))
    return DataSource.from_dict(info.data)


def _no_task(model: str) -> str:
    """Why `model` names no task, in words that say what the path is and what was expected."""
    path = Path(model).expanduser()
    give = "give --task and/or --data-dir"
    if path.is_dir() and (path / "kdnas_card.json").is_file():
        return (f"{model} is an exported artifact (ONNX), not a model folder: give the teacher or student folder it "
                "was exported from (its dev scores are on the artifact's card)")
    if path.is_dir():
        return f"{model} has no {INFO_FILE} recording the task it was trained on: {give}"
    if path.exists():
        return f"{model} is a file; expected a model folder (from `kdnas-deploy teacher` or `distill`) or a hub id"
    return (f"no folder {model} here, and a hub model records no task: {give}, or give the folder of a model "
            "from `kdnas-deploy teacher` or `distill`")
