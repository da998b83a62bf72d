"""One look for every long-running loop: a rich progress bar on stderr, silent when not a TTY."""

from __future__ import annotations

from typing import Any


def progress_bar(label: str, stat: str, enabled: bool = True) -> Any:
    """A ``rich.progress.Progress`` showing ``label``, a bar, n/total, the ``stat`` column
    (a format string over ``task.fields``), elapsed time and ETA."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    return Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn(stat),
        TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, disable=not (enabled and console.is_terminal),
    )
