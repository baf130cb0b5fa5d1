"""Find the photos of a folder, however deep: what `scan index build` and `add` are given.

A photo collection is any folder of images (a phone's camera roll, a data set's `Images/`), with
subfolders and other files mixed in. Files are recognised by extension (decoding every file to
find out would read a whole disk); hidden files and folders (`.thumbnails`, `.git`) are skipped.
An image that turns out not to decode is reported by name later, when it is featurised.
"""

from __future__ import annotations

import os
from pathlib import Path

from scan.errors import DataError

__all__ = ["PHOTO_EXTENSIONS", "find_photos"]

PHOTO_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})


def find_photos(path: str | os.PathLike[str]) -> list[Path]:
    """Every photo under `path` (a folder, searched recursively, or one photo file), sorted.

    Raises:
        DataError: `path` does not exist, is a file that is not a photo, or a folder without photos.
    """
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() not in PHOTO_EXTENSIONS:
            raise DataError(f"not a photo (expected one of {', '.join(sorted(PHOTO_EXTENSIONS))})", path=path)
        return [path]
    if not path.is_dir():
        raise DataError("no such folder or photo", path=path)
    found: list[Path] = []
    for root, folders, files in os.walk(path):
        folders[:] = sorted(f for f in folders if not f.startswith("."))  # walk in a fixed order, skip hidden
        found.extend(
            Path(root) / name
            for name in files
            if not name.startswith(".") and Path(name).suffix.lower() in PHOTO_EXTENSIONS
        )
    if not found:
        raise DataError(
            f"no photos in this folder or below (looked for {', '.join(sorted(PHOTO_EXTENSIONS))})", path=path
        )
    return sorted(found)
