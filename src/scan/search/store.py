"""An on-disk store of every item's region vectors, for re-ranking a search shortlist with SCAN.

Two-stage retrieval shortlists candidates with a vector index, then re-ranks them with stacked
cross attention, which needs the region vectors (R regions of D numbers) of every item in the
collection on disk. This module keeps them in a folder, one shard per append:

    manifest.json                  R, D, codec, model fingerprint, next id, and per shard: its
                                   files, first id and row count (never one row per item)
    shard-00000.npy                (n_0, R, D) float16, or (n_0, R, M) uint8 PQ codes
    shard-00000.items.npy          (n_0,) records of fixed-width UTF-8 bytes: path, sha256
    shard-00000.boxes.npy          (n_0, R, 4) float32, optional: the regions' boxes
    shard-00000.removed-3.npy      (n_0,) bool, optional: which rows are removed (3 of them)
    quantizer.npy                  (M, 256, D/M) float32 PQ centroids, with codec "pq" only
    shard-00001.npy                ...

A shard's items have consecutive ids from its `first_id`, so an id is found by bisecting the
shards' first ids, without any per-item table in memory; every array is read through a memory
map, so opening a store of 10^6 items reads a manifest of a few kB and a few headers per shard,
and `item(id)`, `vectors(ids)` read only the rows asked for. The live content hashes
(`has_hash`, and the de-duplication of `append`) are collected on first use only: search never
needs them.

float16 halves the size of float32 at no cost to ranking. For collections too large even for
that, codec "pq" stores each region vector as M one-byte codes of a product quantiser
(`faiss.ProductQuantizer(D, M, 8)`, Jegou et al. 2011) trained on the first append: R*M bytes
per item (36*32 = 1.1 kB at D = 256, against 18 kB as float16) for a small loss of ranking
accuracy; `vectors` decodes back to float16 either way.

Updates are atomic: an append writes its new files under temporary names, fsyncs and renames
them, and replaces the manifest last, so a kill at any moment leaves the previous store readable;
a removal writes each touched shard's bitmap under a new name (its removed count in the name),
then the manifest. What a killed update left behind (temporaries, files the manifest does not
list, superseded bitmaps) is deleted at the next update, under the folder's lock.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scan.atomic import FolderLock, fsync_dir, write_text_atomic
from scan.errors import DataError, MissingDependencyError

__all__ = ["CODECS", "MANIFEST_FILE", "PQ_MIN_TRAIN", "RegionStore", "StoreError"]

MANIFEST_FILE = "manifest.json"
QUANTIZER_FILE = "quantizer.npy"
FORMAT = "scan-region-store"
VERSION = 2  # 1 kept one JSON row per item in the manifest and rewrote it whole on every update
CODECS = ("float16", "pq")
DTYPE = "float16"  # what `vectors` returns, whatever the codec
CODE_DTYPE = "uint8"
BOX_DTYPE = "float32"
PQ_BITS = 8  # one byte per code: 256 centroids per sub-vector
PQ_CENTROIDS = 2**PQ_BITS
PQ_MIN_TRAIN = 39 * PQ_CENTROIDS  # faiss's k-means warns below 39 training points per centroid
PQ_MAX_TRAIN = 256 * PQ_CENTROIDS  # faiss's k-means would subsample to this many anyway
TMP_MARK = ".tmp-"  # temporaries are hidden siblings: `.{name}.tmp-{pid}`, as in scan.checkpoint
LOCK_PURPOSE = "scan index"
_STORE_FILE = re.compile(r"^shard-(\d{5})(\.items|\.boxes|\.removed-\d+)?\.npy$")


class StoreError(DataError):
    """A region store is missing, malformed, or was given inputs that do not fit it."""


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """Write `array` to `path` as .npy: temporary name, fsync, rename (the caller fsyncs the folder)."""
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


def _open_array(path: Path, shape: tuple[int, ...], dtype: str | None, what: str) -> np.ndarray:
    """Memory-map one .npy file and check its shape (and dtype, unless None); StoreError naming it."""
    if not path.is_file():
        raise StoreError(f"{what} file is missing (expected shape {shape})", path=path)
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise StoreError(f"unreadable or truncated {what}: {error}", path=path) from None
    if tuple(array.shape) != shape or (dtype is not None and array.dtype != np.dtype(dtype)):
        raise StoreError(
            f"{what} holds {array.dtype} {tuple(array.shape)}, the manifest records {dtype or 'records'} {shape}",
            path=path,
        )
    return array


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as error:
        raise MissingDependencyError(
            "a product-quantised region store needs faiss: pip install 'scan[search]' (faiss-cpu)"
        ) from error
    return faiss


@dataclass
class _Shard:
    """One open shard: its manifest entry and its memory-mapped arrays."""

    entry: dict[str, Any]  # the manifest's record: file, items, boxes, removed, removed_count, first_id, rows
    vectors: np.ndarray  # (n, R, D) float16 or (n, R, M) uint8, memory-mapped
    items: np.ndarray  # (n,) records (path, sha256) of fixed-width bytes, memory-mapped
    boxes: np.ndarray | None  # (n, R, 4) float32, memory-mapped, or None
    removed: np.ndarray  # (n,) bool, in memory (a byte per item)

    @property
    def key(self) -> tuple[str, str | None]:
        """What identifies this shard's content: it changes only when its removals do."""
        return self.entry["file"], self.entry["removed"]


class RegionStore:
    """A folder of append-only shards of region vectors (float16 or PQ codes) with a manifest.

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
        self._shards: list[_Shard] = []
        self._centroids: np.ndarray | None = None  # (M, 256, D/M) float32 PQ centroids, once trained
        self._pq: Any = None  # the faiss ProductQuantizer over _centroids, built on first encode
        self._hashes: set[bytes] | None = None  # live content hashes, collected on first use
        self._hash_keys: list[tuple[str, str | None]] = []  # the shards _hashes was collected from
        self._load(manifest)

    # ------------------------------------------------------------------ opening and creating

    @classmethod
    def create(
        cls,
        folder: str | os.PathLike[str],
        *,
        num_regions: int,
        dim: int,
        model_fingerprint: str,
        codec: str = "float16",
        pq_subquantizers: int | None = None,
    ) -> RegionStore:
        """Make an empty store in `folder` (created if missing).

        Args:
            folder: Where the store lives; must not already hold a store or other files.
            num_regions: R, the regions per item.
            dim: D, the size of each region vector.
            model_fingerprint: Names the model that made the vectors, so a store is never
                searched with another model's vectors.
            codec: "float16" (2*D bytes per region), or "pq": M bytes per region, a product
                quantiser trained on the first append, which must hold at least `PQ_MIN_TRAIN`
                region vectors.
            pq_subquantizers: M, the one-byte codes per region vector with codec "pq"; must
                divide D. Default D // 8 (sub-vectors of 8 numbers: about 1/16 of float16).

        Raises:
            StoreError: the folder already holds a store or other files, or an argument is invalid.
            FolderBusyError: another process holds the folder's lock.
        """
        folder = Path(folder)
        for name, value in (("num_regions", num_regions), ("dim", dim)):
            if not _is_positive(value):
                raise StoreError(f"must be a positive integer, got {value!r}", field=name)
        if not isinstance(model_fingerprint, str) or not model_fingerprint:
            raise StoreError("must be a non-empty string", field="model_fingerprint")
        if codec not in CODECS:
            raise StoreError(f"expected one of {list(CODECS)}, got {codec!r}", field="codec")
        pq: dict[str, Any] | None = None
        if codec == "pq":
            if pq_subquantizers is None:
                if dim % 8:
                    raise StoreError(
                        f"D = {dim} is not a multiple of 8; choose M, a divisor of D", field="pq_subquantizers"
                    )
                pq_subquantizers = dim // 8
            if not _is_positive(pq_subquantizers) or dim % pq_subquantizers:
                raise StoreError(
                    f"must be a positive divisor of D = {dim}, got {pq_subquantizers!r}", field="pq_subquantizers"
                )
            pq = {"subquantizers": int(pq_subquantizers), "bits": PQ_BITS, "file": None, "sha256": None}
        elif pq_subquantizers is not None:
            raise StoreError('applies to codec "pq" only', field="pq_subquantizers")
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
                "codec": codec,
                "pq": pq,
                "model_fingerprint": model_fingerprint,
                "next_id": 0,
                "shards": [],
            }
            store = cls(folder, manifest)
            store._write_manifest(manifest)
        return store

    @classmethod
    def open(cls, folder: str | os.PathLike[str]) -> RegionStore:
        """Open an existing store, checking its manifest and that every file has its recorded shape.

        Reads the manifest and each file's header only; vectors, items and boxes stay on disk.

        Raises:
            StoreError: `manifest.json` is missing, corrupt or of another format (the error
                names it), or a shard, item table, box, bitmap or quantizer file is missing,
                truncated or of another shape (the error names the file).
        """
        folder = Path(folder)
        return cls(folder, _read_manifest(folder / MANIFEST_FILE))

    def _load(self, manifest: dict[str, Any]) -> None:
        """Check `manifest` against the files and open them; shards already open are kept."""
        path = self.folder / MANIFEST_FILE
        R, D = manifest["num_regions"], manifest["dim"]
        if manifest["codec"] == "pq":
            pq = manifest["pq"]
            if pq["file"] is None:
                if manifest["shards"]:
                    raise StoreError("a PQ store with shards must name its quantizer", path=path, field="pq")
                self._centroids, self._pq = None, None
            else:
                current = getattr(self, "_manifest", None)
                unchanged = (
                    current is not None and current["pq"] is not None and current["pq"]["sha256"] == pq["sha256"]
                )
                if self._centroids is None or not unchanged:
                    self._centroids = _read_centroids(self.folder / pq["file"], D, pq["subquantizers"], pq["sha256"])
                    self._pq = None
            tail, dtype = (R, pq["subquantizers"]), CODE_DTYPE
        else:
            tail, dtype = (R, D), DTYPE
        already = {shard.entry["file"]: shard for shard in getattr(self, "_shards", [])}
        shards: list[_Shard] = []
        end = 0
        for index, entry in enumerate(manifest["shards"]):
            stem = f"shard-{index:05d}"
            names_ok = (
                entry["file"] == f"{stem}.npy"
                and entry["items"] == f"{stem}.items.npy"
                and entry["boxes"] in (None, f"{stem}.boxes.npy")
                and (entry["removed"] is None or re.fullmatch(rf"{stem}\.removed-\d+\.npy", entry["removed"]))
            )
            if not names_ok:
                raise StoreError(f"shard {index} has an unexpected file name", path=path, field="shards")
            if entry["first_id"] < end or entry["rows"] < 1:
                raise StoreError(
                    f"shard {index} starts at id {entry['first_id']} with {entry['rows']} rows; "
                    f"ids must increase (the previous shard ends at {end})",
                    path=path,
                    field="shards",
                )
            end = entry["first_id"] + entry["rows"]
            previous = already.get(entry["file"])
            if previous is not None and previous.entry == entry:
                shards.append(previous)  # checked when it was opened; its files never change
                continue
            shards.append(self._open_shard(entry, tail, dtype))
        if manifest["next_id"] < end:
            raise StoreError(f"next_id {manifest['next_id']} is below the last shard's end {end}", path=path)
        self._manifest = manifest
        self._shards = shards
        self._starts = np.array([shard.entry["first_id"] for shard in shards], dtype=np.int64)  # (S,)
        self._rows = np.array([shard.entry["rows"] for shard in shards], dtype=np.int64)  # (S,)
        self._live = sum(shard.entry["rows"] - shard.entry["removed_count"] for shard in shards)

    def _open_shard(self, entry: dict[str, Any], tail: tuple[int, int], dtype: str) -> _Shard:
        rows, folder = entry["rows"], self.folder
        vectors = _open_array(folder / entry["file"], (rows, *tail), dtype, "shard")
        items = _open_array(folder / entry["items"], (rows,), None, "item table")
        fields: dict[str, Any] = dict(items.dtype.fields or {})
        if set(fields) != {"path", "sha256"} or any(spec[0].kind != "S" for spec in fields.values()):
            raise StoreError(
                f"item table holds {items.dtype}, expected records (path, sha256) of bytes",
                path=folder / entry["items"],
            )
        boxes = None
        if entry["boxes"] is not None:
            boxes = _open_array(folder / entry["boxes"], (rows, tail[0], 4), BOX_DTYPE, "box file")
        if entry["removed"] is None:
            if entry["removed_count"] != 0:
                raise StoreError(
                    f"{entry['file']} records removals but no bitmap", path=folder / MANIFEST_FILE, field="shards"
                )
            removed = np.zeros(rows, dtype=bool)
        else:
            removed = np.array(_open_array(folder / entry["removed"], (rows,), "bool", "removal bitmap"))
            if int(removed.sum()) != entry["removed_count"]:
                raise StoreError(
                    f"marks {int(removed.sum())} items removed, the manifest records {entry['removed_count']}",
                    path=folder / entry["removed"],
                )
        return _Shard(entry=entry, vectors=vectors, items=items, boxes=boxes, removed=removed)

    def _reload(self) -> None:
        """Re-read the manifest from disk (another process may have updated it since `open`)."""
        self._load(_read_manifest(self.folder / MANIFEST_FILE))

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        write_text_atomic(self.folder / MANIFEST_FILE, json.dumps(manifest, separators=(",", ":")))
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
    def codec(self) -> str:
        """How region vectors are stored: "float16" or "pq"."""
        return str(self._manifest["codec"])

    @property
    def model_fingerprint(self) -> str:
        """The fingerprint of the model that made the vectors, as given at creation."""
        return str(self._manifest["model_fingerprint"])

    def __len__(self) -> int:
        """The number of live (not removed) items."""
        return self._live

    def ids(self) -> list[int]:
        """The ids of live items, increasing."""
        blocks = [
            np.arange(s.entry["first_id"], s.entry["first_id"] + s.entry["rows"], dtype=np.int64)[~s.removed]
            for s in self._shards
        ]
        return np.concatenate(blocks).tolist() if blocks else []

    def has_hash(self, sha256: str) -> bool:
        """Whether a live item has content hash `sha256`.

        The first call reads every shard's hashes (about 64 bytes per item); later calls, and
        appends, only those of shards added since.
        """
        return isinstance(sha256, str) and sha256.encode("utf-8") in self._live_hashes()

    def _live_hashes(self) -> set[bytes]:
        keys = [shard.key for shard in self._shards]
        if self._hashes is None or self._hash_keys != keys[: len(self._hash_keys)]:
            self._hashes, self._hash_keys = set(), []  # a shard's removals changed: collect anew
        for shard in self._shards[len(self._hash_keys) :]:
            hashes = np.asarray(shard.items["sha256"])  # (n,) bytes
            self._hashes.update(hashes[~shard.removed].tolist())
            self._hash_keys.append(shard.key)
        return self._hashes

    def _locate(self, ids: Iterable[int], *, live: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(shard, row) of each id, as two (k,) int64 arrays; StoreError for unknown (or removed) ids."""
        try:
            wanted = np.asarray(list(ids), dtype=np.int64).reshape(-1)  # (k,)
        except (TypeError, ValueError, OverflowError):
            raise StoreError(f"ids must be integers, got {ids!r}", path=self.folder, field="ids") from None
        if wanted.size and not self._shards:
            raise StoreError(f"no item with id {int(wanted[0])!r}", path=self.folder, field="ids")
        shard_of = np.searchsorted(self._starts, wanted, side="right") - 1  # (k,): bisect by first id
        clipped = np.maximum(shard_of, 0)  # (k,)
        row_of = wanted - self._starts[clipped] if self._shards else wanted  # (k,)
        bad = (shard_of < 0) | (row_of >= self._rows[clipped] if self._shards else True)  # (k,)
        if np.any(bad):
            raise StoreError(f"no item with id {int(wanted[np.argmax(bad)])!r}", path=self.folder, field="ids")
        if live:
            for shard_index in np.unique(shard_of).tolist():
                where = np.flatnonzero(shard_of == shard_index)
                gone = self._shards[shard_index].removed[row_of[where]]
                if gone.any():
                    item_id = int(wanted[where[np.argmax(gone)]])
                    raise StoreError(f"item {item_id} was removed", path=self.folder, field="ids")
        return shard_of, row_of

    def item(self, item_id: int) -> dict[str, Any]:
        """The record of `item_id` (removed items included): id, path, sha256, shard, row, removed.

        Raises:
            StoreError: no item has that id.
        """
        if isinstance(item_id, bool) or not isinstance(item_id, int | np.integer):
            raise StoreError(f"no item with id {item_id!r}", path=self.folder, field="ids")
        shard_of, row_of = self._locate([int(item_id)], live=False)
        shard_index, row = int(shard_of[0]), int(row_of[0])
        shard = self._shards[shard_index]
        record = shard.items[row]
        return {
            "id": int(item_id),
            "path": bytes(record["path"]).decode("utf-8"),
            "sha256": bytes(record["sha256"]).decode("utf-8"),
            "shard": shard_index,
            "row": row,
            "removed": bool(shard.removed[row]),
        }

    def bytes_on_disk(self) -> int:
        """The size of the manifest, the quantizer and every file of every shard, in bytes."""
        files = [MANIFEST_FILE]
        if self._manifest["pq"] is not None and self._manifest["pq"]["file"] is not None:
            files.append(self._manifest["pq"]["file"])
        for shard in self._shards:
            files.extend(name for key in ("file", "items", "boxes", "removed") if (name := shard.entry[key]))
        return sum((self.folder / name).stat().st_size for name in files)

    def _gather(self, ids: Sequence[int], *, boxes: bool) -> np.ndarray:
        """The rows of live `ids`, in order: stored vectors or codes (k, R, D | M), or boxes (k, R, 4)."""
        shard_of, row_of = self._locate(ids)
        R = self.num_regions
        if boxes:
            tail, dtype = (R, 4), BOX_DTYPE
        elif self.codec == "pq":
            tail, dtype = (R, self._manifest["pq"]["subquantizers"]), CODE_DTYPE
        else:
            tail, dtype = (R, self.dim), DTYPE
        out = np.empty((len(shard_of), *tail), dtype=dtype)  # (k, R, ...)
        for shard_index in np.unique(shard_of).tolist():
            shard = self._shards[shard_index]
            source = shard.boxes if boxes else shard.vectors
            if source is None:
                raise StoreError(f"shard {shard_index} was stored without boxes", path=self.folder, field="boxes")
            where = np.flatnonzero(shard_of == shard_index)
            rows = row_of[where]
            order = np.argsort(rows, kind="stable")  # read the mmap front to back
            out[where[order]] = source[rows[order]]  # fancy indexing copies only these rows
        return out

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """The region vectors of live items `ids`, in that order: (k, R, D) float16.

        Only the requested rows are read from the memory-mapped shards; with codec "pq" they
        are decoded (each code replaced by its centroid), which is exact up to the quantiser.

        Raises:
            StoreError: an id is unknown or was removed.
        """
        stored = self._gather(ids, boxes=False)  # (k, R, D) float16 or (k, R, M) uint8
        if self.codec != "pq":
            return stored
        return self._decode(stored)

    def boxes(self, ids: Sequence[int]) -> np.ndarray:
        """The region boxes of live items `ids`: (k, R, 4) float32.

        Raises:
            StoreError: an id is unknown or removed, or its shard was appended without boxes.
        """
        return self._gather(ids, boxes=True)

    # ------------------------------------------------------------------ product quantisation

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        """(k, R, M) uint8 codes -> (k, R, D) float16: what faiss's `ProductQuantizer.decode` gives."""
        centroids = self._centroids  # (M, 256, D/M)
        assert centroids is not None  # a PQ store with shards has its quantizer (checked in _load)
        M = centroids.shape[0]
        out = np.empty((*codes.shape[:2], self.dim), dtype=np.float16)  # (k, R, D)
        for start in range(0, codes.shape[0], 1024):  # bounds the float32 temporary
            block = codes[start : start + 1024]  # (b, R, M)
            parts = centroids[np.arange(M), block]  # (b, R, M, D/M)
            out[start : start + 1024] = parts.reshape(*block.shape[:2], self.dim)
        return out

    def _quantizer(self) -> Any:
        if self._pq is None:
            faiss = _faiss()
            centroids = self._centroids
            assert centroids is not None
            pq = faiss.ProductQuantizer(self.dim, centroids.shape[0], PQ_BITS)
            faiss.copy_array_to_vector(np.ascontiguousarray(centroids, dtype=np.float32).ravel(), pq.centroids)
            self._pq = pq
        return self._pq

    def _train_quantizer(self, array: np.ndarray) -> np.ndarray:
        """Train the PQ centroids on (n, R, D) region vectors: (M, 256, D/M) float32."""
        R, D, M = self.num_regions, self.dim, self._manifest["pq"]["subquantizers"]
        count = array.shape[0] * R
        if count < PQ_MIN_TRAIN:
            raise StoreError(
                f"product quantisation trains {PQ_CENTROIDS} centroids per sub-vector on the first append, "
                f"which needs at least {PQ_MIN_TRAIN} region vectors ({math.ceil(PQ_MIN_TRAIN / R)} items of "
                f"{R} regions); got {count} ({array.shape[0]} items). Append more items at once, or use "
                'codec "float16"',
                field="vectors",
            )
        flat = array.reshape(count, D)  # (n*R, D), a view
        if count > PQ_MAX_TRAIN:  # a fixed sample: faiss's k-means would draw one anyway
            flat = flat[np.sort(np.random.default_rng(0).choice(count, PQ_MAX_TRAIN, replace=False))]
        faiss = _faiss()
        pq = faiss.ProductQuantizer(D, M, PQ_BITS)
        pq.verbose = False
        pq.train(np.ascontiguousarray(flat, dtype=np.float32))
        self._pq = pq
        return faiss.vector_to_array(pq.centroids).reshape(M, PQ_CENTROIDS, D // M).astype(np.float32)

    def _encode(self, array: np.ndarray) -> np.ndarray:
        """(n, R, D) vectors -> (n, R, M) uint8 codes, in blocks to bound the float32 copy."""
        n, R = array.shape[:2]
        M = self._manifest["pq"]["subquantizers"]
        out = np.empty((n, R, M), dtype=np.uint8)
        pq = self._quantizer()
        for start in range(0, n, 4096):
            block = np.ascontiguousarray(array[start : start + 4096], dtype=np.float32)  # (b, R, D)
            out[start : start + 4096] = pq.compute_codes(block.reshape(-1, self.dim)).reshape(-1, R, M)
        return out

    # ------------------------------------------------------------------ updates

    def append(
        self,
        vectors: np.ndarray,
        paths: Sequence[str | os.PathLike[str]],
        hashes: Sequence[str],
        boxes: np.ndarray | None = None,
    ) -> list[int]:
        """Add items as one new shard; items whose content hash is already live are skipped.

        Writes the new shard's files and rewrites only the manifest (a few hundred bytes per
        shard): the cost is that of the items appended, whatever the store's size.

        Args:
            vectors: (n, R, D) region vectors, any float dtype; stored as float16, or as PQ
                codes (the first append of a PQ store trains the quantizer on them).
            paths: n relative paths, one per item.
            hashes: n sha256 content hashes, one per item.
            boxes: Optional (n, R, 4) region boxes, stored as float32.

        Returns:
            The ids of the items added, in input order (skipped duplicates have none).

        Raises:
            StoreError: the inputs are empty, of the wrong shape, not finite, or of mismatched
                lengths (the error names the field); or the first append of a PQ store has too
                few region vectors to train the quantizer.
            FolderBusyError: another process holds the folder's lock.
        """
        array, path_list, hash_list, box_array = self._check_append(vectors, paths, hashes, boxes)
        with FolderLock(self.folder, purpose=LOCK_PURPOSE):
            self._reload()
            self._remove_orphans()
            seen = set(self._live_hashes())
            keep = []
            for i, sha in enumerate(hash_list):
                encoded = sha.encode("utf-8")
                if encoded not in seen:
                    seen.add(encoded)
                    keep.append(i)
            if not keep:
                return []
            manifest = dict(self._manifest)
            kept = array if len(keep) == array.shape[0] else array[keep]  # (m, R, D)
            if self.codec == "pq":
                if manifest["pq"]["file"] is None:
                    centroids = self._train_quantizer(kept)
                    _save_npy_atomic(self.folder / QUANTIZER_FILE, centroids)
                    digest = hashlib.sha256((self.folder / QUANTIZER_FILE).read_bytes()).hexdigest()
                    manifest["pq"] = {**manifest["pq"], "file": QUANTIZER_FILE, "sha256": digest}
                    self._centroids = centroids
                stored = self._encode(kept)  # (m, R, M) uint8
            else:
                stored = kept.astype(np.float16, copy=False)  # (m, R, D)
            index = len(manifest["shards"])
            stem = f"shard-{index:05d}"
            shard: dict[str, Any] = {
                "file": f"{stem}.npy",
                "items": f"{stem}.items.npy",
                "boxes": None,
                "removed": None,
                "removed_count": 0,
                "first_id": manifest["next_id"],
                "rows": len(keep),
            }
            _save_npy_atomic(self.folder / shard["file"], stored)
            _save_npy_atomic(
                self.folder / shard["items"], _item_table([path_list[i] for i in keep], [hash_list[i] for i in keep])
            )
            if box_array is not None:
                shard["boxes"] = f"{stem}.boxes.npy"
                _save_npy_atomic(self.folder / shard["boxes"], box_array[keep].astype(np.float32))  # (m, R, 4)
            fsync_dir(self.folder)
            manifest["shards"] = [*manifest["shards"], shard]
            manifest["next_id"] = shard["first_id"] + len(keep)
            self._write_manifest(manifest)  # last: until it is replaced the store is the previous one
            self._load(manifest)
        return list(range(shard["first_id"], shard["first_id"] + len(keep)))

    def remove(self, ids: Iterable[int]) -> None:
        """Mark items removed (atomically); their vectors stay in the shards.

        Each touched shard gets a new bitmap file, then the manifest is replaced; the bitmaps
        it no longer names are deleted at the next update.

        Raises:
            StoreError: an id is unknown. Removing an item already removed is not an error.
            FolderBusyError: another process holds the folder's lock.
        """
        wanted = list(ids)
        with FolderLock(self.folder, purpose=LOCK_PURPOSE):
            self._reload()
            shard_of, row_of = self._locate(wanted, live=False)
            if shard_of.size == 0:
                return
            self._remove_orphans()
            manifest = dict(self._manifest)
            entries = list(manifest["shards"])
            changed = False
            for shard_index in np.unique(shard_of).tolist():
                shard = self._shards[shard_index]
                removed = shard.removed.copy()  # (n,)
                removed[row_of[shard_of == shard_index]] = True
                count = int(removed.sum())
                if count == shard.entry["removed_count"]:
                    continue  # all of them removed already
                name = f"shard-{shard_index:05d}.removed-{count}.npy"  # counts only grow: a new name
                _save_npy_atomic(self.folder / name, removed)
                entries[shard_index] = {**shard.entry, "removed": name, "removed_count": count}
                changed = True
            if not changed:
                return
            fsync_dir(self.folder)
            manifest["shards"] = entries
            self._write_manifest(manifest)
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
        # In blocks: np.abs of a whole 25k-item batch would be a second copy of it (~0.5 GB).
        # One pass for both checks: the largest magnitude is NaN if any value is.
        largest = float(np.max([np.abs(array[start : start + 1024]).max() for start in range(0, n, 1024)]))
        if not math.isfinite(largest):
            raise StoreError("holds non-finite values (nan or inf)", field="vectors")
        if largest > float(np.finfo(np.float16).max):
            raise StoreError("holds values beyond the float16 range (±65504)", field="vectors")
        path_list = [Path(p).as_posix() if isinstance(p, os.PathLike) else p for p in paths]
        hash_list = list(hashes)
        for name, values in (("paths", path_list), ("hashes", hash_list)):
            if len(values) != n:
                raise StoreError(f"has {len(values)} entries for {n} items", field=name)
            bad = next((v for v in values if not isinstance(v, str) or not v or "\x00" in v), None)
            if bad is not None:
                raise StoreError(f"every entry must be a non-empty string without NUL, got {bad!r}", field=name)
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
        """Delete what killed updates left: temporaries, and store files the manifest does not list.

        Called with the lock held, so no other writer is mid-update: every temporary is an orphan.
        Superseded removal bitmaps go here too (a reader that opened the store before the
        removal holds its bitmaps in memory, so deleting them does not disturb it).
        """
        listed = {MANIFEST_FILE}
        if self._manifest["pq"] is not None and self._manifest["pq"]["file"] is not None:
            listed.add(self._manifest["pq"]["file"])
        for shard in self._shards:
            listed.update(name for key in ("file", "items", "boxes", "removed") if (name := shard.entry[key]))
        removed = []
        for path in self.folder.iterdir():
            name = path.name
            temporary = name.startswith(".") and (TMP_MARK in name or name.endswith(".tmp"))
            unlisted = (_STORE_FILE.match(name) is not None or name == QUANTIZER_FILE) and name not in listed
            if (temporary or unlisted) and path.is_file():
                path.unlink()
                removed.append(path)
        return removed


def _item_table(paths: list[str], hashes: list[str]) -> np.ndarray:
    """(n,) records of UTF-8 bytes, each column as wide as its longest entry."""
    encoded_paths = [p.encode("utf-8") for p in paths]
    encoded_hashes = [h.encode("utf-8") for h in hashes]
    width_path = max(len(p) for p in encoded_paths)
    width_hash = max(len(h) for h in encoded_hashes)
    table = np.empty(len(paths), dtype=[("path", f"S{width_path}"), ("sha256", f"S{width_hash}")])
    table["path"] = encoded_paths
    table["sha256"] = encoded_hashes
    return table


def _read_centroids(path: Path, dim: int, subquantizers: int, sha256: str | None) -> np.ndarray:
    """Read and check the PQ centroids against the manifest's shape and digest."""
    shape = (subquantizers, PQ_CENTROIDS, dim // subquantizers)
    if not path.is_file():
        raise StoreError(f"quantizer file is missing (expected {shape} float32 centroids)", path=path)
    raw = path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != sha256:
        raise StoreError("corrupt quantizer: its sha256 is not the one the manifest records", path=path)
    return np.array(_open_array(path, shape, "float32", "quantizer"))


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
        raise StoreError(
            f"unsupported version {manifest.get('version')!r}, expected {VERSION} (rebuild the store)", path=path
        )
    if manifest.get("codec") not in CODECS:
        raise StoreError(f"expected one of {list(CODECS)}, got {manifest.get('codec')!r}", path=path, field="codec")
    for key in ("num_regions", "dim", "next_id"):
        value = manifest.get(key)
        if not _is_count(value) or (key != "next_id" and value == 0):
            raise StoreError(f"expected a positive integer, got {value!r}", path=path, field=key)
    if not isinstance(manifest.get("model_fingerprint"), str):
        raise StoreError("expected a string", path=path, field="model_fingerprint")
    pq = manifest.get("pq")
    if manifest["codec"] == "pq":
        if not (
            isinstance(pq, dict)
            and _is_count(pq.get("subquantizers"))
            and pq["subquantizers"] > 0
            and manifest["dim"] % pq["subquantizers"] == 0
            and pq.get("bits") == PQ_BITS
            and (pq.get("file") is None) == (pq.get("sha256") is None)
            and pq.get("file") in (None, QUANTIZER_FILE)
            and (pq.get("sha256") is None or isinstance(pq["sha256"], str))
        ):
            raise StoreError(
                f"expected {{subquantizers: a divisor of D, bits: {PQ_BITS}, file, sha256}}", path=path, field="pq"
            )
    elif pq is not None:
        raise StoreError('expected null for codec "float16"', path=path, field="pq")
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not all(_is_shard(s) for s in shards):
        raise StoreError(
            "expected a list of {file, items, boxes, removed, removed_count, first_id, rows}",
            path=path,
            field="shards",
        )
    return manifest


def _is_positive(value: object) -> bool:
    return bool(isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= 1)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_shard(shard: object) -> bool:
    return (
        isinstance(shard, dict)
        and isinstance(shard.get("file"), str)
        and isinstance(shard.get("items"), str)
        and all(shard.get(key) is None or isinstance(shard[key], str) for key in ("boxes", "removed"))
        and all(_is_count(shard.get(key)) for key in ("first_id", "rows", "removed_count"))
        and shard["removed_count"] <= shard["rows"]
    )
