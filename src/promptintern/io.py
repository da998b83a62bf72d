"""Atomic file writes and strict JSONL reading.

Every output goes to a temporary file in the destination directory and is renamed into
place, so a crash never leaves a half-written file under its final name. ``mkstemp`` and
``mkdtemp`` create their entries private (0600 / 0700) whatever the umask; the published file
or directory gets the mode a plain ``open``/``mkdir`` would have given it (0644 / 0755 under
umask 022), so a server running as another user can read an export or a run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import DataError, RunDirError, UserError

MAX_LINE_BYTES = 1 << 20  # 1 MiB per JSONL record; longer lines are refused, not loaded.


def current_umask() -> int:
    """The process umask, read without changing it (``/proc``; else set-and-restore)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish_modes(path: Path, umask: int | None = None) -> None:
    """Give ``path`` (and, for a directory, everything under it) the read bits the umask allows.

    Only bits are added: files get ``0o666 & ~umask``, directories ``0o777 & ~umask``, on top of
    what they have (an executable stays executable, a deliberately wider mode stays wide).
    """
    mask = current_umask() if umask is None else umask
    entries = [path]
    if path.is_dir() and not path.is_symlink():
        entries += [p for p in path.rglob("*") if not p.is_symlink()]
    for entry in entries:
        want = (0o777 if entry.is_dir() else 0o666) & ~mask
        mode = entry.stat().st_mode & 0o7777
        if mode | want != mode:
            entry.chmod(mode | want)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        if tmp_path.exists():
            publish_modes(tmp_path)
        os.replace(tmp_path, dest)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise UserError(f"disk full while writing {dest}; nothing was written", 6) from exc
        raise
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path``; it replaces ``path`` on success.

    An existing ``path`` is moved aside (``.NAME.*.old``) and deleted only once the new
    directory is in place, so a crash never leaves a half-written directory under ``path``.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        publish_modes(tmp)
        old = None
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
            os.replace(dest, old / dest.name)
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def locked_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold an exclusive lock on directory ``path`` (created if missing) while the block runs.

    ``flock`` on the directory itself: no lock file to leave behind, and the kernel drops the
    lock when the holder dies, however it dies, so a killed run never leaves a stale one. A
    second holder is refused at once with a one-line :class:`RunDirError`.
    """
    d = Path(path)
    d.mkdir(parents=True, exist_ok=True)
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirError(f"{d} is in use by another promptintern process; "
                              "wait for it to finish, or choose another output_dir") from None
        yield d
    finally:
        os.close(fd)  # releases the lock


def clear_dir(path: str | os.PathLike[str]) -> None:
    """Delete everything inside ``path`` but keep the directory (and so a lock held on it)."""
    for child in Path(path).iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write ``obj`` as indented, key-sorted JSON."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> None:
    """Atomically write ``rows`` as JSON lines."""
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file, turning a malformed one into a :class:`DataError`."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"{p}: file not found") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{p}: not valid UTF-8 (byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{p}:{exc.lineno}: invalid JSON: {exc.msg}") from exc


def iter_jsonl(
    path: str | os.PathLike[str], required: tuple[str, ...] = (), max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[dict[str, Any]]:
    """Yield the objects of a JSONL file, failing with file and line number on bad input.

    Blank lines are skipped. Each record must be a JSON object holding ``required`` keys.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: {'a directory, not a file' if p.is_dir() else 'file not found'}")
    with open(p, "rb") as fh:
        for lineno, raw in enumerate(_bounded_lines(fh, max_line_bytes, p), start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{p}:{lineno}: not valid UTF-8 (byte {exc.start})") from exc
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(f"{p}:{lineno}: invalid JSON: {exc.msg}") from exc
            if not isinstance(obj, dict):
                raise DataError(f"{p}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            missing = [k for k in required if k not in obj]
            if missing:
                raise DataError(f"{p}:{lineno}: missing field(s) {', '.join(map(repr, missing))}")
            yield obj


def _bounded_lines(fh: Any, limit: int, p: Path) -> Iterator[bytes]:
    lineno = 0
    while True:
        line = fh.readline(limit + 1)
        if not line:
            return
        lineno += 1
        if len(line) > limit and not line.endswith(b"\n"):
            raise DataError(f"{p}:{lineno}: line longer than {limit} bytes")
        yield line


def read_jsonl(path: str | os.PathLike[str], required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Read a whole JSONL file (see :func:`iter_jsonl`)."""
    return list(iter_jsonl(path, required))
