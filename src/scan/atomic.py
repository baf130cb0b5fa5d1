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


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries to disk, so a rename into it survives a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        with os.fdopen(fd, mode, encoding="utf-8" if mode == "w" else None) as handle:
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


class FolderLock:
    """An exclusive, non-blocking lock on an output folder, held while one process writes it.

    Two writers of one folder (two `scan extract --out X` at once, two trainings of one run
    directory) would interleave their files into a mix that neither asked for. The lock is an
    `flock` on `{folder}/.lock`: the kernel drops it when the holder exits, however it exits, so
    a killed run never leaves the folder locked. The file keeps the holder's pid for the message.

        with FolderLock(out, purpose="scan extract"):
            ...  # write into out

    Raises:
        FolderBusyError: another process holds the lock (the message names it and its pid).
    """

    FILE = ".lock"

    def __init__(self, folder: str | os.PathLike[str], *, purpose: str = "another scan process") -> None:
        self.folder = Path(folder)
        self.purpose = purpose
        self._handle: IO | None = None

    def acquire(self) -> FolderLock:
        import fcntl

        from scan.errors import FolderBusyError

        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.folder / self.FILE, "a+", encoding="utf-8")  # noqa: SIM115 (held until release)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise FolderBusyError(
                f"{self.folder}: in use by another process ({holder}); wait for it to finish or choose another folder"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{self.purpose}, pid {os.getpid()}")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the descriptor drops the flock
            self._handle = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()
