"""One split of a data set in SCAN's precomputed-feature layout, memory-mapped and validated.

SCAN (Sec. 3.1) represents an image by ``R`` region features from a bottom-up-attention detector,
released as one array per split: ``{split}_ims.npy`` ``(N, R, F)`` next to ``{split}_caps.txt``
with one caption per line, 5 per image in image order (spec, "Data"). Some releases repeat every
image's features once per caption, so the row count equals the caption count. COCO train alone is
33 GB, so features are memory-mapped and only the rows asked for are read. The layout is checked
once when a split is opened, and every problem is reported as a :class:`DataError` naming the file
and line, instead of as a shape error deep inside training.

The counting model, used everywhere downstream: caption ``k`` belongs to image
``image_of_caption(k) == k // captions_per_image``; images ``0..num_images-1`` are counted once
even when their features are repeated (then image ``i`` lives in feature row
``i * captions_per_image``, i.e. rows 0, 5, 10, ...), which is what retrieval metrics need.
Loading goes through :meth:`PrecompSplit.image_features` (or :meth:`feature_row_of_caption` for the
raw row), so callers never deal with the repetition.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scan.data.text import read_utf8_text
from scan.errors import DataError

__all__ = ["DEFAULT_CAPTIONS_PER_IMAGE", "SUPPORTED_FEATURE_DTYPES", "PrecompSplit", "read_lines"]

SUPPORTED_FEATURE_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))
DEFAULT_CAPTIONS_PER_IMAGE = 5  # Flickr30K and COCO; assumed when features are repeated


@dataclass(eq=False)
class PrecompSplit:
    """A validated split: memory-mapped region features, their captions and optional extras.

    Build it with :meth:`open`; the constructor only stores what ``open`` checked.
    """

    folder: Path  # the data set folder holding every split's files
    split: str  # "train", "dev", "test", "testall", ...
    features: np.ndarray  # (rows, R, F) float16/float32, memory-mapped; rows = N, or M if repeated
    captions: list[str]  # (M,) one caption per line of {split}_caps.txt, whitespace-stripped
    captions_per_image: int  # captions of each image, consecutive in the file
    repeated: bool  # True when features hold one row per caption rather than per image
    boxes: np.ndarray | None  # (rows or N, R, 4) region boxes x1, y1, x2, y2 in pixels, mmap
    image_ids: list[str] | None  # (N,) an id or file name per image, from {split}_ids.txt

    @classmethod
    def open(
        cls,
        folder: str | os.PathLike[str],
        split: str,
        *,
        captions_per_image: int | None = None,
    ) -> PrecompSplit:
        """Open and check ``{split}_ims.npy``, ``{split}_caps.txt`` and their optional files.

        Args:
            folder: The folder holding the split's files.
            split: The split name used in the file names.
            captions_per_image: ``None`` (the default) accepts SCAN's layout of 5 captions per
                image only: ``M == 5 N`` captions for ``N`` feature rows, or ``M == N`` (features
                repeated once per caption). Give it for any other layout, e.g. 1 for one caption
                per image; it is never guessed from the counts.

        Raises:
            DataError: Naming the file, if a required file is missing, the features are not a
                rank-3 float16/float32 array, the counts disagree, a caption line is empty, or an
                optional file does not match the features.
        """
        folder = Path(folder)
        features_path = folder / f"{split}_ims.npy"
        captions_path = folder / f"{split}_caps.txt"
        for required in (features_path, captions_path):
            if not required.is_file():
                raise DataError(f"missing file for split {split!r}; {_describe_folder(folder)}", path=required)

        features = _open_array(features_path)
        if features.ndim != 3:
            raise DataError(
                f"features must be a rank-3 array (images, regions, feature dims), got shape {features.shape}",
                path=features_path,
            )
        if features.dtype not in SUPPORTED_FEATURE_DTYPES:
            raise DataError(
                f"unsupported feature dtype {features.dtype}; expected float16 or float32 "
                f"(convert once with np.save(path, np.load(path).astype(np.float32)))",
                path=features_path,
            )
        rows = features.shape[0]
        if rows == 0 or features.shape[1] == 0 or features.shape[2] == 0:
            raise DataError(f"features are empty, shape {features.shape}", path=features_path)

        captions = read_lines(captions_path, what="caption")
        per_image, repeated = _infer_layout(
            rows=rows,
            num_captions=len(captions),
            captions_per_image=captions_per_image,
            features_path=features_path,
            captions_path=captions_path,
        )
        num_images = rows // per_image if repeated else rows

        boxes_path = folder / f"{split}_boxes.npy"
        boxes = None
        if boxes_path.is_file():
            boxes = _open_array(boxes_path)
            leading = f"{rows}" if rows == num_images else f"{rows} or {num_images}"
            expected = f"({leading}, {features.shape[1]}, 4)"
            if boxes.ndim != 3 or boxes.shape[0] not in (rows, num_images) or boxes.shape[1:] != (features.shape[1], 4):
                raise DataError(
                    f"boxes have shape {boxes.shape}, expected {expected} to match features "
                    f"{features.shape} in {features_path.name}",
                    path=boxes_path,
                )
            if boxes.dtype.kind not in "fiu":
                raise DataError(f"boxes must be numbers, got dtype {boxes.dtype}", path=boxes_path)

        ids_path = folder / f"{split}_ids.txt"
        image_ids = None
        if ids_path.is_file():
            image_ids = _per_image_ids(
                read_lines(ids_path, what="image id"),
                num_images=num_images,
                num_captions=len(captions),
                captions_per_image=per_image,
                path=ids_path,
            )

        return cls(
            folder=folder,
            split=split,
            features=features,
            captions=captions,
            captions_per_image=per_image,
            repeated=repeated,
            boxes=boxes,
            image_ids=image_ids,
        )

    # Paths and sizes.

    @property
    def features_path(self) -> Path:
        return self.folder / f"{self.split}_ims.npy"

    @property
    def captions_path(self) -> Path:
        return self.folder / f"{self.split}_caps.txt"

    @property
    def boxes_path(self) -> Path:
        return self.folder / f"{self.split}_boxes.npy"

    @property
    def ids_path(self) -> Path:
        return self.folder / f"{self.split}_ids.txt"

    @property
    def num_images(self) -> int:
        """Distinct images ``N``, each counted once even when its features are repeated."""
        rows = self.features.shape[0]
        return rows // self.captions_per_image if self.repeated else rows

    @property
    def num_captions(self) -> int:
        return len(self.captions)

    @property
    def num_regions(self) -> int:
        return self.features.shape[1]

    @property
    def feature_dim(self) -> int:
        return self.features.shape[2]

    # Index maps.

    def image_of_caption(self, k: int) -> int:
        """The image (``0..N-1``, counted once) that caption ``k`` describes."""
        _check_index(k, self.num_captions, "caption")
        return k // self.captions_per_image

    def image_of_each_caption(self) -> np.ndarray:
        """``image_of_caption`` for every caption at once, ``(M,)`` int64, for metrics."""
        return np.arange(self.num_captions, dtype=np.int64) // self.captions_per_image  # (M,)

    def feature_row_of_image(self, i: int) -> int:
        """The row of ``features`` holding image ``i``."""
        _check_index(i, self.num_images, "image")
        return i * self.captions_per_image if self.repeated else i

    def feature_row_of_caption(self, k: int) -> int:
        """The row of ``features`` paired with caption ``k`` in the file's own layout."""
        _check_index(k, self.num_captions, "caption")
        return k if self.repeated else k // self.captions_per_image

    # Reading.

    def image_features(self, i: int) -> np.ndarray:
        """Read image ``i``'s region features as a fresh float32 array, ``(R, F)``.

        Raises:
            DataError: Naming the file and row, if the row holds NaN or infinite values (a
                corrupt or truncated extraction would otherwise poison training silently).
        """
        row = self.feature_row_of_image(i)
        regions = np.array(self.features[row], dtype=np.float32)  # (R, F), copied out of the mmap
        if not np.isfinite(regions).all():
            bad = np.argwhere(~np.isfinite(regions))
            raise DataError(
                f"row {row} (image {i}) has {len(bad)} NaN or infinite values, first at "
                f"region {bad[0][0]}, dim {bad[0][1]}",
                path=self.features_path,
            )
        return regions

    def image_boxes(self, i: int) -> np.ndarray:
        """Image ``i``'s region boxes as float32 ``(R, 4)`` pixel x1, y1, x2, y2.

        Raises:
            LookupError: If the split has no ``{split}_boxes.npy``.
        """
        if self.boxes is None:
            raise LookupError(f"split {self.split!r} has no boxes: {self.boxes_path} is missing")
        _check_index(i, self.num_images, "image")
        row = self.feature_row_of_image(i) if len(self.boxes) == len(self.features) else i
        return np.array(self.boxes[row], dtype=np.float32)  # (R, 4)

    # Pickling for data-loader workers: a memmap would pickle as its whole contents, so only the
    # paths travel and each worker maps the files again.

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["features"] = None
        state["boxes"] = None
        state["_has_boxes"] = self.boxes is not None
        return state

    def __setstate__(self, state: dict) -> None:
        has_boxes = state.pop("_has_boxes")
        self.__dict__.update(state)
        self.features = np.load(self.features_path, mmap_mode="r")
        self.boxes = np.load(self.boxes_path, mmap_mode="r") if has_boxes else None

    def __repr__(self) -> str:
        return (
            f"PrecompSplit({str(self.folder)!r}, {self.split!r}: {self.num_images} images x "
            f"{self.num_regions} regions x {self.feature_dim} dims {self.features.dtype}, "
            f"{self.num_captions} captions, {self.captions_per_image} per image"
            f"{', repeated features' if self.repeated else ''})"
        )


def read_lines(path: str | os.PathLike[str], *, what: str = "line") -> list[str]:
    """Read a one-item-per-line UTF-8 text file, rejecting empty lines.

    The last line may lack its newline; one trailing newline is not an empty item, but any other
    blank line is an error, because silently dropping it would shift every later caption onto
    the wrong image. Windows line endings are accepted.

    Args:
        path: The text file.
        what: What a line holds, for error messages ("caption", "image id").

    Returns:
        The lines, with surrounding whitespace stripped.

    Raises:
        DataError: Naming the file and 1-based line, for an empty line, bad UTF-8 or an empty file.
    """
    path = Path(path)
    text = read_utf8_text(path)
    if not text:
        raise DataError(f"file is empty, expected one {what} per line", path=path)
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline ending the last line
    stripped = [line.strip() for line in lines]
    for number, line in enumerate(stripped, start=1):
        if not line:
            raise DataError(f"empty {what} line (every line must hold one {what})", path=path, line=number)
    return stripped


def _open_array(path: Path) -> np.ndarray:
    """Memory-map a ``.npy`` file, turning numpy's errors into a :class:`DataError`."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise DataError(f"not a readable .npy array: {error}", path=path) from None


def _infer_layout(
    *,
    rows: int,
    num_captions: int,
    captions_per_image: int | None,
    features_path: Path,
    captions_path: Path,
) -> tuple[int, bool]:
    """Return ``(captions_per_image, repeated)`` for ``rows`` feature rows and the captions."""
    counts = f"{features_path.name} has {rows} feature rows and {captions_path.name} has {num_captions} captions"
    if captions_per_image is not None:
        if captions_per_image < 1:
            raise ValueError(f"captions_per_image must be at least 1, got {captions_per_image}")
        if num_captions == rows * captions_per_image:
            return captions_per_image, False
        if num_captions == rows and rows % captions_per_image == 0:
            return captions_per_image, True
        raise DataError(
            f"{counts}, which does not fit {captions_per_image} captions per image (expected "
            f"{rows * captions_per_image} captions, or features repeated once per caption)",
            path=captions_path,
        )
    if num_captions == rows:
        if rows % DEFAULT_CAPTIONS_PER_IMAGE:
            raise DataError(
                f"{counts}: equal counts mean features repeated per caption, "
                f"{DEFAULT_CAPTIONS_PER_IMAGE} per image, but {rows} is not a multiple of "
                f"{DEFAULT_CAPTIONS_PER_IMAGE} (for one caption per image, pass "
                f"captions_per_image=1)",
                path=captions_path,
            )
        return DEFAULT_CAPTIONS_PER_IMAGE, True
    if num_captions % rows:
        raise DataError(
            f"{counts}; the caption count must be a multiple of the image count "
            f"(captions k*c .. k*c+c-1 describe image k)",
            path=captions_path,
        )
    per_image = num_captions // rows
    if per_image != DEFAULT_CAPTIONS_PER_IMAGE:
        # Any other multiple is far more often a captions file of another split or data set than a
        # layout with another count, and guessing would silently pair captions with wrong images.
        raise DataError(
            f"{counts}, {per_image} per image; SCAN's layout has {DEFAULT_CAPTIONS_PER_IMAGE} "
            f"(expected {rows * DEFAULT_CAPTIONS_PER_IMAGE} captions). If this data set really has "
            f"{per_image} captions per image, say so: PrecompSplit.open(folder, split, "
            f"captions_per_image={per_image})",
            path=captions_path,
        )
    return per_image, False


def _per_image_ids(
    ids: list[str], *, num_images: int, num_captions: int, captions_per_image: int, path: Path
) -> list[str]:
    """One id per image, from a file with one id per image or one per caption."""
    if len(ids) == num_images:
        return ids
    if len(ids) == num_captions:
        per_image = ids[::captions_per_image]
        for k, image_id in enumerate(ids):
            if image_id != per_image[k // captions_per_image]:
                raise DataError(
                    f"with one id per caption, the {captions_per_image} ids of each image must "
                    f"match, but {image_id!r} differs from {per_image[k // captions_per_image]!r}",
                    path=path,
                    line=k + 1,
                )
        return per_image
    raise DataError(
        f"has {len(ids)} ids, expected {num_images} (one per image) or {num_captions} (one per caption)",
        path=path,
    )


def _check_index(i: int, size: int, what: str) -> None:
    if not 0 <= i < size:
        raise IndexError(f"{what} index {i} is out of range for {size} {what}s")


def _describe_folder(folder: Path) -> str:
    """What a folder holds, for a missing-file message."""
    if not folder.is_dir():
        return f"the folder {folder} does not exist"
    names = sorted(p.name for p in folder.iterdir())
    if not names:
        return f"the folder {folder} is empty"
    splits = sorted(name[: -len("_ims.npy")] for name in names if name.endswith("_ims.npy"))
    shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
    return f"{folder} holds: {shown}" + (f" (splits with features: {', '.join(splits)})" if splits else "")
