"""What a task is: its recurring template, its prompt format, its data splits and metric."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from ..prompt import Prompt, PromptFormat, Template

SPLITS = ("train", "validation", "test")
DATA_ENV = "PROMPTINTERN_DATA_DIR"


@dataclass(frozen=True)
class Instance:
    """One (query, answer) pair; ``meta`` carries what scoring needs (e.g. MBPP asserts)."""

    id: str
    query: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


class Task(ABC):
    """A recurring prompt and the data it is used with."""

    name: str
    metric: str  # "bleu" | "pass@1" | "exact_match"
    template: Template
    format: PromptFormat
    force_keep: tuple[str, ...] = ()  # strings a compressor must never drop

    @abstractmethod
    def load_split(self, split: str, data_dir: str | os.PathLike[str] | None = None) -> list[Instance]:
        """The instances of ``split`` (one of :data:`SPLITS`)."""

    def has_split(self, split: str) -> bool:
        """Whether the task has data for ``split`` (a built-in task has all of :data:`SPLITS`)."""
        return split in SPLITS

    def generate_queries(
        self, labelled: list[Instance], n: int, seed: int, data_dir: str | os.PathLike[str] | None = None
    ) -> list[str]:
        """``n`` new queries written from the ``labelled`` ones, for a teacher to answer.

        A task knows how its queries vary (GeoQuery's typed values); one without such knowledge says so,
        and the user names a generator hook instead.
        """
        raise ConfigError(f"task {self.name} has no built-in query generator; "
                          "set new_queries.generate to a hook 'module:function'")

    def split_source(self, split: str) -> str:
        """Where ``split`` is read from, as a message names it (a custom task names its file)."""
        return f"task {self.name}'s {split} data"

    def prompt(self, query: str, examples: tuple = (), template: Template | None = None) -> Prompt:
        """A prompt for ``query`` with this task's (or the given) template."""
        return Prompt(template=self.template if template is None else template, query=query, examples=examples)


def resolve_data_dir(data_dir: str | os.PathLike[str] | None, expected: list[str]) -> Path:
    """``data_dir``, else ``$PROMPTINTERN_DATA_DIR``; checks the ``expected`` files exist.

    Fails with one line naming the files and where to put them.
    """
    raw = data_dir if data_dir is not None else os.environ.get(DATA_ENV)
    hint = (
        f"expected {', '.join(expected)} under a data directory given by --data-dir or ${DATA_ENV} "
        "(or run 'promptintern data download')"
    )
    if not raw:
        raise DataError(f"no data directory: {hint}")
    root = Path(raw).expanduser()
    missing = [f for f in expected if not (root / f).is_file()]
    if missing:
        raise DataError(f"missing {', '.join(missing)} in {root}: {hint}")
    return root


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")


def builtin_template(task_name: str) -> Template:
    """The packaged template of a built-in task (``templates/<task>_{instruction,documentation}.md``)."""
    root = resources.files("promptintern.tasks").joinpath("templates")
    return Template(
        instruction=root.joinpath(f"{task_name}_instruction.md").read_text(encoding="utf-8").strip(),
        documentation=root.joinpath(f"{task_name}_documentation.md").read_text(encoding="utf-8").strip(),
    )
