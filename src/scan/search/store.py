"""An on-disk store of every item's region vectors, for re-ranking a search shortlist with SCAN.

Two-stage retrieval shortlists candidates with a vector index, then re-ranks them with stacked
cross attention, which needs the region vectors (R regions of D numbers) of every item in the
collection on disk. This module keeps them in a folder:

    manifest.json            R, D, dtype, model fingerprint, the shards in order, one row per item
    shard-00000.npy          (n_0, R, D) float16, read with np.load(mmap_mode="r")
    shard-00000.boxes.npy    (n_0, R, 4) float32, optional: the regions' boxes
    shard-00001.npy          ...

float16 halves the size of float32 at no cost to ranking. Shards are append-only: an append
writes a new shard under a temporary name, fsyncs and renames it, and replaces the manifest
atomically last, so a kill at any moment leaves the previous store readable; what a killed
append left behind (temporaries, shards the manifest never listed) is removed at the next one.
Removing an item only marks it in the manifest. Reads gather the requested rows from memory
maps, so a shard is never loaded whole.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scan.atomic import FolderLock, fsync_dir, write_text_atomic
from scan.errors import DataError

__all__ = ["MANIFEST_FILE", "RegionStore", "StoreError"]

MANIFEST_FILE = "manifest.json"
FORMAT = "scan-region-store"
VERSION = 1
DTYPE = "float16"
BOX_DTYPE = "float32"
TMP_MARK = ".tmp-"  # temporaries are hidden siblings: `.{name}.tmp-{pid}`, as in scan.checkpoint
LOCK_PURPOSE = "scan index"
_SHARD_NAME = re.compile(r"^shard-\d{5}(\.boxes)?\.npy$")


class StoreError(DataError):
    """A region store is missing, malformed, or was given inputs that do not fit it."""


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """Write `array` to `path` as .npy: temporary name, fsync, rename, fsync the folder."""
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _open_shard(path: Path, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Memory-map one shard and check it has the recorded shape and dtype."""
    if not path.is_file():
        raise StoreError(f"shard file is missing (expected shape {shape})", path=path)
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise StoreError(f"unreadable or truncated shard: {error}", path=path) from None
    if tuple(array.shape) != shape or array.dtype != np.dtype(dtype):
        raise StoreError(
            f"shard holds {array.dtype} {tuple(array.shape)}, the manifest records {dtype} {shape}", path=path
        )
    return array


class RegionStore:
    """A folder of append-only float16 shards of region vectors with a manifest.

    Items have stable, increasing integer ids; each records its relative `path`, the `sha256` of
    its content, the `shard` and `row` holding its vectors, and whether it was `removed`.

        store = RegionStore.create(folder, num_regions=36, dim=1024, model_fingerprint=fp)
        ids = store.append(vectors, paths, hashes)  # vectors: (n, 36, 1024)
        store.vectors(ids[:5])  # (5, 36, 1024) float16

    Use `create` or `open` rather than the constructor. Appends and removals hold the folder's
    `FolderLock`; readers take no lock and see the manifest as of their last `open` or update.
    """

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self._manifest = manifest
        self._load(manifest)

    # ------------------------------------------------------------------ opening and creating

    @classmethod
    def create(
        cls, folder: str | os.PathLike[str], *, num_regions: int, dim: int, model_fingerprint: str
    ) -> RegionStore:
        """Make an empty store in `folder` (created if missing).

        Args:
            folder: Where the store lives; must not already hold a store or other files.
            num_regions: R, the regions per item.
            dim: D, the size of each region vector.
            model_fingerprint: Names the model that made the vectors, so a store is never
                searched with another model's vectors.

        Raises:
            StoreError: the folder already holds a store or other files, or an argument is invalid.
            FolderBusyError: another process holds the folder's lock.
        """
        folder = Path(folder)
        for name, value in (("num_regions", num_regions), ("dim", dim)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise StoreError(f"must be a positive integer, got {value!r}", field=name)
        if not isinstance(model_fingerprint, str) or not model_fingerprint:
            raise StoreError("must be a non-empty string", field="model_fingerprint")
        if (folder / MANIFEST_FILE).exists():
            raise StoreError("a region store already exists here; open it or choose another folder", path=folder)
        if folder.exists() and not folder.is_dir():
            raise StoreError("not a folder", path=folder)
        with FolderLock(folder, purpose=LOCK_PURPOSE):
            others = sorted(p.name for p in folder.iterdir() if p.name != FolderLock.FILE)
            if others:
                raise StoreError(
                    f"folder is not empty ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); "
                    "a region store needs a folder of its own",
                    path=folder,
                )
            manifest: dict[str, Any] = {
                "format": FORMAT,
                "version": VERSION,
                "num_regions": int(num_regions),
                "dim": int(dim),
                "dtype": DTYPE,
                "model_fingerprint": model_fingerprint,
                "next_id": 0,
                "shards": [],
                "items": [],
            }
            store = cls(folder, manifest)
            store._write_manifest()
        return store

    @classmethod
    def open(cls, folder: str | os.PathLike[str]) -> RegionStore:
        """Open an existing store, checking its manifest and that every shard has its recorded shape.

        Raises:
            StoreError: `manifest.json` is missing, corrupt or of another format (the error
                names it), or a shard file is missing, truncated or of another shape (the
                error names the shard).
        """
        folder = Path(folder)
        return cls(folder, _read_manifest(folder / MANIFEST_FILE))

    def _load(self, manifest: dict[str, Any]) -> None:
        """Check `manifest` against the shard files and build the lookups."""
        path = self.folder / MANIFEST_FILE
        R, D = manifest["num_regions"], manifest["dim"]
        arrays: list[np.ndarray] = []
        boxes: list[np.ndarray | None] = []
        for index, shard in enumerate(manifest["shards"]):
            rows, box_file = shard["rows"], shard.get("boxes")
            if not _SHARD_NAME.match(shard["file"]) or (box_file is not None and not _SHARD_NAME.match(box_file)):
                raise StoreError(f"shard {index} has an unexpected file name", path=path, field="shards")
            arrays.append(_open_shard(self.folder / shard["file"], (rows, R, D), manifest["dtype"]))
            boxes.append(None if box_file is None else _open_shard(self.folder / box_file, (rows, R, 4), BOX_DTYPE))
        by_id: dict[int, dict[str, Any]] = {}
        live_hashes: dict[str, int] = {}
        last = -1
        for item in manifest["items"]:
            item_id, shard_index, row = item["id"], item["shard"], item["row"]
            if item_id <= last:
                raise StoreError(f"item ids must increase, {item_id} follows {last}", path=path, field="items")
            if not 0 <= shard_index < len(arrays) or not 0 <= row < arrays[shard_index].shape[0]:
                raise StoreError(
                    f"item {item_id} points at shard {shard_index} row {row}, which does not exist",
                    path=path,
                    field="items",
                )
            last = item_id
            by_id[item_id] = item
            if not item["removed"]:
                live_hashes[item["sha256"]] = item_id
        if manifest["next_id"] <= last:
            raise StoreError(f"next_id {manifest['next_id']} is not above the last id {last}", path=path)
        self._manifest = manifest
        self._arrays = arrays  # each (n_i, R, D) float16, memory-mapped
        self._boxes = boxes  # each (n_i, R, 4) float32, memory-mapped, or None
        self._by_id = by_id
        self._live_hashes = live_hashes

    def _reload(self) -> None:
        """Re-read the manifest from disk (another process may have updated it since `open`)."""
        self._load(_read_manifest(self.folder / MANIFEST_FILE))

    def _write_manifest(self) -> None:
        write_text_atomic(self.folder / MANIFEST_FILE, json.dumps(self._manifest, separators=(",", ":")))
        fsync_dir(self.folder)

    # ------------------------------------------------------------------ properties and lookups

    @property
    def num_regions(self) -> int:
        """R, the regions per item."""
        return int(self._manifest["num_regions"])

    @property
    def dim(self) -> int:
        """D, the size of each region vector."""
        return int(self._manifest["dim"])

    @property
    def model_fingerprint(self) -> str:
        """The fingerprint of the model that made the vectors, as given at creation."""
        return str(self._manifest["model_fingerprint"])

    def __len__(self) -> int:
        """The number of live (not removed) items."""
        return len(self._live_hashes)

    def ids(self) -> list[int]:
        """The ids of live items, increasing."""
        return [item["id"] for item in self._manifest["items"] if not item["removed"]]

    def has_hash(self, sha256: str) -> bool:
        """Whether a live item has content hash `sha256`."""
        return sha256 in self._live_hashes

    def item(self, item_id: int) -> dict[str, Any]:
        """A copy of the manifest's record for `item_id` (removed items included).

        Raises:
            StoreError: no item has that id.
        """
        try:
            return dict(self._by_id[int(item_id)])
        except (KeyError, TypeError, ValueError):
            raise StoreError(f"no item with id {item_id!r}", path=self.folder, field="ids") from None

    def bytes_on_disk(self) -> int:
        """The size of the manifest and every shard file, in bytes."""
        files = [MANIFEST_FILE]
        for shard in self._manifest["shards"]:
            files.append(shard["file"])
            if shard.get("boxes") is not None:
                files.append(shard["boxes"])
        return sum((self.folder / name).stat().st_size for name in files)

    def _locate(self, ids: Iterable[int]) -> list[tuple[int, int]]:
        """(shard, row) of each live id, in order."""
        places = []
        for item_id in ids:
            item = self.item(item_id)
            if item["removed"]:
                raise StoreError(f"item {item_id} was removed", path=self.folder, field="ids")
            places.append((item["shard"], item["row"]))
        return places

    def _gather(
        self, arrays: Sequence[np.ndarray | None], ids: Sequence[int], tail: tuple[int, ...], dtype: str
    ) -> np.ndarray:
        places = self._locate(ids)
        out = np.empty((len(places), *tail), dtype=dtype)  # (k, R, ...)
        if not places:
            return out
        shard_of = np.array([s for s, _ in places])
        row_of = np.array([r for _, r in places])
        for shard in np.unique(shard_of):
            source = arrays[shard]
            if source is None:
                raise StoreError(f"shard {shard} was stored without boxes", path=self.folder, field="boxes")
            where = np.flatnonzero(shard_of == shard)
            rows = row_of[where]
            order = np.argsort(rows, kind="stable")  # read the mmap front to back
            out[where[order]] = source[rows[order]]  # fancy indexing copies only these rows
        return out

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """The region vectors of live items `ids`, in that order: (k, R, D) float16.

        Only the requested rows are read from the memory-mapped shards.

        Raises:
            StoreError: an id is unknown or was removed.
        """
        return self._gather(self._arrays, ids, (self.num_regions, self.dim), DTYPE)

    def boxes(self, ids: Sequence[int]) -> np.ndarray:
        """The region boxes of live items `ids`: (k, R, 4) float32.

        Raises:
            StoreError: an id is unknown or removed, or its shard was appended without boxes.
        """
        return self._gather(self._boxes, ids, (self.num_regions, 4), BOX_DTYPE)

    # ------------------------------------------------------------------ updates

    def append(
        self,
        vectors: np.ndarray,
        paths: Sequence[str | os.PathLike[str]],
        hashes: Sequence[str],
        boxes: np.ndarray | None = None,
    ) -> list[int]:
        """Add items as one new shard; items whose content hash is already live are skipped.

        Args:
            vectors: (n, R, D) region vectors, any float dtype; stored as float16.
            paths: n relative paths, one per item.
            hashes: n sha256 content hashes, one per item.
            boxes: Optional (n, R, 4) region boxes, stored as float32.

        Returns:
            The ids of the items added, in input order (skipped duplicates have none).

        Raises:
            StoreError: the inputs are empty, of the wrong shape, not finite, or of mismatched
                lengths (the error names the field).
            FolderBusyError: another process holds the folder's lock.
        """
        array, path_list, hash_list, box_array = self._check_append(vectors, paths, hashes, boxes)
        with FolderLock(self.folder, purpose=LOCK_PURPOSE):
            self._reload()
            self._remove_orphans()
            seen = set(self._live_hashes)
            keep = []
            for i, sha in enumerate(hash_list):
                if sha not in seen:
                    seen.add(sha)
                    keep.append(i)
            if not keep:
                return []
            index = len(self._manifest["shards"])
            shard_file = f"shard-{index:05d}.npy"
            kept = array[keep].astype(np.float16)  # (m, R, D)
            _save_npy_atomic(self.folder / shard_file, kept)
            shard: dict[str, Any] = {"file": shard_file, "rows": len(keep), "boxes": None}
            if box_array is not None:
                shard["boxes"] = f"shard-{index:05d}.boxes.npy"
                _save_npy_atomic(self.folder / shard["boxes"], box_array[keep].astype(np.float32))  # (m, R, 4)
            manifest = dict(self._manifest)
            first = manifest["next_id"]
            new_items = [
                {
                    "id": first + row,
                    "path": path_list[i],
                    "sha256": hash_list[i],
                    "shard": index,
                    "row": row,
                    "removed": False,
                }
                for row, i in enumerate(keep)
            ]
            manifest["shards"] = [*manifest["shards"], shard]
            manifest["items"] = [*manifest["items"], *new_items]
            manifest["next_id"] = first + len(keep)
            previous = self._manifest
            self._manifest = manifest
            try:
                self._write_manifest()  # last: until it is replaced the store is the previous one
            except BaseException:
                self._manifest = previous
                raise
            self._load(manifest)
        return [item["id"] for item in new_items]

    def remove(self, ids: Iterable[int]) -> None:
        """Mark items removed in the manifest (atomically); their vectors stay in the shards.

        Raises:
            StoreError: an id is unknown. Removing an item already removed is not an error.
            FolderBusyError: another process holds the folder's lock.
        """
        wanted = list(ids)
        with FolderLock(self.folder, purpose=LOCK_PURPOSE):
            self._reload()
            targets = {int(self.item(item_id)["id"]) for item_id in wanted}
            if not targets:
                return
            manifest = dict(self._manifest)
            manifest["items"] = [
                {**item, "removed": True} if item["id"] in targets else item for item in manifest["items"]
            ]
            previous = self._manifest
            self._manifest = manifest
            try:
                self._write_manifest()
            except BaseException:
                self._manifest = previous
                raise
            self._load(manifest)

    def _check_append(
        self,
        vectors: np.ndarray,
        paths: Sequence[str | os.PathLike[str]],
        hashes: Sequence[str],
        boxes: np.ndarray | None,
    ) -> tuple[np.ndarray, list[str], list[str], np.ndarray | None]:
        R, D = self.num_regions, self.dim
        array = np.asarray(vectors)
        if array.ndim != 3 or array.shape[1:] != (R, D):
            raise StoreError(f"expected shape (n, {R}, {D}), got {array.shape}", field="vectors")
        n = array.shape[0]
        if n == 0:
            raise StoreError("nothing to append (n = 0)", field="vectors")
        if not np.issubdtype(array.dtype, np.floating):
            raise StoreError(f"expected floating-point values, got {array.dtype}", field="vectors")
        if not np.isfinite(array).all():
            raise StoreError("holds non-finite values (nan or inf)", field="vectors")
        if np.abs(array).max() > np.finfo(np.float16).max:
            raise StoreError("holds values beyond the float16 range (±65504)", field="vectors")
        path_list = [Path(p).as_posix() if isinstance(p, os.PathLike) else p for p in paths]
        hash_list = list(hashes)
        for name, values in (("paths", path_list), ("hashes", hash_list)):
            if len(values) != n:
                raise StoreError(f"has {len(values)} entries for {n} items", field=name)
            bad = next((v for v in values if not isinstance(v, str) or not v), None)
            if bad is not None:
                raise StoreError(f"every entry must be a non-empty string, got {bad!r}", field=name)
        absolute = next((p for p in path_list if Path(p).is_absolute()), None)
        if absolute is not None:
            raise StoreError(f"paths must be relative, got {absolute!r}", field="paths")
        box_array = None
        if boxes is not None:
            box_array = np.asarray(boxes)
            if box_array.shape != (n, R, 4):
                raise StoreError(f"expected shape ({n}, {R}, 4), got {box_array.shape}", field="boxes")
            if not np.issubdtype(box_array.dtype, np.number) or not np.isfinite(box_array).all():
                raise StoreError("must hold finite numbers", field="boxes")
        return array, path_list, hash_list, box_array

    def _remove_orphans(self) -> list[Path]:
        """Delete what a killed append left: temporaries, and shards the manifest never listed.

        Called with the lock held, so no other writer is mid-append: every temporary is an orphan.
        """
        listed = {MANIFEST_FILE}
        for shard in self._manifest["shards"]:
            listed.add(shard["file"])
            if shard.get("boxes") is not None:
                listed.add(shard["boxes"])
        removed = []
        for path in self.folder.iterdir():
            name = path.name
            temporary = name.startswith(".") and (TMP_MARK in name or name.endswith(".tmp"))
            unlisted_shard = _SHARD_NAME.match(name) is not None and name not in listed
            if (temporary or unlisted_shard) and path.is_file():
                path.unlink()
                removed.append(path)
        return removed


def _read_manifest(path: Path) -> dict[str, Any]:
    """Read and check `manifest.json`'s structure; any fault is a StoreError naming it."""
    if not path.is_file():
        raise StoreError("no region store here (manifest.json is missing)", path=path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise StoreError(f"corrupt manifest: {error}", path=path) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StoreError(f"not a region store manifest (format is not {FORMAT!r})", path=path)
    if manifest.get("version") != VERSION:
        raise StoreError(f"unsupported version {manifest.get('version')!r}, expected {VERSION}", path=path)
    if manifest.get("dtype") != DTYPE:
        raise StoreError(f"expected {DTYPE!r}, got {manifest.get('dtype')!r}", path=path, field="dtype")
    for key in ("num_regions", "dim", "next_id"):
        value = manifest.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "next_id" else 1):
            raise StoreError(f"expected a positive integer, got {value!r}", path=path, field=key)
    if not isinstance(manifest.get("model_fingerprint"), str):
        raise StoreError("expected a string", path=path, field="model_fingerprint")
    shards, items = manifest.get("shards"), manifest.get("items")
    if not isinstance(shards, list) or not all(
        isinstance(s, dict)
        and isinstance(s.get("file"), str)
        and _is_count(s.get("rows"))
        and (s.get("boxes") is None or isinstance(s["boxes"], str))
        for s in shards
    ):
        raise StoreError("expected a list of {file, rows, boxes}", path=path, field="shards")
    if not isinstance(items, list) or not all(_is_item(item) for item in items):
        raise StoreError("expected a list of {id, path, sha256, shard, row, removed}", path=path, field="items")
    return manifest


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_item(item: object) -> bool:
    return (
        isinstance(item, dict)
        and all(_is_count(item.get(key)) for key in ("id", "shard", "row"))
        and isinstance(item.get("path"), str)
        and isinstance(item.get("sha256"), str)
        and isinstance(item.get("removed"), bool)
    )
