"""User-facing errors.

A :class:`UserError` is a mistake the user can fix (bad config, missing data, malformed
file). The CLI prints it as one line and exits with ``exit_code``; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator


class UserError(Exception):
    """An error caused by user input; printed as one line without a traceback."""

    exit_code: int = 2

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(UserError):
    """Invalid configuration value or file."""


class DataError(UserError):
    """Missing or malformed data."""

    exit_code = 3


class ModelError(UserError):
    """A model that cannot be found or loaded."""

    exit_code = 4


class RunDirError(UserError):
    """A run directory that conflicts with the requested run."""

    exit_code = 5


class Stopped(UserError):
    """The run was asked to stop (SIGTERM, SIGINT) and stopped cleanly; ``--resume`` continues it."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message, 128 + signum)  # the shell's convention for a signalled process


# How libraries report a full disk when they do not raise ENOSPC: torch's zip writer
# (PytorchStreamWriter) and C++ streams lose the errno on the way up.
_WRITE_FAILED = ("No space left on device", "file write failed", "iostream error")


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc``, or an exception it came from, says the disk is full."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        if isinstance(seen, RuntimeError) and any(m in str(seen) for m in _WRITE_FAILED):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextlib.contextmanager
def disk_full_is_one_line(what: str) -> Iterator[None]:
    """Turn a full disk while the block writes ``what`` into a one-line :class:`UserError` (exit 6)."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        if not disk_full(exc):
            raise
        raise UserError(f"disk full while writing {what}; free space and rerun with --resume", 6) from exc
