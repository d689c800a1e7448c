"""Loading a task's train and dev splits from the hub, a GLUE-format folder, or a user's own files.

Whatever the source, the result is two `datasets.Dataset`s with the same columns: `text`, `text_pair`
(pair tasks only) and `label` (class id, or a float for regression), plus the task they belong to.
Bad input is reported as one line naming the file, column, row or value at fault.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdnas_deploy.util.errors import KdnasError, first_line
from kdnas_deploy.util.files import is_unicode
from kdnas_deploy.data.tasks import HUB_GLUE, Task, custom_task, get_task, task_for_folder

#: File formats read for a user's own data, by suffix.
FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
_DEV_STEMS = ("dev", "validation", "valid", "val", "dev_matched")


@dataclass(frozen=True)
class DataSource:
    """Where a task's data comes from; what the `--task/--data-dir/--train-file/...` flags say."""

    task: str | None = None
    data_dir: str | None = None
    train_file: str | None = None
    dev_file: str | None = None
    text_columns: tuple[str, ...] | None = None
    label_column: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataSource:
        data = dict(data)
        if data.get("text_columns") is not None:
            data["text_columns"] = tuple(data["text_columns"])
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class TaskData:
    task: Task
    train: Any  # datasets.Dataset
    dev: Any
    #: A readable account of where the data came from, for kdnas.json and reports.
    origin: str
    #: Changes whenever the data does: the key of the tokenisation cache.
    fingerprint: str
    sources: dict[str, str] = field(default_factory=dict)


def load_task_data(source: DataSource) -> TaskData:
    """Both splits of the task `source` names, normalised to `text`, `text_pair`, `label`."""
    if source.train_file or source.dev_file:
        if not (source.train_file and source.dev_file):
            raise KdnasError("give both --train-file and --dev-file (or a --data-dir holding train.* and dev.*)")
        return _load_files(source, Path(source.train_file), Path(source.dev_file))
    if source.data_dir:
        return _load_dir(source, Path(source.data_dir))
    if source.task:
        return _load_hub(source)
    raise KdnasError("no data: give --task NAME (GLUE from the hub), --data-dir DIR, or --train-file/--dev-file")


def _load_dir(source: DataSource, folder: Path) -> TaskData:
    if not folder.is_dir():
        raise KdnasError(f"--data-dir {folder}: no such folder")
    task = get_task(source.task) if source.task else task_for_folder(folder.name)
    if task is not None and not source.text_columns and (folder / task.glue.train).is_file():
        return _load_glue(task, folder)
    train = _find_split(folder, ("train",))
    dev = _find_split(folder, _DEV_STEMS)
    if train is None or dev is None:
        missing = "train" if train is None else "dev (or validation)"
        hint = f" (GLUE task {task.name} expects {task.glue.train} and {task.glue.dev})" if task else ""
        raise KdnasError(f"--data-dir {folder}: no {missing} file with a suffix in {sorted(FORMATS)}{hint}")
    return _load_files(source, train, dev)


def _find_split(folder: Path, stems: tuple[str, ...]) -> Path | None:
    for stem in stems:
        for suffix in FORMATS:
            if (folder / f"{stem}{suffix}").is_file():
                return folder / f"{stem}{suffix}"
    return None


def read_table(path: Path, header: bool = True) -> Any:
    """A pandas DataFrame of strings from a tsv/csv/jsonl/parquet file; a clear error if it is not one."""
    import pandas as pd

    if not path.is_file():
        raise KdnasError(f"{path}: no such file")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise KdnasError(f"{path}: unknown data format {path.suffix!r}; use one of {', '.join(sorted(FORMATS))}")
    if fmt in ("tsv", "csv"):
        return _read_delimited(path, fmt, header)
    try:
        if fmt == "jsonl":
            frame = pd.read_json(path, lines=True, dtype=False)
        else:
            frame = pd.read_parquet(path)
    except Exception as exc:  # pandas/pyarrow raise many types for a malformed file
        raise KdnasError(f"{path}: not a valid {fmt} file ({first_line(exc)})") from None
    return frame


def delimited_rows(path: Path, fmt: str, header: bool = True) -> tuple[list[str] | None, list[list[str]]]:
    """The header's names (None without one) and the rows of a tsv/csv file whose every row has as many fields as
    the first; the standard library only, so an artifact's `predict` reads files without pandas.

    Read with the csv module rather than pandas, which takes a first data row with an extra field as an index
    column (shifting every text and label one column over) and pads short rows with empty cells, silently."""
    import csv

    # GLUE tsv files hold bare quotes inside text: quoting off (csv.QUOTE_NONE) or rows merge.
    dialect = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if fmt == "tsv" else {"delimiter": ","}
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            rows = list(csv.reader(fh, strict=True, **dialect))  # type: ignore[arg-type]
    except UnicodeDecodeError as exc:
        raise KdnasError(f"{path}: not UTF-8 text (byte {exc.start}); is it a {fmt} file?") from None
    except (csv.Error, OSError) as exc:
        raise KdnasError(f"{path}: not a valid {fmt} file ({first_line(exc)})") from None
    while rows and not any(cell.strip() for cell in rows[-1]):  # trailing blank lines
        rows.pop()
    if not rows:
        raise KdnasError(f"{path}: the file is empty")
    width = len(rows[0])
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != width:
            what = "the header has" if header else "the first row has"
            raise KdnasError(f"{path}: line {n} has {len(row)} fields, {what} {width}; a ragged file cannot be read "
                             "safely (a tab or comma inside a text?)")
    if not header:
        return None, rows
    names = [c.strip() for c in rows[0]]
    if len(set(names)) != len(names):
        raise KdnasError(f"{path}: the header names a column twice ({', '.join(names)})")
    return names, rows[1:]


def _read_delimited(path: Path, fmt: str, header: bool) -> Any:
    import pandas as pd

    names, rows = delimited_rows(path, fmt, header)
    return pd.DataFrame(rows, columns=names, dtype=str) if names is not None else pd.DataFrame(rows, dtype=str)


def _column(frame: Any, column: str | int, path: Path) -> list[Any]:
    if isinstance(column, int):
        if column >= frame.shape[1]:
            raise KdnasError(f"{path}: expected at least {column + 1} columns, found {frame.shape[1]}")
        return frame.iloc[:, column].tolist()
    if column not in frame.columns:
        raise KdnasError(f"{path}: missing column {column!r}; columns are {', '.join(map(str, frame.columns))}")
    return frame[column].tolist()


def _texts(values: list[Any], column: str | int, path: Path) -> list[str]:
    for row, value in enumerate(values):
        if not isinstance(value, str):
            if value is None or (isinstance(value, float) and np.isnan(value)):
                raise KdnasError(f"{path}: row {row + 1} has no text in column {column!r}")
            values[row] = value = str(value)
        if not value.strip():
            raise KdnasError(f"{path}: row {row + 1} has empty text in column {column!r}; remove or fill the row")
        if not is_unicode(value):
            raise KdnasError(f"{path}: row {row + 1} of column {column!r} holds a lone surrogate, not text")
    return values


def _labels(values: list[Any], task: Task, path: Path, column: str | int) -> list[Any]:
    if task.is_regression:
        try:
            return [float(v) for v in values]
        except (TypeError, ValueError):
            bad = next(v for v in values if not _is_float(v))
            raise KdnasError(f"{path}: label {bad!r} in column {column!r} is not a number (regression task {task.name})") from None
    index = {name: i for i, name in enumerate(task.label_names)}
    out = []
    for row, value in enumerate(values):
        key = str(value).strip()
        if key in index:
            out.append(index[key])
        elif key.lstrip("-").isdigit() and 0 <= int(key) < task.num_labels:
            out.append(int(key))
        else:
            raise KdnasError(f"{path}: unknown label value {value!r} in row {row + 1} of column {column!r}; "
                             f"task {task.name} labels: {', '.join(task.label_names)} (or 0..{task.num_labels - 1})")
    return out


def _is_float(value: Any) -> bool:
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


def _dataset(texts: list[list[str]], labels: list[Any], path: Path, split: str) -> Any:
    from datasets import Dataset

    if not labels:
        raise KdnasError(f"{path}: the {split} split is empty")
    columns: dict[str, Any] = {"text": texts[0]}
    if len(texts) > 1:
        columns["text_pair"] = texts[1]
    columns["label"] = labels
    return Dataset.from_dict(columns)


def _file_hash(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:20]


def _load_glue(task: Task, folder: Path) -> TaskData:
    splits = {}
    paths = {"train": folder / task.glue.train, "dev": folder / task.glue.dev}
    for split, path in paths.items():
        frame = read_table(path, header=task.glue.header)
        texts = [_texts(_column(frame, c, path), c, path) for c in task.glue.text_columns]
        labels = _labels(_column(frame, task.glue.label_column, path), task, path, task.glue.label_column)
        splits[split] = _dataset(texts, labels, path, split)
    return TaskData(task, splits["train"], splits["dev"], origin=f"GLUE folder {folder}",
                    fingerprint=_file_hash(*paths.values()), sources={k: str(v) for k, v in paths.items()})


def _load_files(source: DataSource, train_path: Path, dev_path: Path) -> TaskData:
    frames = {"train": read_table(train_path), "dev": read_table(dev_path)}
    task = get_task(source.task) if source.task else None
    text_columns = source.text_columns or (task.glue.text_columns if task and all(
        isinstance(c, str) and c in frames["train"].columns for c in task.glue.text_columns) else None)
    text_columns = text_columns or _guess_text_columns(frames["train"], train_path)
    label_column = source.label_column or (task.glue.label_column if task and task.glue.label_column in frames["train"].columns else "label")
    if task is None:
        task = _infer_task(source, frames["train"], label_column, train_path, len(text_columns) == 2)
    if len(text_columns) not in (1, 2):
        raise KdnasError(f"--text-columns takes one or two columns (a text or a text pair), got {len(text_columns)}")
    splits = {}
    for split, path in (("train", train_path), ("dev", dev_path)):
        frame = frames[split]
        texts = [_texts(_column(frame, c, path), c, path) for c in text_columns]
        labels = _labels(_column(frame, label_column, path), task, path, label_column)
        splits[split] = _dataset(texts, labels, path, split)
    return TaskData(task, splits["train"], splits["dev"], origin=f"files {train_path} + {dev_path}",
                    fingerprint=_file_hash(train_path, dev_path) + "-" + ",".join(text_columns) + "-" + label_column,
                    sources={"train": str(train_path), "dev": str(dev_path)})


def _guess_text_columns(frame: Any, path: Path) -> tuple[str, ...]:
    for candidate in (("text", "text_pair"), ("sentence1", "sentence2"), ("text",), ("sentence",)):
        if all(c in frame.columns for c in candidate):
            return candidate
    raise KdnasError(f"{path}: say which columns hold the text with --text-columns (columns: {', '.join(map(str, frame.columns))})")


def _infer_task(source: DataSource, frame: Any, label_column: str, path: Path, pair: bool) -> Task:
    """A task for unnamed data: classes from the train labels, or regression when they are fractional numbers."""
    values = _column(frame, label_column, path)
    empty = next((row for row, v in enumerate(values) if v is None or not str(v).strip()), None)
    if empty is not None:
        raise KdnasError(f"{path}: row {empty + 1} has an empty label in column {label_column!r}; remove or fill the row")
    name = Path(source.data_dir).name if source.data_dir else path.stem
    numeric = all(_is_float(v) for v in values)
    if numeric and any(float(v) != int(float(v)) for v in values):
        return custom_task(name, (), regression=True, pair=pair)
    names = sorted({str(v).strip() for v in values}, key=lambda s: (not s.lstrip("-").isdigit(), int(s) if s.lstrip("-").isdigit() else 0, s))
    if len(names) < 2:
        raise KdnasError(f"{path}: column {label_column!r} holds {len(names)} distinct label(s); a classifier needs two or more")
    return custom_task(name, names, regression=False, pair=pair)


def _load_hub(source: DataSource) -> TaskData:
    task = get_task(source.task)  # type: ignore[arg-type]
    try:
        from datasets import load_dataset

        raw = load_dataset(HUB_GLUE, task.name)
    except Exception as exc:  # the hub raises connection, offline and not-found errors of many types
        raise KdnasError(f"cannot load {HUB_GLUE}/{task.name} from the Hugging Face hub ({first_line(exc)}); "
                         "without a network, point --data-dir at a GLUE-format folder") from None
    splits = {}
    for split, name in (("train", "train"), ("dev", task.hub_dev_split)):
        ds = raw[name]
        rename = dict(zip(task.hub_text_columns, ("text", "text_pair")))
        ds = ds.rename_columns(rename).select_columns([*rename.values(), "label"])
        if len(ds) == 0:
            raise KdnasError(f"{HUB_GLUE}/{task.name}: the {split} split is empty")
        splits[split] = ds
    return TaskData(task, splits["train"], splits["dev"], origin=f"hub {HUB_GLUE}/{task.name}",
                    fingerprint=splits["train"]._fingerprint + splits["dev"]._fingerprint)


def subsample(dataset: Any, n: int | None, seed: int) -> Any:
    """A seeded random sample of `n` rows (all rows when n is None or not smaller)."""
    if n is None or n >= len(dataset):
        return dataset
    rng = np.random.default_rng(seed)
    return dataset.select(np.sort(rng.choice(len(dataset), size=n, replace=False)).tolist())


def stratified_split(labels: np.ndarray, n_train: int, n_held_out: int, seed: int, regression: bool) -> tuple[list[int], list[int]]:
    """Row indices for a label-stratified proxy training sample and a disjoint held-out slice.

    Each stratum (a class, or a quantile bin of a regression target) gives rows in proportion to its size,
    so the proxy keeps the training set's label mix however small it is. Same labels and seed, same rows.
    """
    labels = np.asarray(labels)
    n_total = len(labels)
    if n_train + n_held_out > n_total:
        raise KdnasError(f"proxy of {n_train} + held-out {n_held_out} rows asks for more than the {n_total} training rows")
    if regression:
        edges = np.quantile(labels, np.linspace(0, 1, 6)[1:-1])
        strata = np.searchsorted(edges, labels, side="right")
    else:
        strata = labels.astype(np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_total)
    groups = {s: order[strata[order] == s] for s in np.unique(strata)}
    picked: list[np.ndarray] = []
    for want in (n_held_out, n_train):
        quotas = _quotas({s: len(g) for s, g in groups.items()}, want)
        part = []
        for s, q in quotas.items():
            part.append(groups[s][:q])
            groups[s] = groups[s][q:]
        picked.append(np.sort(np.concatenate(part)) if part else np.array([], dtype=np.int64))
    held_out, train = picked
    return train.tolist(), held_out.tolist()


def _quotas(sizes: dict[Any, int], want: int) -> dict[Any, int]:
    """Largest-remainder allocation of `want` rows over strata, proportional to their sizes."""
    total = sum(sizes.values())
    exact = {s: want * n / total for s, n in sizes.items()}
    quotas = {s: min(sizes[s], int(v)) for s, v in exact.items()}
    for s in sorted(sizes, key=lambda s: exact[s] - int(exact[s]), reverse=True):
        if sum(quotas.values()) >= want:
            break
        if quotas[s] < sizes[s]:
            quotas[s] += 1
    return quotas
