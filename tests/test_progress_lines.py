"""Progress where no terminal is: plain lines, at most every N seconds, with done/total, elapsed and an ETA."""

from __future__ import annotations

import io
import os
import re
import subprocess

from rich.console import Console

from conftest import cli
from kdnas_deploy.cli_progress import LineProgress, make_progress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lines_come_at_most_every_interval_with_an_eta() -> None:
    out = io.StringIO()
    clock = Clock()
    bar = LineProgress(Console(file=out, width=200), every_s=30, clock=clock)
    with bar:
        task = bar.add_task("[bold]distilling[/] L2-H64", total=100)
        for _ in range(100):
            clock.now += 1.0  # one step a second: 100 s in all
            bar.update(task, advance=1, description="[bold]distilling[/] L2-H64 loss 0.5")
    lines = out.getvalue().splitlines()
    assert lines[0] == "distilling L2-H64: 0/100 (0%), elapsed 0:00"  # markup gone
    assert lines[1] == "distilling L2-H64 loss 0.5: 30/100 (30%), elapsed 0:30, eta 1:10"
    assert [re.search(r": (\d+)/", ln).group(1) for ln in lines] == ["0", "30", "60", "90", "100"]
    assert lines[-1] == "done: distilling L2-H64 loss 0.5: 100/100 (100%), elapsed 1:40"


def test_a_resumed_task_estimates_from_its_own_pace() -> None:
    out = io.StringIO()
    clock = Clock()
    bar = LineProgress(Console(file=out, width=200), every_s=10, clock=clock)
    bar.start()
    task = bar.add_task("fine-tuning", total=1000, completed=900)  # 900 steps done by the run it resumes
    clock.now = 10.0
    bar.update(task, advance=10)
    assert out.getvalue().splitlines()[-1] == "fine-tuning: 910/1000 (91%), elapsed 0:10, eta 1:30"


def test_a_terminal_gets_bars_and_a_pipe_gets_lines() -> None:
    assert isinstance(make_progress(Console(file=io.StringIO())), LineProgress)
    assert not isinstance(make_progress(Console(file=io.StringIO(), force_terminal=True)), LineProgress)


def test_distill_into_a_log_file_shows_progress(tiny_teacher_dir, sst2_slice, tmp_path) -> None:
    """stderr to a file, as under nohup or CI: lines with done/total and an ETA while it trains, not silence."""
    log = tmp_path / "distill.log"
    with log.open("w") as fh:
        res = subprocess.run(cli("distill", "--teacher", str(tiny_teacher_dir), "--arch", "L1-H64-A4-I128",
                                 "--out", str(tmp_path / "s"), "--data-dir", str(sst2_slice), "--task", "sst2",
                                 "--max-length", "32", "--epochs", "1", "--train-samples", "300"),
                             stdout=subprocess.PIPE, stderr=fh, text=True, timeout=300,
                             env={**os.environ, "KDNAS_PROGRESS_EVERY_S": "0"})
    assert res.returncode == 0
    text = log.read_text()
    steps = re.findall(r"distilling L1-H64-A4-I128[^:]*: (\d+)/10 \(\d+%\), elapsed \d+:\d\d(, eta \d+:\d\d)?", text)
    assert len(steps) >= 10 and any(eta for _, eta in steps), text[-500:]
    assert "\x1b[" not in text  # no terminal codes in a log


def test_profile_into_a_log_file_estimates_first_then_counts_builds_and_sessions(tmp_path) -> None:
    from conftest import FAST_PROFILE, TINY_SPACE

    log = tmp_path / "profile.log"
    with log.open("w") as fh:
        res = subprocess.run(cli("profile", "--hw", str(FAST_PROFILE), "--space", str(TINY_SPACE), "--no-references",
                                 "--calibration", "3", "--table", str(tmp_path / "t.sqlite")),
                             stdout=subprocess.PIPE, stderr=fh, text=True, timeout=300,
                             env={**os.environ, "KDNAS_PROGRESS_EVERY_S": "0"})
    assert res.returncode == 0
    text = log.read_text()
    first = text.splitlines()[0]
    assert re.fullmatch(r"fast-cpu: 9 of 9 timings to measure, about \d+ s here \(estimate\); each group of graphs is "
                        r"stored as soon as it is timed", first), first
    steps = [int(n) for n in re.findall(r"fast-cpu: [^\n]*?(\d+)/18 \(\d+%\)", text)]  # a build and a session each
    assert steps == sorted(steps) and len(steps) >= 18 and steps[-1] == 18, text[-500:]
