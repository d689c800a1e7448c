from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pytest

from kdnas_deploy.data.sources import DataSource, load_task_data, stratified_split
from kdnas_deploy.util.errors import KdnasError


def _counts(ds) -> dict:
    return dict(collections.Counter(ds["label"]))


@pytest.mark.parametrize(
    "folder, task, train_rows, dev_rows, train_counts, dev_counts",
    [
        ("SST-2", "sst2", 67349, 872, {1: 37569, 0: 29780}, {1: 444, 0: 428}),
        ("MRPC", "mrpc", 3668, 408, {1: 2474, 0: 1194}, {1: 279, 0: 129}),
        ("CoLA", "cola", 8551, 1043, {1: 6023, 0: 2528}, {1: 721, 0: 322}),
        ("MNLI", "mnli", 15130, 9815, {0: 5049, 1: 5029, 2: 5052}, {0: 3479, 1: 3123, 2: 3213}),
    ],
)
def test_glue_folders(glue: Path, folder: str, task: str, train_rows: int, dev_rows: int, train_counts: dict, dev_counts: dict) -> None:
    data = load_task_data(DataSource(data_dir=str(glue / folder)))  # task found from the folder name
    assert data.task.name == task
    assert (len(data.train), len(data.dev)) == (train_rows, dev_rows)
    assert _counts(data.train) == train_counts and _counts(data.dev) == dev_counts
    assert ("text_pair" in data.train.column_names) == data.task.is_pair
    assert all(isinstance(t, str) for t in data.dev["text"])


def test_glue_text_details(glue: Path) -> None:
    cola = load_task_data(DataSource(task="cola", data_dir=str(glue / "CoLA")))
    assert cola.train[0]["text"] == "Our friends won't buy this analysis, let alone the next one we propose."  # no header eaten
    mrpc = load_task_data(DataSource(task="mrpc", data_dir=str(glue / "MRPC")))  # header starts with a BOM
    assert mrpc.train[0]["text"].startswith("Amrozi accused his brother")
    assert mrpc.dev[0]["text_pair"].startswith('" The foodservice pie business')  # bare quote kept (quoting off)
    mnli = load_task_data(DataSource(task="mnli", data_dir=str(glue / "MNLI")))  # 12 and 4 columns, by name
    assert mnli.dev[1]["text_pair"] == "The Government Executive articles housed on the website are not able to be searched."
    assert mnli.dev[1]["label"] == 2


def test_stsb_regression(glue: Path) -> None:
    data = load_task_data(DataSource(data_dir=str(glue / "STS-B")))
    assert data.task.is_regression
    assert (len(data.train), len(data.dev)) == (5749, 1500)
    scores = np.array(data.dev["label"])
    assert scores.min() >= 0 and scores.max() <= 5 and scores[0] == 5.0


def _write(path: Path, rows: list[dict], fmt: str) -> Path:
    import pandas as pd

    frame = pd.DataFrame(rows)
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        frame.to_parquet(path)
    return path


ROWS = [{"review": f"text {i}", "other": i, "stars": ["bad", "good", "meh"][i % 3]} for i in range(30)]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_custom_files(tmp_path: Path, fmt: str) -> None:
    train = _write(tmp_path / f"train.{fmt}", ROWS, fmt)
    dev = _write(tmp_path / f"dev.{fmt}", ROWS[:9], fmt)
    data = load_task_data(DataSource(train_file=str(train), dev_file=str(dev), text_columns=("review",), label_column="stars"))
    assert data.task.label_names == ("bad", "good", "meh")
    assert data.task.metrics == ("accuracy", "macro_f1")
    assert data.train[4] == {"text": "text 4", "label": 1}
    # the same files found through --data-dir
    again = load_task_data(DataSource(data_dir=str(tmp_path), text_columns=("review",), label_column="stars"))
    assert again.fingerprint == data.fingerprint and len(again.dev) == 9


def test_custom_pair_and_regression(tmp_path: Path) -> None:
    rows = [{"a": f"x{i}", "b": f"y{i}", "sim": i / 7} for i in range(20)]
    _write(tmp_path / "train.csv", rows, "csv")
    _write(tmp_path / "validation.csv", rows[:5], "csv")
    data = load_task_data(DataSource(data_dir=str(tmp_path), text_columns=("a", "b"), label_column="sim"))
    assert data.task.is_regression and data.task.is_pair
    assert data.dev[2]["text_pair"] == "y2" and data.dev[2]["label"] == pytest.approx(2 / 7)


def test_glue_task_on_own_files(tmp_path: Path) -> None:
    _write(tmp_path / "train.jsonl", [{"sentence": "good", "label": "positive"}, {"sentence": "bad", "label": 0}], "jsonl")
    _write(tmp_path / "dev.jsonl", [{"sentence": "fine", "label": 1}], "jsonl")
    data = load_task_data(DataSource(task="sst2", data_dir=str(tmp_path)))
    assert data.train["label"] == [1, 0] and data.task.name == "sst2"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: (_write(d / "train.csv", ROWS, "csv"), _write(d / "dev.csv", ROWS, "csv"), {"text_columns": ("nope",), "label_column": "stars"}),
         "missing column 'nope'"),
        (lambda d: (_write(d / "train.csv", ROWS, "csv"), _write(d / "dev.csv", ROWS, "csv"), {"text_columns": ("review",), "label_column": "gone"}),
         "missing column 'gone'"),
        (lambda d: (_write(d / "train.csv", ROWS, "csv"), _write(d / "dev.csv", [{"review": "x", "stars": "awful"}], "csv"),
                    {"text_columns": ("review",), "label_column": "stars"}), "unknown label value 'awful' in row 1"),
        (lambda d: (_write(d / "train.csv", ROWS, "csv"), (d / "dev.csv").write_text("review,stars\n") and d / "dev.csv",
                    {"text_columns": ("review",), "label_column": "stars"}), "split is empty"),
        (lambda d: (_write(d / "train.csv", ROWS, "csv"), (d / "dev.jsonl").write_text("{not json\n") and d / "dev.jsonl",
                    {"text_columns": ("review",), "label_column": "stars"}), "not a valid jsonl file"),
        (lambda d: (_write(d / "train.csv", ROWS, "csv"), (d / "dev.parquet").write_text("a,b\n1,2\n") and d / "dev.parquet",
                    {"text_columns": ("review",), "label_column": "stars"}), "not a valid parquet file"),
        (lambda d: (_write(d / "train.csv", [{"review": "x", "stars": "a"}] * 3, "csv"), _write(d / "dev.csv", ROWS, "csv"),
                    {"text_columns": ("review",), "label_column": "stars"}), "1 distinct label"),
        (lambda d: (_write(d / "train.jsonl", [{"review": None, "stars": "a"}, {"review": "x", "stars": "b"}], "jsonl"),
                    _write(d / "dev.csv", ROWS, "csv"), {"text_columns": ("review",), "label_column": "stars"}), "row 1 has no text"),
        (lambda d: ((d / "train.txt").write_text("x") and d / "train.txt", _write(d / "dev.csv", ROWS, "csv"), {}),
         "unknown data format '.txt'"),
    ],
)
def test_bad_data_one_line_errors(tmp_path: Path, make, message: str) -> None:
    train, dev, extra = make(tmp_path)
    with pytest.raises(KdnasError, match=message) as info:
        load_task_data(DataSource(train_file=str(train), dev_file=str(dev), **extra))
    assert "\n" not in str(info.value)


def test_bad_sources(tmp_path: Path, glue: Path) -> None:
    with pytest.raises(KdnasError, match="no such folder"):
        load_task_data(DataSource(data_dir=str(tmp_path / "missing")))
    with pytest.raises(KdnasError, match="no train file"):
        load_task_data(DataSource(data_dir=str(tmp_path)))
    with pytest.raises(KdnasError, match="both --train-file and --dev-file"):
        load_task_data(DataSource(train_file=str(tmp_path / "t.csv")))
    with pytest.raises(KdnasError, match="no data"):
        load_task_data(DataSource())
    with pytest.raises(KdnasError, match="unknown label value 'entailment'"):
        load_task_data(DataSource(task="sst2", data_dir=str(glue / "MNLI"), text_columns=("sentence1",), label_column="gold_label"))


def test_hub_offline_is_one_clear_line(tiny_backbone: Path, tmp_path: Path) -> None:
    """The hub path as a user without a network meets it (a fresh process: the hub reads its offline flag at import)."""
    import os
    import subprocess

    from conftest import cli

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(cli("teacher", "--backbone", str(tiny_backbone), "--task", "rte", "--out", str(tmp_path / "t")),
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2
    assert "cannot load nyu-mll/glue/rte from the Hugging Face hub" in done.stderr and "--data-dir" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_stratified_split() -> None:
    labels = np.array([0] * 700 + [1] * 200 + [2] * 100)
    train, held = stratified_split(labels, 100, 50, seed=3, regression=False)
    assert len(train) == 100 and len(held) == 50 and not set(train) & set(held)
    assert collections.Counter(labels[train]) == {0: 70, 1: 20, 2: 10}
    assert collections.Counter(labels[held]) == {0: 35, 1: 10, 2: 5}
    again, held_again = stratified_split(labels, 100, 50, seed=3, regression=False)
    assert (again, held_again) == (train, held)
    bigger, held_big = stratified_split(labels, 300, 50, seed=3, regression=False)
    assert held_big == held  # the held-out slice does not move when the proxy grows
    other, _ = stratified_split(labels, 100, 50, seed=4, regression=False)
    assert other != train
    with pytest.raises(KdnasError, match="more than the 1000 training rows"):
        stratified_split(labels, 990, 50, seed=0, regression=False)


def test_stratified_split_regression() -> None:
    scores = np.linspace(0, 5, 500)
    train, held = stratified_split(scores, 100, 100, seed=0, regression=True)
    assert len(set(train)) == 100 and not set(train) & set(held)
    assert abs(np.mean(scores[train]) - 2.5) < 0.2  # every quantile bin represented
