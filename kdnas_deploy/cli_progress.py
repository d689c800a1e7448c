"""Progress for the command line, wherever its output goes.

On a terminal, rich's live bars. Anywhere else (a log file, CI, a pipe, `nohup`), rich draws nothing until the end,
so a long profile or distillation looked dead for half an hour: there, `LineProgress` prints a plain line per task
at most every `KDNAS_PROGRESS_EVERY_S` seconds (default 30), with done/total, elapsed time and an ETA, plus one when a
task starts and one when it ends. It offers the part of rich's `Progress` API the commands use, so a command does
not care which it got.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

#: Seconds between two progress lines of one task when the output is not a terminal.
DEFAULT_EVERY_S = 30.0


def progress_every_s() -> float:
    try:
        return max(0.0, float(os.environ.get("KDNAS_PROGRESS_EVERY_S", DEFAULT_EVERY_S)))
    except ValueError:
        return DEFAULT_EVERY_S


def make_progress(console: Console) -> Any:
    """Rich bars on a terminal, plain timed lines elsewhere."""
    if console.is_terminal:
        return Progress(
            TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console, transient=False,
        )
    return LineProgress(console)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


@dataclass
class _Task:
    description: str
    total: float | None
    completed: float
    started: float
    first: float  # completed when the task (or this process's share of it) started: the ETA's rate is of new work
    last_line: float = 0.0


class _Live:
    def __init__(self) -> None:
        self.is_started = False


class LineProgress:
    """rich.progress.Progress's add_task/update/start/stop as plain, timed lines on `console`."""

    def __init__(self, console: Console, every_s: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.console = console
        self.every_s = progress_every_s() if every_s is None else every_s
        self.clock = clock
        self.tasks: dict[int, _Task] = {}
        self.live = _Live()

    def __enter__(self) -> LineProgress:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if not self.live.is_started:
            self.live.is_started = True
            for task in self.tasks.values():  # added before the display started
                task.started = self.clock()
                self._line(task)

    def stop(self) -> None:
        if self.live.is_started:
            for task in self.tasks.values():
                self._line(task, final=True)
        self.live.is_started = False
        self.tasks.clear()

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **_: Any) -> int:
        now = self.clock()
        task_id = len(self.tasks) + 1
        self.tasks[task_id] = _Task(_plain(description), total, completed, now, completed)
        if self.live.is_started:
            self._line(self.tasks[task_id])
        return task_id

    def update(self, task_id: int, *, advance: float | None = None, completed: float | None = None,
               total: float | None = None, description: str | None = None, **_: Any) -> None:
        task = self.tasks.get(task_id)
        if task is None:
            return
        if total is not None:
            task.total = total
        if completed is not None:
            task.completed = completed
            task.first = min(task.first, completed)
        if advance:
            task.completed += advance
        if description is not None:
            task.description = _plain(description)
        if self.live.is_started and self.clock() - task.last_line >= self.every_s:
            self._line(task)

    def _line(self, task: _Task, final: bool = False) -> None:
        now = self.clock()
        task.last_line = now
        elapsed = now - task.started
        done = f"{task.completed:g}" + (f"/{task.total:g}" if task.total else "")
        pct = f" ({100 * task.completed / task.total:.0f}%)" if task.total else ""
        new = task.completed - task.first
        eta = ""
        if task.total and not final and new > 0 and task.completed < task.total:
            eta = f", eta {_clock(elapsed / new * (task.total - task.completed))}"
        self.console.print(f"{'done: ' if final else ''}{task.description}: {done}{pct}, elapsed {_clock(elapsed)}{eta}",
                           markup=False, highlight=False, soft_wrap=True)


def _plain(description: str) -> str:
    return Text.from_markup(description).plain


@contextmanager
def status(console: Console, first: str) -> Iterator[Callable[[str], None]]:
    """A one-line status (export's steps): rich's spinner on a terminal, otherwise a timestamped line per step."""
    if console.is_terminal:
        with console.status(first) as spinner:
            yield spinner.update
        return
    started = time.monotonic()

    def say(message: str) -> None:
        console.print(f"[{_clock(time.monotonic() - started)}] {_plain(message)}", markup=False, highlight=False, soft_wrap=True)

    say(first)
    yield say
