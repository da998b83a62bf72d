"""User-facing errors.

A :class:`UserError` is a mistake the user can fix (bad config, missing data, malformed
file). The CLI prints it as one line and exits with ``exit_code``; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


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
