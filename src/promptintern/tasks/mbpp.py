"""MBPP (Austin et al., 2021): write a Python function that passes three asserts; pass@1.

The query is the task text followed by its asserts, in the format of the original paper's
prompt (the asserts are what fix the function's name and signature)::

    Write a function to find the shared elements from the given two lists.
    Your code should pass these tests:

    assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)
    assert ...
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import DataError
from ..io import read_jsonl
from ..prompt import PromptFormat, Template
from .base import SPLITS, Instance, Task, builtin_template, resolve_data_dir

MBPP_FILE = "mbpp/mbpp.jsonl"

# The standard split by task_id (inclusive ranges); "prompt" is the classic few-shot pool.
SPLIT_IDS: dict[str, tuple[int, int]] = {
    "prompt": (1, 10),
    "test": (11, 510),
    "validation": (511, 600),
    "train": (601, 974),
}
MBPP_SPLITS = (*SPLITS, "prompt")
TESTS_HEADER = "Your code should pass these tests:"


def mbpp_query(text: str, test_list: list[str]) -> str:
    """The task text, then the asserts one per line (the original MBPP prompt layout)."""
    asserts = "\n".join(t.strip() for t in test_list)
    return f"{text.strip()}\n{TESTS_HEADER}\n\n{asserts}"


def mbpp_instance(record: dict[str, Any]) -> Instance:
    """An :class:`Instance` from one mbpp.jsonl record; the reference code gets LF line ends."""
    code = record["code"].replace("\r\n", "\n").replace("\r", "\n").strip()
    return Instance(
        id=str(record["task_id"]),
        query=mbpp_query(record["text"], record["test_list"]),
        answer=code,
        meta={
            "task_id": record["task_id"],
            "test_list": list(record["test_list"]),
            "test_setup_code": record.get("test_setup_code", "") or "",
            "challenge_test_list": list(record.get("challenge_test_list") or []),
        },
    )


@dataclass
class MBPPTask(Task):
    """MBPP with its standard split (train 601-974, validation 511-600, test 11-510, prompt 1-10)."""

    name: ClassVar[str] = "mbpp"
    metric: ClassVar[str] = "pass@1"
    format: ClassVar[PromptFormat] = PromptFormat(
        system="You are an expert Python programmer.",
        examples_header="Examples:",
        example_format="Task: {query}\nSolution:\n{answer}",
        query_format="Task: {query}",
        answer_format="```python\n{answer}\n```",
    )
    force_keep: ClassVar[tuple[str, ...]] = ("```python", "assert", "def", "return")

    def __post_init__(self) -> None:
        self.template: Template = builtin_template(self.name)

    def load_split(self, split: str, data_dir: str | os.PathLike[str] | None = None) -> list[Instance]:
        if split not in SPLIT_IDS:
            raise DataError(f"unknown split {split!r}; choose one of {', '.join(MBPP_SPLITS)}")
        path = resolve_data_dir(data_dir, [MBPP_FILE]) / MBPP_FILE
        lo, hi = SPLIT_IDS[split]
        out = []
        for lineno, rec in enumerate(read_jsonl(path, required=("task_id", "text", "code", "test_list")), 1):
            tid = rec["task_id"]
            if not isinstance(tid, int) or not isinstance(rec["test_list"], list):
                raise DataError(f"{path}: record {lineno}: task_id must be an int and test_list a list")
            if lo <= tid <= hi:
                out.append(mbpp_instance(rec))
        if not out:
            raise DataError(f"{path}: no tasks with task_id {lo}-{hi} (the MBPP {split} split)")
        return sorted(out, key=lambda inst: inst.meta["task_id"])
