"""Content checksums of saved weights: written when a directory of weights is saved, verified
before it is read.

A weight file can be damaged in ways its own format does not reveal: bytes flipped inside a
safetensors tensor block leave a valid header (training would go on from garbage, silently), a
``trainer_state.json`` rewritten as ``{}`` still parses. So every directory of weights this
package writes (a checkpoint, a stage's ``final/``, ``adapter/``, an export) gets
``checksums.json``, the SHA-256 of each of its files at save time, written after them.

A directory without it was written by an older version (or its save was cut short before the
checksums): :func:`directory_problem` then checks what the formats allow (safetensors header
against the file size, the zip CRCs ``torch.save`` writes, JSON syntax) and reports it as
unverified, so old runs keep working as before.

Imports nothing heavy: the CLI verifies before it loads a model.
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from collections.abc import Callable
from pathlib import Path

from .io import read_json, write_json

CHECKSUMS_FILE = "checksums.json"
_RANK_FILE = re.compile(r"rng_state_\d+\.pth")  # written by each process of a multi-process run


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_checksums(directory: Path, skip: Callable[[str], bool] = lambda name: False) -> None:
    """Record the SHA-256 of every file in ``directory`` (but ``skip``-ped names) in ``checksums.json``."""
    directory = Path(directory)
    digests = {p.name: file_sha256(p) for p in sorted(directory.iterdir())
               if p.is_file() and p.name != CHECKSUMS_FILE and not p.name.startswith(".") and not skip(p.name)}
    write_json(directory / CHECKSUMS_FILE, {"sha256": digests})


def write_checkpoint_checksums(directory: Path) -> None:
    """:func:`write_checksums` for a Trainer checkpoint written by the main process (other ranks'
    RNG files may still be in flight; they are checked by format only)."""
    write_checksums(directory, skip=lambda name: bool(_RANK_FILE.fullmatch(name)))


def has_checksums(directory: Path) -> bool:
    return (Path(directory) / CHECKSUMS_FILE).is_file()


def directory_problem(directory: Path) -> str | None:
    """Why the weights in ``directory`` cannot be trusted (None: they can).

    With ``checksums.json``: every listed file must exist and hash to its digest. Without it:
    the format checks of :func:`format_problem` on every file.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return "missing"
    if not has_checksums(directory):
        for path in sorted(directory.iterdir()):
            problem = format_problem(path) if path.is_file() else None
            if problem:
                return problem
        return None
    try:
        digests = json.loads((directory / CHECKSUMS_FILE).read_text(encoding="utf-8"))["sha256"]
        items = sorted(digests.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"{CHECKSUMS_FILE} unreadable"
    for name, digest in items:
        path = directory / name
        if not path.is_file():
            return f"{name} missing"
        if file_sha256(path) != digest:
            return f"{name} does not match its checksum (damaged since it was saved)"
    return None


def format_problem(path: Path) -> str | None:
    """What a file's own format shows to be wrong with it (None: nothing), short of unpickling."""
    name = path.name
    try:
        if name.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(str(path), "np") as fh:  # checks the header covers the file exactly
                fh.keys()
        elif name.endswith((".pt", ".pth", ".bin")):
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            if bad is not None:
                return f"{name}: member {bad} is corrupt"
        elif name.endswith(".json"):
            read_json(path)
    except Exception as exc:  # any failure to read it means it cannot be used
        return f"{name} unreadable ({type(exc).__name__})"
    return None
