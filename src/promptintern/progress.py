"""One look for every long-running loop: a rich bar on a terminal, plain lines in a log.

A rich bar redraws one line in place, which only works on a terminal; under ``nohup``, in CI or
with ``2> run.log`` it would print nothing until the end. So when stderr is not a terminal,
:func:`progress_bar` returns :class:`PlainProgress` instead, which has the same small interface
(``add_task``, ``update``, context manager) and writes one flushed line about every 5% of a task
(and at its end) with n/total, the caller's stat (queries/s, loss), steps/s unless the stat is a
rate already, elapsed time and ETA.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

PLAIN_LINES_PER_TASK = 20


def progress_bar(label: str, stat: str, enabled: bool = True, stream: TextIO | None = None) -> Any:
    """A progress display showing ``label``, n/total, the ``stat`` column (a format string over
    ``task.fields``), elapsed time and ETA: a ``rich.progress.Progress`` on a terminal,
    :class:`PlainProgress` otherwise, nothing when ``enabled`` is false."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True) if stream is None else Console(file=stream)
    if enabled and not console.is_terminal:
        return PlainProgress(label, stat, stream or sys.stderr)
    return Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn(stat),
        TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, disable=not enabled,
    )


@dataclass
class PlainTask:
    """What :class:`PlainProgress` knows of one task; ``description`` and ``fields`` mirror rich's
    ``Task`` so the same label and stat format strings work for both."""

    description: str
    total: float | None
    completed: float
    fields: dict[str, Any]
    every: int
    start_completed: float = 0.0
    t0: float = field(default_factory=time.monotonic)
    last_line_at: float = -1.0  # the ``completed`` of the last printed line


@dataclass
class PlainProgress:
    """Progress as plain lines, for logs: one line per ``total / PLAIN_LINES_PER_TASK`` steps."""

    label: str
    stat: str
    stream: TextIO
    tasks: list[PlainTask] = field(default_factory=list)

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        for task in self.tasks:  # a task left unfinished still reports where it stopped
            if task.completed != task.last_line_at:
                self._line(task)

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields: Any) -> int:
        every = max(1, math.ceil((total or 0) / PLAIN_LINES_PER_TASK))
        self.tasks.append(PlainTask(description, total, completed, fields, every, start_completed=completed,
                                    last_line_at=completed))
        return len(self.tasks) - 1

    def update(self, task_id: int, *, advance: float | None = None, completed: float | None = None,
               total: float | None = None, **fields: Any) -> None:
        task = self.tasks[task_id]
        if total is not None:
            task.total = total
        if completed is not None:
            task.completed = completed
        if advance is not None:
            task.completed += advance
        task.fields.update(fields)
        finished = task.total is not None and task.completed >= task.total
        if task.completed - task.last_line_at >= task.every or (finished and task.completed != task.last_line_at):
            self._line(task)

    def _line(self, task: PlainTask) -> None:
        task.last_line_at = task.completed
        elapsed = time.monotonic() - task.t0
        done = task.completed - task.start_completed
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [self.label.format(task=task)]
        if task.total:
            parts.append(f"{task.completed:g}/{task.total:g} ({task.completed / task.total:.0%})")
        else:
            parts.append(f"{task.completed:g}")
        with contextlib.suppress(KeyError, ValueError, TypeError):  # a stat field not set yet
            parts.append(self.stat.format(task=task))
        if "/s" not in self.stat:  # unless the caller's stat is a rate already (queries/s)
            parts.append(f"{rate:.2f} steps/s" if rate >= 0.1 or rate == 0 else f"{1 / rate:.1f} s/step")
        parts.append(f"elapsed {_clock(elapsed)}")
        if task.total and rate > 0:
            parts.append(f"ETA {_clock((task.total - task.completed) / rate)}")
        print(" · ".join(parts), file=self.stream, flush=True)


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
