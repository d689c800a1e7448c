from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from kdnas_deploy.hardware import load_profile
from kdnas_deploy.paths import glue_dir

TESTS = Path(__file__).resolve().parent
DATA = TESTS / "data"
FAST_PROFILE = DATA / "fast-cpu.toml"
TINY_SPACE = DATA / "tiny-space.toml"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may write to the user's cache: point the default table at a temporary folder."""
    monkeypatch.setenv("KDNAS_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def fast_profile():
    return load_profile(FAST_PROFILE)


@pytest.fixture(scope="session")
def glue() -> Path:
    path = glue_dir()
    if not path.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"GLUE data folder missing in CI: {path} (set KDNAS_GLUE_DIR)")
        pytest.skip(f"GLUE data folder not found: {path} (set KDNAS_GLUE_DIR)")
    return path


def cli(*args: str) -> list[str]:
    """The command line of the installed CLI, run with this interpreter."""
    return [sys.executable, "-m", "kdnas_deploy.cli", *args]
