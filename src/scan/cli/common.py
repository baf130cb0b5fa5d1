"""Helpers shared by the subcommands: turning known errors into one clear line, not a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

from scan.config import ConfigError
from scan.errors import DataError
from scan.train.checkpoint import CheckpointError

# ImportError: an optional part (extraction, MiniLM) is not installed; its message names the pip command.
USER_ERRORS = (ConfigError, DataError, CheckpointError, FileNotFoundError, ImportError)


def report_user_errors(function: Callable[..., int]) -> Callable[..., int]:
    """Print `scan: error: <message>` and return 2 for bad input; real bugs keep their traceback."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs) -> int:
        try:
            return function(*args, **kwargs)
        except USER_ERRORS as error:
            print(f"scan: error: {error}", file=sys.stderr)
            return 2

    return wrapper
