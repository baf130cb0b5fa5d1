"""The one exception raised for bad data files and inputs.

Data problems (a missing split file, a caption line that is empty, a vocabulary whose ids disagree)
surface far from where they were made, often hours into a run. Every check in ``scan.data`` raises
:class:`DataError` with a message that starts with the file (and line or field) at fault and says
what is wrong, so the fix is obvious from the message alone. It subclasses :class:`ValueError` so
callers can catch either.
"""

from __future__ import annotations

import os

__all__ = ["DataError"]


class DataError(ValueError):
    """A data file or input is malformed.

    The message reads ``"{path}:{line}: {field}: {problem}"`` with the parts that are known, so it
    looks like a compiler error and editors can jump to it. The parts are also kept as attributes
    for callers that want to react programmatically.

    Args:
        problem: What is wrong, in words (and what was expected where useful).
        path: The file at fault, if any.
        line: The 1-based line number in ``path``, if the problem is on one line.
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
