"""The README's five-minute example, run as written: its commands, from its own text, in a fresh folder."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


def example_commands() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## A five-minute example", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return block


def test_the_readme_example_runs_and_ships_a_working_artifact(tmp_path: Path) -> None:
    (tmp_path / "examples").symlink_to(REPO / "examples")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "KDNAS_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", example_commands()], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    teacher = json.loads((tmp_path / "runs" / "teacher" / "kdnas.json").read_text())
    assert teacher["metrics"]["dev"]["accuracy"] > 0.9  # the task is learnable in one epoch
    report = json.loads((tmp_path / "runs" / "search" / "report.json").read_text())
    assert len(report["candidates"]) == 4 and all(c["status"] == "done" for c in report["candidates"])
    (final,) = report["finals"]
    artifact = final["artifacts"]["cpu-int8"]
    assert artifact["folder"] and (tmp_path / artifact["folder"] / "kdnas_card.json").is_file()
    assert artifact["artifact_dev"]["accuracy"] > 0.8
    # predict's answer: the text, one of the task's labels, and that label's probability.
    row = re.search(r"joy to watch\. +│ +(\S+) +│ +([0-9.]+) +│", run.stdout)
    assert row is not None, run.stdout
    assert row.group(1) in teacher["label_names"] and 0.5 <= float(row.group(2)) <= 1.0
