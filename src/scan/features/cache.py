"""Region features of single photos, cached by content: what indexing a photo collection reads.

`extract_split` writes a whole captioned split at once; a photo collection is different: any
folder of images, no captions, growing over time, often holding the same photo twice or photos
already featurised for an evaluation. So photos are featurised one by one and each result is
kept in a content-addressed cache:

    {cache}/{settings key}/{sha[:2]}/{sha}.npz     features (R, F), boxes (R, 4)

The settings key hashes the extraction settings that change the numbers and the model files,
so photos featurised with other settings are never served, and two indexes (or an index and
`scan eval`) built with the same settings share the work. A cache entry is written atomically;
one that cannot be read is ignored and recomputed, never trusted.

`seed_from_split` fills the cache from a split already extracted by `extract_split`, which is
how the demo's index reuses the test features it made for evaluation.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scan.atomic import atomic_open
from scan.features.extract import (
    FORMAT,
    ExtractConfig,
    ImageLoadError,
    RegionExtractor,
    load_image,
    model_fingerprint,
    one_thread_per_image,
)

__all__ = [
    "DEFAULT_CACHE",
    "FeatureCache",
    "PhotoFeatures",
    "featurise_photos",
    "seed_from_split",
    "sha256_file",
]

DEFAULT_CACHE = Path.home() / ".cache" / "scan" / "regions"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex SHA-256 of a file's bytes: a photo's identity, whatever its name or folder."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def settings_key(config: ExtractConfig) -> str:
    """A short hash of what determines a photo's features: the settings and the model files."""
    fields = {k: v for k, v in config.output_fields().items() if k not in ("captions_per_image",)}
    blob = json.dumps({"format": FORMAT, "config": fields, "models": model_fingerprint(config)}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


class FeatureCache:
    """Region features and boxes of photos by content hash, for one set of extraction settings.

    Args:
        folder: The cache's root (shared by all settings); created on the first `put`.
        config: The extraction settings whose results this cache holds.
    """

    def __init__(self, folder: str | os.PathLike[str], config: ExtractConfig) -> None:
        config.validate()
        self.config = config
        self.folder = Path(folder) / settings_key(config)

    def _path(self, sha256: str) -> Path:
        return self.folder / sha256[:2] / f"{sha256}.npz"

    def has(self, sha256: str) -> bool:
        """Whether an entry exists for this hash (`get` still checks that it reads)."""
        return self._path(sha256).is_file()

    def get(self, sha256: str) -> tuple[np.ndarray, np.ndarray] | None:
        """`(features (R, F), boxes (R, 4))` of the photo with this hash, or None if not cached.

        An entry that cannot be read or has the wrong shape counts as missing (and is rewritten
        by the next `put`): the cache is never the only copy of anything.
        """
        path = self._path(sha256)
        try:
            with np.load(path, allow_pickle=False) as entry:
                features, boxes = entry["features"], entry["boxes"]
        except (OSError, ValueError, KeyError, EOFError):
            return None
        regions = self.config.num_regions
        if features.ndim != 2 or features.shape[0] != regions or boxes.shape != (regions, 4):
            return None
        return features, boxes

    def put(self, sha256: str, features: np.ndarray, boxes: np.ndarray) -> None:
        """Store one photo's features `(R, F)` (in the settings' dtype) and boxes `(R, 4)`, atomically."""
        path = self._path(sha256)
        with atomic_open(path, "wb") as handle:
            np.savez(
                handle,
                features=np.asarray(features, dtype=self.config.dtype),
                boxes=np.asarray(boxes, dtype=np.float32),
            )


@dataclass
class PhotoFeatures:
    """One photo's region features, or why it has none.

    Attributes:
        path: The photo file.
        sha256: Its content hash ("" when it could not be read).
        features: `(R, F)` region features, None when the photo failed.
        boxes: `(R, 4)` pixel boxes, None when the photo failed.
        error: Why the photo failed (it names the file), else None.
        cached: Whether the features came from the cache.
    """

    path: Path
    sha256: str
    features: np.ndarray | None = None
    boxes: np.ndarray | None = None
    error: str | None = None
    cached: bool = False


class _LazyExtractor:
    """The extraction models, loaded by the first photo that needs them (none, when all are cached)."""

    def __init__(self, config: ExtractConfig, extractor: RegionExtractor | None) -> None:
        self.config = config
        self._extractor = extractor
        self._lock = threading.Lock()

    def get(self) -> RegionExtractor:
        with self._lock:
            if self._extractor is None:
                self._extractor = RegionExtractor(self.config)
            return self._extractor


def _featurise_one(path: Path, sha256: str, cache: FeatureCache, extractor: _LazyExtractor) -> PhotoFeatures:
    hit = cache.get(sha256)
    if hit is not None:
        return PhotoFeatures(path, sha256, hit[0], hit[1], cached=True)
    try:
        image = load_image(path)
        features, boxes, _detected = extractor.get().extract(image)
    except ImageLoadError as error:
        return PhotoFeatures(path, sha256, error=str(error))
    except Exception as error:  # OpenCV rejecting one image fails that image, not the whole job
        return PhotoFeatures(path, sha256, error=f"{path}: region extraction failed: {type(error).__name__}: {error}")
    cache.put(sha256, features, boxes)
    return PhotoFeatures(path, sha256, features.astype(cache.config.dtype), boxes.astype(np.float32))


def featurise_photos(
    photos: Sequence[tuple[Path, str]],
    cache: FeatureCache,
    *,
    workers: int = 0,
    extractor: RegionExtractor | None = None,
) -> Iterator[PhotoFeatures]:
    """Region features of photos, from the cache or extracted (and then cached), in input order.

    The extraction models are loaded only if some photo is not cached. Photos are extracted side
    by side, one per thread on one torch thread each, as `extract_split` does (the process-wide
    thread counts are restored when the iterator finishes or is closed).

    Args:
        photos: `(path, sha256)` pairs; the hash keys the cache.
        cache: Where features are looked up and stored; its settings say how to extract.
        workers: Photos extracted at once; 0: one per CPU.
        extractor: Loaded models to reuse (built for `cache.config`).

    Yields:
        One `PhotoFeatures` per photo, in input order; unreadable photos carry an `error`.
    """
    lazy = _LazyExtractor(cache.config, extractor)
    threads = workers or _num_cpus()
    window = max(1, 2 * threads)  # photos in flight: enough to keep every thread busy, bounded memory
    with one_thread_per_image(opencv=cache.config.mode == "bottomup"), ThreadPoolExecutor(threads) as pool:
        pending = []
        for path, sha in photos:
            pending.append(pool.submit(_featurise_one, Path(path), sha, cache, lazy))
            if len(pending) >= window:
                yield pending.pop(0).result()
        while pending:
            yield pending.pop(0).result()


def seed_from_split(
    cache: FeatureCache, features_folder: str | os.PathLike[str], split: str, photos: Mapping[str, Path]
) -> int:
    """Put a split extracted by `extract_split` (with the cache's settings) into the cache.

    Args:
        cache: The cache to fill.
        features_folder: The folder `extract_split` wrote (`{split}_ims.npy`, `_boxes.npy`, `_ids.txt`).
        split: The split's name.
        photos: Where each file name of `{split}_ids.txt` is on disk.

    Returns:
        How many photos were added (those already cached, or not in `photos`, are skipped).
    """
    folder = Path(features_folder)
    ims = np.load(folder / f"{split}_ims.npy", mmap_mode="r")  # (N, R, F)
    boxes = np.load(folder / f"{split}_boxes.npy", mmap_mode="r")  # (N, R, 4)
    names = (folder / f"{split}_ids.txt").read_text(encoding="utf-8").splitlines()
    added = 0
    for row, name in enumerate(names):
        path = photos.get(name)
        if path is None or not path.is_file():
            continue
        sha = sha256_file(path)
        if not cache.has(sha):
            cache.put(sha, np.asarray(ims[row]), np.asarray(boxes[row]))
            added += 1
    return added


def _num_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
