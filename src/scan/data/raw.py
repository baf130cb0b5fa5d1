"""Readers for raw image-caption collections: the input of feature extraction (SCAN Sec. 4, data).

SCAN trains on precomputed region features, but those come from somewhere: a folder of photos and
their captions. Two public layouts cover Flickr8k, Flickr30K and MS-COCO:

* Karpathy's split files ``dataset_{flickr8k,flickr30k,coco}.json``: ``images[*].filename``,
  ``images[*].split`` (``train``/``val``/``test``/``restval``), ``images[*].sentences[*].raw``;
  COCO entries also carry ``filepath`` (``train2014``/``val2014``), the sub-folder of the image.
* The Kaggle Flickr8k layout: ``Images/`` (or ``images/``) and ``captions.txt``, a CSV with header
  ``image,caption``, one row per caption (captions may hold commas and quotes: real CSV quoting).
  A caption never spans lines, so a quoted field that does is a quote left open, reported at the
  line where it opened rather than read as one caption swallowing the rest of the file.

Both read into :class:`ImageRecord` lists in file order. Split names are kept as the JSON spells
them (``val``, not ``dev``); :data:`SPLIT_ALIASES` maps the names of SCAN's precomputed layout
onto them (``dev`` -> ``val``; ``train`` -> ``train`` + ``restval``, as SCAN's COCO training set
of 113,287 images; ``testall`` -> ``test``), and :func:`select_split` applies it. The Kaggle
layout has no split, so :func:`assign_splits` draws a deterministic one.

Every problem raises :class:`scan.errors.DataError` naming the file and the line (CSV,
1-based, the header is line 1) or the JSON field at fault. Files must be UTF-8, and an image name
must stay inside the image folder (no ``..`` out of it, no absolute path): a split file is data,
and must not make extraction read, and copy features of, arbitrary files.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from scan.data.text import read_utf8_text
from scan.errors import DataError

__all__ = [
    "CAPTIONS_PER_IMAGE",
    "KARPATHY_SPLITS",
    "SPLIT_ALIASES",
    "ImageRecord",
    "assign_splits",
    "find_karpathy_json",
    "read_image_folder",
    "read_kaggle_captions",
    "read_karpathy_json",
    "select_split",
]

CAPTIONS_PER_IMAGE = 5  # SCAN's layout: caption k belongs to image k // 5

# The split names Karpathy's files use; any other is a typo that would leave its images out of every split.
KARPATHY_SPLITS: tuple[str, ...] = ("train", "val", "test", "restval")

# Split names of SCAN's precomputed layout (and the JSON's own names) -> the Karpathy JSON splits
# whose images they hold. `train` includes `restval` as SCAN's COCO train (82,783 + 30,504 images);
# `testall` is COCO's 5K test; on Flickr `test` and `testall` are the same 1000 images.
SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train", "restval"),
    "dev": ("val",),
    "val": ("val",),
    "test": ("test",),
    "testall": ("test",),
    "restval": ("restval",),
}


@dataclass
class ImageRecord:
    filename: str  # name as listed in the source (the id written to {split}_ids.txt)
    path: Path  # where the image file is
    split: str  # the source's split name: train / val / test / restval ("" when unknown)
    captions: list[str] = field(default_factory=list)  # raw captions, in source order


def _normalise_caption(text: str) -> str:
    """One line of text: newlines and tabs become spaces, outer whitespace is stripped."""
    return text.replace("\r\n", " ").replace("\r", " ").replace("\n", " ").replace("\t", " ").strip()


def _image_path(folder: Path, *parts: str) -> Path | None:
    """``folder / parts...``, or ``None`` if the name leaves ``folder`` (``..``, an absolute path).

    The check is on the normalised path, not on symlinks: an image folder whose files link into a
    shared store is a legitimate layout, while a name climbing out of the folder is not.
    """
    joined = os.path.normpath(folder.joinpath(*parts))
    base = os.path.normpath(folder)
    inside = os.path.commonpath([os.path.abspath(joined), os.path.abspath(base)]) == os.path.abspath(base)
    return folder.joinpath(*parts) if inside and joined != base else None


def _outside(name: str, folder: Path) -> str:
    """The message for an image name that points outside the image folder."""
    return (
        f"{name!r} points outside the image folder {folder}; give a file name relative to that folder "
        "(no '..', no absolute path)"
    )


def _fix_caption_count(
    record: ImageRecord, captions_per_image: int | None, *, path: Path, line: int | None, field: str | None
) -> int:
    """Truncate extra captions (returns how many the image had, 0 if none were cut); raise on too few."""
    if captions_per_image is None:
        return 0
    n = len(record.captions)
    if n < captions_per_image:
        raise DataError(
            f"image {record.filename!r} has {n} caption(s), needs {captions_per_image} "
            "(SCAN's layout has a fixed number of captions per image)",
            path=path,
            line=line,
            field=field,
        )
    if n > captions_per_image:
        record.captions = record.captions[:captions_per_image]
        return n
    return 0


def _warn_truncated(path: Path, truncated: list[tuple[str, int]], captions_per_image: int | None) -> None:
    """One warning for all images whose extra captions were dropped (COCO has a few hundred)."""
    if truncated:
        examples = ", ".join(f"{name!r} ({n})" for name, n in truncated[:3])
        more = f" and {len(truncated) - 3} more" if len(truncated) > 3 else ""
        warnings.warn(
            f"{path}: {len(truncated)} image(s) have more than {captions_per_image} captions; keeping the first "
            f"{captions_per_image} of each: {examples}{more}",
            stacklevel=3,
        )


def read_karpathy_json(
    json_path: str | Path,
    image_folder: str | Path | None = None,
    *,
    captions_per_image: int | None = CAPTIONS_PER_IMAGE,
    check_files: bool = True,
) -> list[ImageRecord]:
    """Read Karpathy's ``dataset_*.json`` split file.

    Args:
        json_path: The JSON file.
        image_folder: Folder of the images; ``None`` tries ``images/``, ``Images/`` beside the
            JSON and then the JSON's own folder. COCO's ``filepath`` sub-folder is honoured when it
            exists under the folder (``{folder}/{filepath}/{filename}``), else the flat name is used.
        captions_per_image: Required captions per image (extras are dropped with a warning,
            too few raise); ``None`` keeps whatever there is.
        check_files: Raise if an image file does not exist.

    Returns:
        The images in JSON order, ``captions`` from ``sentences[*].raw`` (newlines -> spaces).
    """
    json_path = Path(json_path)
    try:
        data = json.loads(read_utf8_text(json_path))
    except FileNotFoundError:
        raise DataError("file not found", path=json_path) from None
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON: {e.msg} (column {e.colno})", path=json_path, line=e.lineno) from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(
            "expected an object with a list 'images' (Karpathy split format)", path=json_path, field="images"
        )
    folder = Path(image_folder) if image_folder is not None else _guess_image_folder(json_path.parent)
    records: list[ImageRecord] = []
    seen: dict[str, int] = {}
    truncated: list[tuple[str, int]] = []
    for i, entry in enumerate(data["images"]):
        where = f"images[{i}]"
        if not isinstance(entry, dict):
            raise DataError("expected an object", path=json_path, field=where)
        filename = entry.get("filename")
        if not isinstance(filename, str) or not filename:
            raise DataError("missing or empty 'filename'", path=json_path, field=f"{where}.filename")
        split = entry.get("split")
        if not isinstance(split, str) or not split:
            raise DataError(f"missing 'split' for {filename!r}", path=json_path, field=f"{where}.split")
        if split not in KARPATHY_SPLITS:
            raise DataError(
                f"unknown split {split!r} for {filename!r}; expected one of "
                f"{', '.join(KARPATHY_SPLITS)} (Karpathy's split names)",
                path=json_path,
                field=f"{where}.split",
            )
        sentences = entry.get("sentences")
        if not isinstance(sentences, list):
            raise DataError(f"missing list 'sentences' for {filename!r}", path=json_path, field=f"{where}.sentences")
        captions = []
        for j, sentence in enumerate(sentences):
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            if raw is None and isinstance(sentence, dict) and isinstance(sentence.get("tokens"), list):
                raw = " ".join(str(t) for t in sentence["tokens"])  # some files carry tokens only
            if not isinstance(raw, str):
                raise DataError(
                    f"missing 'raw' caption for {filename!r}", path=json_path, field=f"{where}.sentences[{j}].raw"
                )
            caption = _normalise_caption(raw)
            if not caption:
                raise DataError(f"empty caption for {filename!r}", path=json_path, field=f"{where}.sentences[{j}].raw")
            captions.append(caption)
        filepath = entry.get("filepath")
        image_path = _image_path(folder, filename)
        if image_path is None:
            raise DataError(_outside(filename, folder), path=json_path, field=f"{where}.filename")
        if isinstance(filepath, str) and filepath:
            nested = _image_path(folder, filepath, filename)
            if nested is None:
                raise DataError(_outside(f"{filepath}/{filename}", folder), path=json_path, field=f"{where}.filepath")
            if nested.exists():
                image_path = nested
        key = f"{filepath or ''}/{filename}"
        if key in seen:
            raise DataError(
                f"image {filename!r} listed twice (also images[{seen[key]}])", path=json_path, field=f"{where}.filename"
            )
        seen[key] = i
        if check_files and not image_path.is_file():
            raise DataError(f"image file not found: {image_path}", path=json_path, field=f"{where}.filename")
        record = ImageRecord(filename=filename, path=image_path, split=split, captions=captions)
        if n := _fix_caption_count(record, captions_per_image, path=json_path, line=None, field=f"{where}.sentences"):
            truncated.append((filename, n))
        records.append(record)
    _warn_truncated(json_path, truncated, captions_per_image)
    return records


def _guess_image_folder(root: Path) -> Path:
    for name in ("images", "Images"):
        if (root / name).is_dir():
            return root / name
    return root


def read_kaggle_captions(
    folder: str | Path,
    *,
    captions_file: str | Path | None = None,
    captions_per_image: int | None = CAPTIONS_PER_IMAGE,
    check_files: bool = True,
) -> list[ImageRecord]:
    """Read the Kaggle Flickr8k layout: ``{folder}/Images/`` (or ``images/``) + ``captions.txt``.

    Args:
        folder: The folder holding the images folder and ``captions.txt``.
        captions_file: The CSV, if not ``{folder}/captions.txt``.
        captions_per_image: As in :func:`read_karpathy_json`.
        check_files: Raise if an image file does not exist.

    Returns:
        One record per image in order of first appearance, ``split=""`` (the layout has none;
        see :func:`assign_splits`). An image's rows need not be adjacent.
    """
    folder = Path(folder)
    csv_path = Path(captions_file) if captions_file is not None else folder / "captions.txt"
    image_folder = _guess_image_folder(folder)
    if not csv_path.is_file():
        raise DataError("captions file not found (expected a CSV with header 'image,caption')", path=csv_path)
    records: dict[str, ImageRecord] = {}
    first_line: dict[str, int] = {}
    for line, row in _csv_rows(csv_path):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != 2:
            raise DataError(
                f"expected 2 fields (image, caption), got {len(row)}; quote captions that contain commas",
                path=csv_path,
                line=line,
            )
        name, caption = row[0].strip(), _normalise_caption(row[1])
        if not name:
            raise DataError("empty image name", path=csv_path, line=line, field="image")
        if not caption:
            raise DataError(f"empty caption for {name!r}", path=csv_path, line=line, field="caption")
        if name not in records:
            path = _image_path(image_folder, name)
            if path is None:
                raise DataError(_outside(name, image_folder), path=csv_path, line=line, field="image")
            if check_files and not path.is_file():
                raise DataError(f"image file not found: {path}", path=csv_path, line=line, field="image")
            records[name] = ImageRecord(filename=name, path=path, split="", captions=[])
            first_line[name] = line
        records[name].captions.append(caption)
    if not records:
        raise DataError("no caption rows after the header", path=csv_path, line=2)
    truncated: list[tuple[str, int]] = []
    for name, record in records.items():
        if n := _fix_caption_count(record, captions_per_image, path=csv_path, line=first_line[name], field=None):
            truncated.append((name, n))
    _warn_truncated(csv_path, truncated, captions_per_image)
    return list(records.values())


def _csv_rows(csv_path: Path) -> Iterator[tuple[int, list[str]]]:
    """The rows after the checked header of a captions CSV, each with its 1-based line number.

    Raises:
        DataError: For a missing or wrong header, an unreadable row, or a quote left open (named at
            the line where it opened: the rows after it were read into its caption).
    """
    text = read_utf8_text(csv_path).removeprefix("\ufeff")  # a byte order mark, as Excel writes one
    # newline="" leaves line breaks to the csv module, as the csv docs require; strict mode makes a
    # quote still open at the end of the file an error instead of a caption running to the end.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError("empty file; expected the header 'image,caption'", path=csv_path, line=1) from None
    except csv.Error as e:
        raise DataError(f"unreadable CSV: {e}", path=csv_path, line=1) from None
    if [h.strip().lower() for h in header] != ["image", "caption"]:
        raise DataError(f"expected the header 'image,caption', got {','.join(header)!r}", path=csv_path, line=1)
    while True:
        start = reader.line_num + 1  # the physical line this row starts on
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            if reader.line_num > start or "unexpected end of data" in str(e):
                raise _unbalanced_quote(csv_path, start) from None
            raise DataError(
                f"unreadable CSV row: {e}; a caption that starts with a quote must end with one, "
                'and quotes inside it must be doubled ("")',
                path=csv_path,
                line=start,
            ) from None
        # A caption never spans lines: a field holding a line break is a quote that was never closed.
        if any("\n" in cell or "\r" in cell for cell in row):
            raise _unbalanced_quote(csv_path, start)
        yield start, row


def _unbalanced_quote(csv_path: Path, line: int) -> DataError:
    return DataError(
        'unbalanced quote: a caption opens a quote (") that no later quote on its line closes, so the rows '
        "after it would be read into that caption; close it or remove it (a quote inside a quoted caption "
        'is written twice, "")',
        path=csv_path,
        line=line,
    )


def _resolve_count(value: int | float | None, n: int, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, float) and 0.0 <= value < 1.0:
        return round(value * n)
    if int(value) != value or value < 0:
        raise ValueError(f"split sizes must be counts >= 0 or fractions in [0, 1), got {value!r}")
    return int(value)


def assign_splits(
    records: Sequence[ImageRecord],
    *,
    dev: int | float | None = None,
    test: int | float | None = None,
    seed: int = 0,
) -> list[ImageRecord]:
    """Give records without a split a deterministic ``train``/``val``/``test`` one.

    Images are ranked by ``sha256(f"{seed}:{filename}")``: the first ``test`` go to ``test``, the
    next ``dev`` to ``val``, the rest to ``train``. The draw depends only on the file names and the
    seed (not on the record order or Python's RNG), so it is the same on every machine and an
    image keeps its split when others are added.

    Args:
        records: The images (their ``split`` is ignored).
        dev: Images for ``val``: a count, or a fraction in ``[0, 1)``; ``None``: ``min(1000, N // 8)``
            (Flickr8k's 1000 of 8000; 100 of the 800-image sample).
        test: Images for ``test``, like ``dev``.
        seed: Changes the draw.

    Returns:
        New records in the input order, with ``split`` set (JSON names: ``val``, not ``dev``).
    """
    n = len(records)
    default = min(1000, n // 8)
    n_dev, n_test = _resolve_count(dev, n, default), _resolve_count(test, n, default)
    if n_dev + n_test >= n and n > 0:
        raise ValueError(f"dev ({n_dev}) + test ({n_test}) leave no training images out of {n}")
    names = [r.filename for r in records]
    if len(set(names)) != n:
        raise ValueError("assign_splits needs unique file names")
    rank = sorted(range(n), key=lambda i: hashlib.sha256(f"{seed}:{names[i]}".encode()).hexdigest())
    split = ["train"] * n
    for pos, i in enumerate(rank):
        if pos < n_test:
            split[i] = "test"
        elif pos < n_test + n_dev:
            split[i] = "val"
    return [replace(r, captions=list(r.captions), split=s) for r, s in zip(records, split, strict=True)]


def select_split(records: Iterable[ImageRecord], split: str) -> list[ImageRecord]:
    """The records of one split, named as SCAN's layout or the JSON does (``dev`` == ``val``)."""
    if split not in SPLIT_ALIASES:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_ALIASES)}")
    wanted = SPLIT_ALIASES[split]
    return [r for r in records if r.split in wanted]


def find_karpathy_json(folder: str | Path) -> Path | None:
    """The Karpathy split file in a folder (``dataset_*.json``), or ``None``.

    Raises if there are several, since picking one silently would pick a split silently.
    """
    found = sorted(Path(folder).glob("dataset_*.json"))
    if len(found) > 1:
        raise DataError(
            f"several Karpathy split files ({', '.join(p.name for p in found)}); pass one "
            "of them instead of the folder",
            path=folder,
        )
    return found[0] if found else None


def read_image_folder(
    path: str | Path,
    *,
    captions_per_image: int | None = CAPTIONS_PER_IMAGE,
    dev: int | float | None = None,
    test: int | float | None = None,
    seed: int = 0,
    check_files: bool = True,
) -> list[ImageRecord]:
    """Read a collection, picking the reader: a JSON path, or a folder.

    A folder with a ``dataset_*.json`` is read as Karpathy's layout (its fixed split wins);
    otherwise its ``captions.txt`` is read as the Kaggle layout and split by :func:`assign_splits`
    with ``dev``, ``test`` and ``seed``.
    """
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".json":
        return read_karpathy_json(path, captions_per_image=captions_per_image, check_files=check_files)
    if path.is_file() and path.suffix.lower() in (".txt", ".csv"):
        records = read_kaggle_captions(
            path.parent, captions_file=path, captions_per_image=captions_per_image, check_files=check_files
        )
        return assign_splits(records, dev=dev, test=test, seed=seed)
    if not path.is_dir():
        raise DataError("not found: expected a folder of images with captions, or a dataset_*.json", path=path)
    json_path = find_karpathy_json(path)
    if json_path is not None:
        return read_karpathy_json(json_path, captions_per_image=captions_per_image, check_files=check_files)
    if (path / "captions.txt").is_file():
        records = read_kaggle_captions(path, captions_per_image=captions_per_image, check_files=check_files)
        return assign_splits(records, dev=dev, test=test, seed=seed)
    raise DataError("no dataset_*.json (Karpathy layout) and no captions.txt (Kaggle layout) in this folder", path=path)
