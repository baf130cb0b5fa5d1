"""Change the storage type of a precomputed folder's region features (float32 <-> float16).

COCO's bottom-up features are 33 GB as float32; float16 halves that, and the model reads either
(`PrecompSplit` converts each row to float32 as it reads it). The conversion streams: a block of
rows at a time from the memory-mapped source into a memory-mapped destination, so it needs little
memory whatever the size, and the destination appears under its name only when complete (a
temporary file renamed at the end). Values float16 cannot hold (beyond +-65504) are an error
naming the file and row, never a silent inf.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from scan.atomic import fsync_dir
from scan.errors import ConfigError, DataError

__all__ = ["DTYPES", "convert_features"]

DTYPES = {"float16": np.float16, "float32": np.float32}
BLOCK_BYTES = 64 << 20  # source bytes converted at once


def convert_features(
    folder: str | os.PathLike[str],
    out: str | os.PathLike[str] | None,
    dtype: str,
    *,
    splits: Sequence[str] | None = None,
    progress: bool = True,
) -> list[Path]:
    """Write every `{split}_ims.npy` of `folder` as `dtype` into `out` (with the split's other files).

    Args:
        folder: A precomputed folder.
        out: Where the converted folder goes; None: replace the features in `folder` itself.
        dtype: "float16" or "float32".
        splits: The splits to convert (default: every `*_ims.npy` of the folder).

    Returns:
        The feature files written.

    Raises:
        ConfigError: an unknown dtype, or `out` is `folder` (give None to convert in place).
        DataError: no feature files, a file that is not a rank-3 float array, or a value float16
            cannot hold.
    """
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    source = Path(folder)
    if not source.is_dir():
        raise DataError("no such folder", path=source)
    target = source if out is None else Path(out)
    if out is not None and target.resolve() == source.resolve():
        raise ConfigError("--out is the source folder; leave it out to convert in place")
    names = [f"{split}_ims.npy" for split in splits] if splits else sorted(p.name for p in source.glob("*_ims.npy"))
    if not names:
        raise DataError("no {split}_ims.npy files to convert", path=source)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        path = source / name
        if not path.is_file():
            raise DataError("no such feature file", path=path)
        written.append(_convert_file(path, target / name, np.dtype(DTYPES[dtype]), progress=progress))
        if target != source:  # the split's captions, boxes and extraction settings travel with it
            split = name.removesuffix("_ims.npy")
            for sibling in source.glob(f"{split}_*"):
                if sibling.name != name and sibling.is_file() and not (target / sibling.name).exists():
                    shutil.copy2(sibling, target / sibling.name)
    return written


def _convert_file(source: Path, destination: Path, dtype: np.dtype, *, progress: bool) -> Path:
    try:
        features = np.load(source, mmap_mode="r")
    except (OSError, ValueError) as error:
        raise DataError(f"unreadable feature file: {error}", path=source) from None
    if features.ndim != 3 or features.dtype.kind != "f":
        raise DataError(f"expected a rank-3 float array, got {features.dtype} {features.shape}", path=source)
    if features.dtype == dtype:
        if destination != source:
            shutil.copy2(source, destination)
        return destination
    temporary = destination.with_name(f".{destination.name}.converting.tmp")
    converted = np.lib.format.open_memmap(temporary, mode="w+", dtype=dtype, shape=features.shape)
    rows = max(1, BLOCK_BYTES // max(1, features[0].nbytes))
    try:
        for start in range(0, features.shape[0], rows):
            with np.errstate(over="ignore"):  # overflow is checked just below, by row
                block = np.asarray(features[start : start + rows]).astype(dtype)
            if not np.isfinite(block).all() and np.isfinite(features[start : start + rows]).all():
                bad = start + int(np.argwhere(~np.isfinite(block))[0][0])
                raise DataError(f"row {bad} holds a value {dtype} cannot represent (beyond +-65504)", path=source)
            converted[start : start + rows] = block
            if progress:
                print(
                    f"\r{source.name}: {min(start + rows, features.shape[0])}/{features.shape[0]} rows",
                    end="",
                    file=sys.stderr,
                )
        converted.flush()
        del converted
        os.replace(temporary, destination)
        fsync_dir(destination.parent)
    finally:
        temporary.unlink(missing_ok=True)
        if progress:
            print(file=sys.stderr)
    return destination
