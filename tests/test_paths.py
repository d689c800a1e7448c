from __future__ import annotations

from kdnas_deploy.util.paths import GLUE_DIR_ENV, glue_dir


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
