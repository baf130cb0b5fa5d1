"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every output a user keeps (vocabularies, results, figures, checkpoint metadata, extraction
records) goes through here: the bytes go to a temporary file in the destination folder, are
flushed and fsynced, and `os.replace` puts them in place. If the process dies mid-write the old
file is untouched and the temporary file is removed (or, after a hard kill, left as a hidden
`.name.*.tmp` that nothing reads).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO]:
    """Open a temporary sibling of `path` for writing; on success it replaces `path`.

    Args:
        path: the destination; its folder is created if missing.
        mode: "w" (text, UTF-8) or "wb" (bytes).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes only, mode 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes private files; outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write `text` to `path` atomically; returns the path."""
    with atomic_open(path, "w") as handle:
        handle.write(text)
    return Path(path)
