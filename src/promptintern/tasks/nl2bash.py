"""NL2Bash (Lin et al., LREC 2018): English request -> one Bash command line, scored by BLEU.

The data ships without an official split, so we define a seeded one (our choice, see
:func:`split_pairs`): descriptions are grouped by a normalised form of the request (lowercase,
whitespace collapsed, trailing ``.?!`` dropped) and whole groups go to one split, so no
request -- not even one differing only in case or a final period -- is shared across splits.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ..errors import ConfigError, DataError
from ..prompt import PromptFormat, Template
from .base import Instance, Task, builtin_template, check_split, resolve_data_dir

NL_FILE = "nl2bash/all.nl"
CM_FILE = "nl2bash/all.cm"

# The utilities the documentation covers, most frequent in all.cm first; a compressor must keep them.
UTILITIES = (
    "find", "xargs", "grep", "sort", "awk", "echo", "sed", "ls", "rm", "cut", "cat", "wc", "head",
    "chmod", "tr", "tail", "uniq", "mkdir", "mv", "dirname", "tee", "basename", "pwd", "tar", "chown",
    "readlink", "cp", "diff", "ln", "df", "du", "paste",
)  # fmt: skip

Pair = tuple[int, str, str]  # (0-based line index, request, command)


def read_pairs(root: Path) -> list[Pair]:
    """Line-aligned (index, request, command) triples from ``all.nl``/``all.cm``, unmodified."""
    nl = _read_lines(root / NL_FILE)
    cm = _read_lines(root / CM_FILE)
    if len(nl) != len(cm):
        raise DataError(
            f"{root / NL_FILE} has {len(nl)} lines but {root / CM_FILE} has {len(cm)}; they must be line-aligned"
        )
    return [(i, q, a) for i, (q, a) in enumerate(zip(nl, cm, strict=True))]


def _read_lines(path: Path) -> list[str]:
    # split("\n") rather than splitlines(): commands may contain \f or \x1c, which are not line breaks here.
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 (byte {exc.start})") from exc
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def clean_pairs(pairs: list[Pair]) -> list[Pair]:
    """Strip both sides, drop pairs with an empty side and exact duplicate pairs (first kept)."""
    seen: set[tuple[str, str]] = set()
    out: list[Pair] = []
    for idx, q, a in pairs:
        q, a = q.strip(), a.strip()
        if not q or not a or (q, a) in seen:
            continue
        seen.add((q, a))
        out.append((idx, q, a))
    return out


def nl_key(query: str) -> str:
    """The grouping key of a request: near-identical requests must land in the same split."""
    return " ".join(query.lower().split()).rstrip(".?! ")


def split_pairs(pairs: list[Pair], sizes: dict[str, int], seed: int) -> dict[str, list[Pair]]:
    """Assign whole request groups to test, validation, then train; deterministic in ``seed``.

    Groups (in first-appearance order) are shuffled with ``random.Random(seed)``; each goes to the
    first split among test, validation, train that still has room for all of it, else it is left
    out. Test and validation therefore do not depend on ``train_size``, and sizes are exact as long
    as small groups remain. Train may come out short (it takes what remains); test and validation
    may not. Each split is returned in original line order.
    """
    groups: dict[str, list[Pair]] = {}
    for p in pairs:
        groups.setdefault(nl_key(p[1]), []).append(p)
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    out: dict[str, list[Pair]] = {"test": [], "validation": [], "train": []}
    for group in order:
        for split in ("test", "validation", "train"):
            if len(out[split]) + len(group) <= sizes[split]:
                out[split].extend(group)
                break
    for split in ("test", "validation"):
        if len(out[split]) < sizes[split]:
            raise DataError(
                f"NL2Bash has {len(pairs)} usable pairs: cannot fill {split}_size={sizes[split]} "
                f"(got {len(out[split])}); lower test_size/validation_size"
            )
    return {s: sorted(ps) for s, ps in out.items()}


@dataclass
class NL2BashTask(Task):
    """NL2Bash with a seeded, request-disjoint split."""

    train_size: int = field(default=8000, metadata={"help": "Training pairs (fewer if the data runs out)."})
    validation_size: int = field(default=600, metadata={"help": "Validation pairs (must be available)."})
    test_size: int = field(default=600, metadata={"help": "Test pairs (must be available)."})
    seed: int = field(default=0, metadata={"help": "Seed of the split shuffle."})

    name: ClassVar[str] = "nl2bash"
    metric: ClassVar[str] = "bleu"
    format: ClassVar[PromptFormat] = PromptFormat(
        system="You are a helpful assistant who writes Bash commands.",
        examples_header="Examples:",
        example_format="Request: {query}\nCommand: {answer}",
        query_format="Request: {query}",
        answer_format="{answer}",
    )
    force_keep: ClassVar[tuple[str, ...]] = UTILITIES

    def __post_init__(self) -> None:
        for key in ("train_size", "validation_size", "test_size", "seed"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"nl2bash option {key} must be a non-negative integer, got {value!r}")
        self.template: Template = builtin_template(self.name)
        self._splits: dict[Path, dict[str, list[Instance]]] = {}

    def load_split(self, split: str, data_dir: str | os.PathLike[str] | None = None) -> list[Instance]:
        check_split(split)
        root = resolve_data_dir(data_dir, [NL_FILE, CM_FILE])
        key = root.resolve()
        if key not in self._splits:
            sizes = {"train": self.train_size, "validation": self.validation_size, "test": self.test_size}
            parts = split_pairs(clean_pairs(read_pairs(root)), sizes, self.seed)
            self._splits[key] = {
                s: [Instance(id=f"nl2bash-{i}", query=q, answer=a) for i, q, a in ps] for s, ps in parts.items()
            }
        return list(self._splits[key][split])
