"""The one root exception, `ScanError`, and a subclass per concern.

Bad input is the user's to fix, so it must reach them as one clear line, not a traceback: every
check in the library raises a subclass of `ScanError` whose message names the file, line or
field at fault and says what was expected. The command line turns any `ScanError` into
`scan: error: <message>` and exit status 2; anything else that escapes is a bug and keeps its
traceback. Subclasses also derive from the built-in exception a caller would naturally catch
(`ValueError`, `RuntimeError`, `ImportError`), so code written against those keeps working.
"""

from __future__ import annotations

import os

__all__ = [
    "BackendError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ExtractionError",
    "FolderBusyError",
    "MissingDependencyError",
    "ModelMismatchError",
    "ScanError",
]


class ScanError(Exception):
    """Root of every error the user can fix by changing an input, a file or an option."""

    exit_code = 2  # what the command line exits with: 2 is argparse's code for bad usage


class ConfigError(ScanError, ValueError):
    """A config file, override or option names an unknown field or holds an invalid value."""


class DataError(ScanError, ValueError):
    """A data file or input is malformed.

    The message reads `"{path}:{line}: field {field!r}: {problem}"` with the parts that are known,
    so it looks like a compiler error and editors can jump to it. The parts are also kept as
    attributes for callers that want to react programmatically.

    Args:
        problem: What is wrong, in words (and what was expected where useful).
        path: The file at fault, if any.
        line: The 1-based line number in `path`, if the problem is on one line.
        field: The JSON key, array or column at fault, if any.
    """

    def __init__(
        self,
        problem: str,
        *,
        path: str | os.PathLike[str] | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.problem = problem
        self.path = None if path is None else os.fspath(path)
        self.line = line
        self.field = field
        where = ""
        if self.path is not None:
            where = self.path if line is None else f"{self.path}:{line}"
        elif line is not None:
            where = f"line {line}"
        parts = [p for p in (where, field and f"field {field!r}") if p]
        super().__init__(": ".join([*parts, problem]))


class CheckpointError(ScanError, RuntimeError):
    """A checkpoint or model folder is missing, incomplete, or does not match the model."""


class ModelMismatchError(ScanError, ValueError):
    """Inputs do not fit the model: features of another size, or made with other settings."""


class BackendError(ScanError, ValueError):
    """A scoring backend cannot run here, or does not implement the options asked of it."""


class FolderBusyError(ScanError, RuntimeError):
    """Another process is writing the same output folder (it holds the folder's lock)."""


class MissingDependencyError(ScanError, ImportError):
    """An optional part is not installed; the message gives the pip command that installs it."""


class ExtractionError(ScanError, RuntimeError):
    """Feature extraction could not finish: e.g. a strict run met unreadable images.

    Args:
        message: What happened, listing the images at fault.
        failed: The images left out (`scan.features.extract.FailedImage`), for callers.
    """

    exit_code = 1  # the other images were extracted: not a usage error, documented in `scan extract -h`

    def __init__(self, message: str, failed: object = ()) -> None:
        super().__init__(message)
        self.failed = list(failed)  # type: ignore[call-overload]
