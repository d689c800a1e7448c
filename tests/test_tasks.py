from __future__ import annotations

import math

import numpy as np
import pytest

from kdnas_deploy.util.errors import KdnasError
from kdnas_deploy.data.tasks import TASKS, compute_metrics, get_task, matthews, primary_score, spearman


def test_registry_covers_glue() -> None:
    assert set(TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"}
    assert get_task("SST-2") is TASKS["sst2"] and get_task("sts-b") is TASKS["stsb"]
    assert TASKS["stsb"].is_regression and TASKS["stsb"].num_labels == 1
    assert TASKS["mnli"].label_names == ("entailment", "neutral", "contradiction")
    assert TASKS["mrpc"].is_pair and not TASKS["cola"].is_pair
    assert TASKS["mrpc"].metrics == ("f1", "accuracy") and TASKS["cola"].metrics == ("matthews",)
    with pytest.raises(KdnasError, match="unknown task 'imdb'"):
        get_task("imdb")


def test_accuracy_and_f1_by_hand() -> None:
    # gold 1,1,0,0,1 vs pred 1,0,0,1,1: tp=2 fp=1 fn=1 tn=1 -> acc 3/5, F1 = 2*2/(2*2+1+1) = 2/3
    logits = np.array([[0, 1], [1, 0], [1, 0], [0, 1], [0, 1]], dtype=float)
    gold = np.array([1, 1, 0, 0, 1])
    m = compute_metrics(get_task("mrpc"), logits, gold)
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["score"] == pytest.approx((0.6 + 2 / 3) / 2)


def test_matthews_by_hand_and_clipped_score() -> None:
    pred, gold = np.array([1, 1, 0, 0, 1, 0]), np.array([1, 0, 0, 0, 1, 1])
    tp, tn, fp, fn = 2, 2, 1, 1
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert matthews(pred, gold) == pytest.approx(expected)  # 1/3
    inverted = compute_metrics(get_task("cola"), np.eye(2)[1 - gold], gold)
    assert inverted["matthews"] == pytest.approx(-1.0)
    assert inverted["score"] == 0.0  # GLUE clips negative correlations at 0
    assert matthews(np.ones(4, int), np.array([1, 0, 1, 0])) == 0.0  # constant prediction: defined as 0


def test_stsb_correlations() -> None:
    gold = np.array([0.0, 1.0, 2.0, 3.0, 5.0])
    pred = np.array([0.1, 0.9, 2.5, 2.4, 4.0])
    m = compute_metrics(get_task("stsb"), pred.reshape(-1, 1), gold)
    assert m["pearson"] == pytest.approx(np.corrcoef(pred, gold)[0, 1])
    assert m["spearman"] == pytest.approx(0.9)  # one swapped pair of five: 1 - 6*2/(5*24)
    assert m["score"] == pytest.approx((m["pearson"] + 0.9) / 2)
    assert spearman(pred, gold) == pytest.approx(0.9)


def test_mnli_accuracy_three_classes() -> None:
    logits = np.array([[3, 1, 0], [0, 2, 1], [0, 0, 1], [1, 0, 0]], dtype=float)
    m = compute_metrics(get_task("mnli"), logits, np.array([0, 1, 2, 2]))
    assert m == {"accuracy": 0.75, "score": 0.75}


def test_primary_score_ignores_unknown_keys() -> None:
    assert primary_score({"accuracy": 0.8, "loss": 3.0}) == pytest.approx(0.8)
