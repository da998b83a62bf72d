"""Tasks: the built-in NL2Bash, MBPP and GeoQuery, and user tasks from a YAML spec.

>>> task = get_task("nl2bash", seed=1)            # doctest: +SKIP
>>> train = task.load_split("train", "data/")     # doctest: +SKIP
"""

from __future__ import annotations

import difflib
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .base import SPLITS, Instance, Task, resolve_data_dir
from .custom import CustomTask, TaskSpec
from .geoquery import GeoQueryTask
from .mbpp import MBPPTask
from .nl2bash import NL2BashTask

TASK_NAMES = ("nl2bash", "mbpp", "geoquery")
_BUILTIN: dict[str, type[Task]] = {"nl2bash": NL2BashTask, "mbpp": MBPPTask, "geoquery": GeoQueryTask}
SPEC_SUFFIXES = (".yaml", ".yml")


def get_task(name_or_path: str, **options: Any) -> Task:
    """A built-in task by name (with its options), or a custom task from a YAML spec path."""
    key = str(name_or_path)
    if key.lower().endswith(SPEC_SUFFIXES):
        if options:
            raise ConfigError(f"a YAML task spec takes no options (got {', '.join(sorted(options))})")
        return CustomTask.from_yaml(Path(key))
    cls = _BUILTIN.get(key.lower())
    if cls is None:
        close = difflib.get_close_matches(key.lower(), TASK_NAMES, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"unknown task {key!r}{hint}; choose one of {', '.join(TASK_NAMES)} or a path to a .yaml task spec"
        )
    valid = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        takes = f"takes {', '.join(valid)}" if valid else "takes no options"
        raise ConfigError(f"task {key.lower()!r} has no option {unknown[0]!r}; it {takes}")
    return cls(**options)


__all__ = [
    "SPLITS",
    "TASK_NAMES",
    "CustomTask",
    "GeoQueryTask",
    "Instance",
    "MBPPTask",
    "NL2BashTask",
    "Task",
    "TaskSpec",
    "get_task",
    "resolve_data_dir",
]
