"""Decoding the text files a user hands in (captions, split files, vocabularies) as UTF-8.

A file saved in another encoding (Latin-1, Windows-1252: "café" as one byte ``\\xe9``) would
otherwise surface as a bare ``UnicodeDecodeError`` traceback giving a byte offset. Every reader of
user text goes through :func:`read_utf8_text`, so the user instead gets one line naming the file
and the line of the first bad byte, and what to do about it.
"""

from __future__ import annotations

import os
from pathlib import Path

from scan.errors import DataError

__all__ = ["read_utf8_text"]


def read_utf8_text(path: str | os.PathLike[str]) -> str:
    """Read a whole file as UTF-8 text, with line endings as they are in the file.

    Args:
        path: The file.

    Returns:
        The decoded text (a byte order mark, if any, is kept as ``"\\ufeff"``; callers that accept
        one strip it).

    Raises:
        FileNotFoundError: If ``path`` does not exist (callers word this one themselves).
        DataError: Naming the file and the 1-based line of the first byte that is not UTF-8.
    """
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DataError(
            f"not valid UTF-8 (byte 0x{data[error.start]:02x} at offset {error.start}: {error.reason}); "
            "save it as UTF-8 (most editors offer this under 'Save as' or 'Encoding')",
            path=path,
            line=line,
        ) from None
