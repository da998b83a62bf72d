"""What keeps a run directory from mixing runs beyond its config: the lock, and the data it was
made from.

A run's stage files, checkpoints and weights were derived from its task's data; an answer edited
in ``train.jsonl`` after an interruption would otherwise go unseen on ``--resume`` (the stage
files still match their own fingerprints) and training would finish on the old data. So
``run.json`` records a hash per split, and a resume with other data is refused, naming the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import RunDirError
from .io import locked_dir, read_json
from .tasks.base import Instance, Task


@contextlib.contextmanager
def locked_new_or_existing(run_dir: Path) -> Iterator[Path]:
    """:func:`locked_dir` on ``run_dir``; a directory it had to create goes again when the block
    fails while it is still empty (a refused config leaves nothing behind)."""
    created = not run_dir.exists()
    with locked_dir(run_dir):
        try:
            yield run_dir
        except BaseException:
            if created and run_dir.is_dir() and not any(run_dir.iterdir()):
                run_dir.rmdir()
            raise


def input_digests(task: Task, splits: dict[str, Sequence[Instance]]) -> dict[str, Any]:
    """Per split the run uses: a hash of its instances as loaded (sampled), and where they come from."""
    out = {}
    for split, items in splits.items():
        if items:
            h = hashlib.sha256()
            for inst in items:
                h.update(json.dumps(dataclasses.asdict(inst), sort_keys=True, default=str).encode() + b"\n")
            out[split] = {"sha256": h.hexdigest(), "source": task.split_source(split)}
    return out


def check_same_inputs(run_dir: Path, inputs: dict[str, Any]) -> None:
    """Refuse data that changed since ``run_dir`` was made (its stage files and weights came from the old)."""
    saved = read_json(run_dir / "run.json").get("inputs")
    if saved is None:
        return
    for split in sorted(set(saved) | set(inputs)):
        if (saved.get(split) or {}).get("sha256") != (inputs.get(split) or {}).get("sha256"):
            source = (inputs.get(split) or saved.get(split))["source"]
            raise RunDirError(f"{run_dir} was made from other {split} data: {source} changed since; "
                              "restore it to resume, or use --force to start over")
