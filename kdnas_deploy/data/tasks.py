"""The GLUE task registry and task metrics.

Each task says where its text and labels live in the three places data comes from (the hub's `glue`
dataset, a GLUE-format folder of tsv files, a user's own files), its label names, and how it is scored.
`primary_score` folds a task's official metric(s) into one number in [0, 1] (GLUE's convention: the mean
of two metrics where a task has two; Matthews and correlations clipped at 0) for the search reward and
for "percent of the teacher".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from kdnas_deploy.util.errors import KdnasError

#: Where the GLUE datasets live on the hub.
HUB_GLUE = "nyu-mll/glue"


@dataclass(frozen=True)
class GlueFiles:
    """How a GLUE-format folder stores one task: file names, header, and the columns that matter.

    Columns are names, or positions for a header-less file (CoLA).
    """

    train: str = "train.tsv"
    dev: str = "dev.tsv"
    header: bool = True
    text_columns: tuple[str | int, ...] = ("sentence",)
    label_column: str | int = "label"


@dataclass(frozen=True)
class Task:
    name: str
    #: Label names in the order of the hub dataset's integer labels; empty for regression.
    label_names: tuple[str, ...]
    metrics: tuple[str, ...]
    #: The hub's column names (`glue` config `name`): text columns then the label column.
    hub_text_columns: tuple[str, ...]
    hub_dev_split: str = "validation"
    glue: GlueFiles = field(default_factory=GlueFiles)
    #: Folder names a GLUE download uses, so `--data-dir .../SST-2` finds its task.
    folder_names: tuple[str, ...] = ()

    @property
    def is_regression(self) -> bool:
        return not self.label_names

    @property
    def num_labels(self) -> int:
        return 1 if self.is_regression else len(self.label_names)

    @property
    def is_pair(self) -> bool:
        return len(self.hub_text_columns) == 2


_PAIR = ("sentence1", "sentence2")

TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("cola", ("unacceptable", "acceptable"), ("matthews",), ("sentence",),
             glue=GlueFiles(header=False, text_columns=(3,), label_column=1), folder_names=("CoLA",)),
        Task("sst2", ("negative", "positive"), ("accuracy",), ("sentence",), folder_names=("SST-2",)),
        Task("mrpc", ("not_equivalent", "equivalent"), ("f1", "accuracy"), _PAIR,
             glue=GlueFiles(text_columns=("#1 String", "#2 String"), label_column="Quality"), folder_names=("MRPC",)),
        Task("stsb", (), ("pearson", "spearman"), _PAIR,
             glue=GlueFiles(text_columns=_PAIR, label_column="score"), folder_names=("STS-B",)),
        Task("qqp", ("not_duplicate", "duplicate"), ("f1", "accuracy"), ("question1", "question2"),
             glue=GlueFiles(text_columns=("question1", "question2"), label_column="is_duplicate"), folder_names=("QQP",)),
        Task("mnli", ("entailment", "neutral", "contradiction"), ("accuracy",), ("premise", "hypothesis"),
             hub_dev_split="validation_matched",
             glue=GlueFiles(dev="dev_matched.tsv", text_columns=_PAIR, label_column="gold_label"), folder_names=("MNLI",)),
        Task("qnli", ("entailment", "not_entailment"), ("accuracy",), ("question", "sentence"),
             glue=GlueFiles(text_columns=("question", "sentence")), folder_names=("QNLI",)),
        Task("rte", ("entailment", "not_entailment"), ("accuracy",), _PAIR,
             glue=GlueFiles(text_columns=_PAIR), folder_names=("RTE",)),
        Task("wnli", ("not_entailment", "entailment"), ("accuracy",), _PAIR,
             glue=GlueFiles(text_columns=_PAIR), folder_names=("WNLI",)),
    )
}


def get_task(name: str) -> Task:
    key = name.lower().replace("-", "").replace("_", "")
    key = {"sts": "stsb", "mnlim": "mnli"}.get(key, key)
    if key not in TASKS:
        raise KdnasError(f"unknown task {name!r}; GLUE tasks: {', '.join(TASKS)} (or give your own files)")
    return TASKS[key]


def task_for_folder(folder_name: str) -> Task | None:
    for task in TASKS.values():
        if folder_name in task.folder_names or folder_name.lower() == task.name:
            return task
    return None


def custom_task(name: str, label_names: Sequence[str], regression: bool, pair: bool) -> Task:
    """A task for a user's own files: accuracy (and macro-F1 over several classes) or correlations."""
    text = ("text", "text_pair") if pair else ("text",)
    if regression:
        return Task(name, (), ("pearson", "spearman"), text)
    metrics = ("accuracy", "f1") if len(label_names) == 2 else ("accuracy", "macro_f1")
    return Task(name, tuple(label_names), metrics, text)


# --- metrics ---------------------------------------------------------------------------------------


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    return float(np.mean(pred == gold)) if len(gold) else 0.0


def f1_binary(pred: np.ndarray, gold: np.ndarray, positive: int = 1) -> float:
    tp = float(np.sum((pred == positive) & (gold == positive)))
    fp = float(np.sum((pred == positive) & (gold != positive)))
    fn = float(np.sum((pred != positive) & (gold == positive)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def macro_f1(pred: np.ndarray, gold: np.ndarray) -> float:
    classes = np.union1d(np.unique(gold), np.unique(pred))
    return float(np.mean([f1_binary(pred, gold, int(c)) for c in classes])) if len(classes) else 0.0


def matthews(pred: np.ndarray, gold: np.ndarray) -> float:
    tp = float(np.sum((pred == 1) & (gold == 1)))
    tn = float(np.sum((pred == 0) & (gold == 0)))
    fp = float(np.sum((pred == 1) & (gold == 0)))
    fn = float(np.sum((pred == 0) & (gold == 1)))
    denom = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if denom == 0 else (tp * tn - fp * fn) / denom


def pearson(pred: np.ndarray, gold: np.ndarray) -> float:
    if len(gold) < 2 or np.std(pred) == 0 or np.std(gold) == 0:
        return 0.0
    return float(np.corrcoef(pred, gold)[0, 1])


def spearman(pred: np.ndarray, gold: np.ndarray) -> float:
    from scipy.stats import rankdata

    return pearson(rankdata(pred), rankdata(gold))


_METRICS = {"accuracy": accuracy, "f1": f1_binary, "macro_f1": macro_f1, "matthews": matthews,
            "pearson": pearson, "spearman": spearman}
#: Metrics that can go below 0; GLUE's score clips them there.
_SIGNED = {"matthews", "pearson", "spearman"}


def predictions(task: Task, logits: np.ndarray) -> np.ndarray:
    """Class ids (argmax) for classification, the single output for regression."""
    logits = np.asarray(logits, dtype=np.float64)
    return logits.reshape(-1) if task.is_regression else logits.argmax(axis=-1)


def compute_metrics(task: Task, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's official metrics plus `score`, the primary score in [0, 1]."""
    pred = predictions(task, logits)
    gold = np.asarray(labels, dtype=np.float64 if task.is_regression else np.int64)
    values = {name: _METRICS[name](pred, gold) for name in task.metrics}
    values["score"] = primary_score(values)
    return values


def primary_score(values: dict[str, float]) -> float:
    parts = [max(0.0, v) if k in _SIGNED else v for k, v in values.items() if k in _METRICS]
    return float(np.mean(parts)) if parts else 0.0
