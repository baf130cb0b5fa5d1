"""A searchable photo collection in one folder: what `scan index` builds and `scan search` reads.

    index = Index.build("runs/scan_t2i", photos="~/Pictures", out="pictures.index")
    index = Index.open("pictures.index")           # loads the model it was built with
    for hit in index.search("a dog runs on the beach", k=10):
        print(hit.score, index.photo_path(hit))
    index.search_image("query.jpg", k=5)           # the captions that best describe a photo

An index folder holds:

    index.json               format, version, the model (folder and SHA-256 of its weights), the
                             extraction settings, the photo root, the first-stage kind
    regions/                 the photos' region vectors and boxes (`scan.search.store.RegionStore`)
    first_stage.faiss        the photos' global vectors (`FirstStageIndex`, + .ids.npz, .json)
    captions/                a caption collection for image-to-text search (`CaptionCollection`)

Photos are featurised as the model's training photos were (the settings in its config), through
a content-addressed cache (`scan.features.cache`) that `scan eval` and other indexes share; a
photo already in the index (same content hash, whatever its name) is skipped.

Updates are atomic and resumable. The region store is the truth: an append writes a new shard
and replaces the store's manifest last. The first-stage index is derived from it and saved
after the store; opening an index checks the two agree and repairs the index from the stored
region vectors if a kill left it behind (or ahead, after a removal). So a kill at any moment
leaves the previous index searchable, and rerunning the command completes it: photos already in
are skipped by hash, photos whose features were cached are not extracted again. Writers hold
the folder's lock; searching takes none.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scan.atomic import FolderLock, write_text_atomic
from scan.checkpoint import weights_digest
from scan.data.photos import find_photos
from scan.errors import ConfigError, DataError, ModelMismatchError
from scan.features.cache import DEFAULT_CACHE, FeatureCache, featurise_photos, sha256_file
from scan.models.loading import TrainedModel, load_model
from scan.search.captions import CaptionCollection, CaptionHit, read_caption_file
from scan.search.first_stage import INDEX_KINDS, FirstStageIndex, choose_kind
from scan.search.store import RegionStore
from scan.search.two_stage import (
    Hit,
    TwoStageSearch,
    encode_texts,
    global_head,
    global_image_vectors,
    query_ids,
    score_rows,
)
from scan.similarity.functional import attend

__all__ = ["REGION_CODECS", "AddSummary", "CaptionHit", "Hit", "Index", "WordAttention"]

MANIFEST_FILE = "index.json"
STORE_FOLDER = "regions"
IMAGE_INDEX_FILE = "first_stage.faiss"
CAPTIONS_FOLDER = "captions"
FORMAT = "scan-index"
VERSION = 1
LOCK_PURPOSE = "scan index"
REGION_CODECS = ("float16", "pq")
DEFAULT_SHORTLIST = 100  # the first stage's candidates per query: see docs/RESULTS.md for the choice
ADD_BATCH = 64  # photos per store shard while adding
SAVE_EVERY_S = 60.0  # also save the first-stage index this often while adding (else only at the end)
GLOBAL_BLOCK = 2048  # stored items turned into global vectors at once when repairing the index


@dataclass
class AddSummary:
    """What an `add` did.

    Attributes:
        added: Photos added to the index.
        already: Photos skipped because their content was already in it.
        extracted: Photos whose regions were extracted (the rest of those added came from the cache).
        failed: `(path, reason)` of photos that could not be read; left out, the rest added.
        captions: Captions added.
        seconds: Wall time.
    """

    added: int = 0
    already: int = 0
    extracted: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    captions: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class WordAttention:
    """Where each word of a text looked in one photo: what an attention picture draws.

    Attributes:
        words: The text's tokens as the model reads them (`<start>` and `<end>` included).
        weights: `(W, R)` each word's attention over the photo's regions (each row sums to 1).
        boxes: `(R, 4)` the regions' pixel boxes `(x1, y1, x2, y2)` in the upright photo.
        score: The SCAN score of the text against the photo.
    """

    words: list[str]
    weights: np.ndarray
    boxes: np.ndarray
    score: float


def _check_positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class Index:
    """A photo collection searchable by text (and its captions by photo) with a trained SCAN model.

    Make one with `Index.build` (or `create` then `add_photos`) and reopen it with `Index.open`;
    the constructor is internal.
    """

    def __init__(self, folder: Path, manifest: dict[str, Any], model: TrainedModel) -> None:
        self.folder = folder
        self.manifest = manifest
        self.model = model
        self.store = RegionStore.open(folder / STORE_FOLDER)
        self.head = global_head(model)
        self.images: FirstStageIndex | None = None
        self.repaired = 0  # photos the first stage missed or held extra when opened (a killed update)
        self._load_images_index()
        self.captions = CaptionCollection(folder / CAPTIONS_FOLDER, model)
        self._extractor: Any = None  # the region extractor for query photos, loaded by the first one

    # ------------------------------------------------------------------ creating and opening

    @classmethod
    def create(
        cls,
        folder: str | os.PathLike[str],
        model: TrainedModel,
        *,
        photos_root: str | os.PathLike[str] | None = None,
        first_stage: str = "auto",
        regions: str = "float16",
    ) -> Index:
        """Make an empty index in `folder` (which must not hold one).

        Args:
            folder: The index folder (created).
            model: The trained model that will encode photos and queries.
            photos_root: Photo paths under it are recorded relative to it (so the photos and the
                index can move together); others are recorded absolute.
            first_stage: A kind of `INDEX_KINDS` or "auto" (exact while small, approximate above).
            regions: How region vectors are stored: "float16", or "pq" (product-quantised, about
                a sixteenth of the size, at some cost in ranking; see docs/PERFORMANCE.md).

        Raises:
            ConfigError: an unknown first-stage kind or region codec.
            DataError: the folder already holds an index or other files.
        """
        if first_stage != "auto" and first_stage not in INDEX_KINDS:
            raise ConfigError(f"first stage must be 'auto' or one of {sorted(INDEX_KINDS)}, got {first_stage!r}")
        if regions not in REGION_CODECS:
            raise ConfigError(f"regions must be one of {list(REGION_CODECS)}, got {regions!r}")
        folder = Path(folder)
        if (folder / MANIFEST_FILE).exists():
            raise DataError("an index already exists here; add photos to it with `scan index add`", path=folder)
        if folder.exists() and (not folder.is_dir() or any(p.name != FolderLock.FILE for p in folder.iterdir())):
            raise DataError("not an empty folder; an index needs a folder of its own", path=folder)
        digest = weights_digest(model.folder)
        with FolderLock(folder, purpose=LOCK_PURPOSE):
            RegionStore.create(
                folder / STORE_FOLDER,
                num_regions=_num_regions(model),
                dim=int(model.config.model.embed_dim),
                model_fingerprint=digest,
                codec=regions,
            )
            manifest = {
                "format": FORMAT,
                "version": VERSION,
                "model": {"folder": str(Path(model.folder).resolve()), "sha256": digest},
                "extraction": dict(model.config.data.extract),
                "photos_root": str(Path(photos_root).expanduser().resolve()) if photos_root else "",
                "first_stage": first_stage,
                "regions": regions,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            # Last: a folder without index.json is not an index, so a kill above leaves nothing half-made.
            write_text_atomic(folder / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
        return cls(folder, manifest, model)

    @classmethod
    def open(
        cls, folder: str | os.PathLike[str], *, model: TrainedModel | str | os.PathLike[str] | None = None
    ) -> Index:
        """Open an index, with the model it was built with.

        Args:
            folder: The index folder.
            model: The model (loaded, or its folder); default: the folder recorded at build time.

        Raises:
            DataError: not an index, or its files are missing or corrupt (naming the file).
            ModelMismatchError: the model's weights are not the ones the index was built with.
            CheckpointError: the recorded model folder is gone (pass `model`).
        """
        folder = Path(folder)
        manifest = _read_manifest(folder)
        if model is None:
            recorded = Path(manifest["model"]["folder"])
            if not recorded.exists():
                raise DataError(
                    f"the index was built with the model in {recorded}, which is not there any more; "
                    "pass the model (--model) if it moved",
                    path=folder / MANIFEST_FILE,
                )
            model = recorded
        if not isinstance(model, TrainedModel):
            model = load_model(Path(model))
        digest = weights_digest(model.folder)
        if digest != manifest["model"]["sha256"]:
            raise ModelMismatchError(
                f"{folder} was built with other weights than {model.folder} (SHA-256 "
                f"{manifest['model']['sha256'][:12]}... vs {digest[:12]}...): its vectors mean nothing to this model; "
                "search it with the model it was built with, or build a new index"
            )
        return cls(folder, manifest, model)

    @classmethod
    def build(
        cls,
        model: TrainedModel | str | os.PathLike[str],
        photos: str | os.PathLike[str],
        out: str | os.PathLike[str],
        *,
        captions: str | os.PathLike[str] | None = None,
        first_stage: str = "auto",
        regions: str = "float16",
        cache: str | os.PathLike[str] = DEFAULT_CACHE,
        progress: bool = True,
        workers: int = 0,
    ) -> Index:
        """Index every photo under `photos` (and the captions of a file) into `out`.

        Rerunning it on the same `out` continues an interrupted build (same model required).
        """
        if not isinstance(model, TrainedModel):
            model = load_model(Path(model))
        out = Path(out)
        if (out / MANIFEST_FILE).exists():
            index = cls.open(out, model=model)
        else:
            root = Path(photos).expanduser()
            index = cls.create(
                out, model, photos_root=root if root.is_dir() else root.parent, first_stage=first_stage, regions=regions
            )
        index.add_photos(photos, captions=captions, cache=cache, progress=progress, workers=workers)
        return index

    # ------------------------------------------------------------------ the first stage over photos

    def _load_images_index(self) -> None:
        path = self.folder / IMAGE_INDEX_FILE
        self.images = None
        if path.exists():
            try:
                self.images = FirstStageIndex.load(path, expected_dim=self.store.dim)
            except DataError:
                self.images = None  # derived data: rebuilt from the store below
        self.repaired = self._reconcile()

    def _reconcile(self) -> int:
        """Make the first stage hold exactly the store's live photos; returns how many were fixed."""
        wanted = set(self.store.ids())
        if not wanted:
            self.images = None
            return 0
        have = set(self.images.ids.tolist()) if self.images is not None else set()
        missing, extra = sorted(wanted - have), sorted(have - wanted)
        if self.images is not None and extra:
            self.images.remove(extra)
        for start in range(0, len(missing), GLOBAL_BLOCK):
            ids = missing[start : start + GLOBAL_BLOCK]
            regions = torch.from_numpy(np.asarray(self.store.vectors(ids), dtype=np.float32))  # (n, R, D)
            self._add_globals(regions, ids)
        return len(missing) + len(extra)

    def _add_globals(self, regions: torch.Tensor, ids: Sequence[int]) -> None:
        vectors = global_image_vectors(regions, self.head).numpy()  # (n, D)
        item_ids = np.asarray(ids, dtype=np.int64)
        if self.images is None:
            kind = self.manifest["first_stage"]
            self.images = FirstStageIndex.build(vectors, item_ids, kind=kind)
        else:
            self.images.add(vectors, item_ids)

    def _save_images_index(self) -> None:
        path = self.folder / IMAGE_INDEX_FILE
        if self.images is not None:
            self.images.save(path)
        else:
            for file in FirstStageIndex.files(path):
                file.unlink(missing_ok=True)

    def _rebuild_if_outgrown(self) -> None:
        """With first stage "auto", switch to the approximate kind once the collection outgrows exact search."""
        if self.images is None or self.manifest["first_stage"] != "auto":
            return
        wanted = choose_kind(len(self.images))
        if wanted == self.images.kind:
            return
        print(f"  {len(self.images)} photos: rebuilding the first stage as {wanted}", file=sys.stderr)
        ids = self.store.ids()
        self.images = None
        blocks, kept = [], []
        for start in range(0, len(ids), GLOBAL_BLOCK):
            chunk = ids[start : start + GLOBAL_BLOCK]
            regions = torch.from_numpy(np.asarray(self.store.vectors(chunk), dtype=np.float32))
            blocks.append(global_image_vectors(regions, self.head).numpy())
            kept.extend(chunk)
        self.images = FirstStageIndex.build(np.concatenate(blocks), np.asarray(kept, dtype=np.int64), kind=wanted)

    # ------------------------------------------------------------------ updates

    def _relative(self, path: Path) -> str:
        """How a photo's path is recorded: relative to the photo root when under it, else absolute."""
        resolved = path.expanduser().resolve()
        root = self.manifest.get("photos_root") or ""
        if root:
            try:
                return resolved.relative_to(root).as_posix()
            except ValueError:
                pass
        return str(resolved)

    def photo_path(self, hit: Hit | int) -> Path:
        """Where a hit's photo is on disk (as recorded when it was added)."""
        recorded = Path(self.store.item(hit.id if isinstance(hit, Hit) else int(hit))["path"])
        root = self.manifest.get("photos_root") or ""
        return recorded if recorded.is_absolute() or not root else Path(root) / recorded

    def _extract_config(self) -> Any:
        from scan.features.extract import ExtractConfig

        settings = self.manifest.get("extraction") or {}
        if not settings:
            raise ConfigError(
                f"{self.model.folder} was trained on precomputed features of unknown provenance, so photos cannot "
                "be featurised as its training photos were; index with a model trained on features from "
                "`scan extract` (or `scan demo`), or add precomputed features with Index.add_features"
            )
        return ExtractConfig.from_settings(settings)

    def add_photos(
        self,
        photos: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        captions: str | os.PathLike[str] | None = None,
        cache: str | os.PathLike[str] = DEFAULT_CACHE,
        progress: bool = True,
        workers: int = 0,
        batch_size: int = ADD_BATCH,
    ) -> AddSummary:
        """Add the photos under a folder (recursively), or a list of photo files, and a caption file.

        Photos whose content is already in the index are skipped; unreadable ones are reported
        by name and left out. Safe to kill at any moment and rerun (see the module docstring).

        Raises:
            DataError: no photos found, or the caption file is unreadable.
            FolderBusyError: another process is updating this index.
        """
        started = time.perf_counter()
        batch_size = _check_positive("batch_size", batch_size)
        if isinstance(photos, str | os.PathLike):
            paths = find_photos(photos)
        else:
            paths = [Path(p) for p in photos]
        summary = AddSummary()
        caption_pairs = read_caption_file(captions) if captions else []  # read before a long job, fail early
        with FolderLock(self.folder, purpose=LOCK_PURPOSE):
            self.store = RegionStore.open(self.folder / STORE_FOLDER)  # another process may have added since
            self._load_images_index()
            if paths:
                self._add_photo_files(paths, cache, summary, progress=progress, workers=workers, batch=batch_size)
            if caption_pairs:
                summary.captions = self.captions.add(caption_pairs)
        summary.seconds = time.perf_counter() - started
        return summary

    def featurise(
        self,
        photos: Sequence[str | os.PathLike[str]],
        *,
        cache: str | os.PathLike[str] = DEFAULT_CACHE,
        progress: bool = False,
        workers: int = 0,
    ) -> AddSummary:
        """Extract the regions of photos not yet in the index into the feature cache; the index is unchanged.

        What each process of a sharded build does with its share of the photos (`scan index
        build` under torchrun) before one process adds them all, from the cache: the costly
        part, region extraction, runs on every process, and the index keeps a single writer, so
        it is the same as one process would build. Takes no lock: it only reads the index.

        Returns:
            `extracted` (photos featurised now), `already` (in the index, or a repeat), `failed`.
        """
        started = time.perf_counter()
        summary = AddSummary()
        todo = self._photos_to_add([Path(p) for p in photos], summary)
        featurised = featurise_photos(todo, FeatureCache(cache, self._extract_config()), workers=workers)
        if progress:
            from tqdm import tqdm

            featurised = tqdm(featurised, total=len(todo), desc="featurise", unit="photo", file=sys.stderr)
        for result in featurised:
            if result.error is not None:
                summary.failed.append((str(result.path), result.error))
                print(f"scan: warning: skipping unreadable photo: {result.error}", file=sys.stderr)
            elif not result.cached:
                summary.extracted += 1
        summary.seconds = time.perf_counter() - started
        return summary

    def _photos_to_add(self, paths: list[Path], summary: AddSummary) -> list[tuple[Path, str]]:
        """`(path, sha256)` of the photos not yet in the index, each content once; the rest counted in `summary`."""
        todo: list[tuple[Path, str]] = []
        seen: set[str] = set()
        for path in paths:
            try:
                sha = sha256_file(path)
            except OSError as error:
                summary.failed.append((str(path), f"cannot read: {error.strerror or error}"))
                continue
            if sha in seen or self.store.has_hash(sha):
                summary.already += 1
                continue
            seen.add(sha)
            todo.append((path, sha))
        return todo

    def _add_photo_files(
        self, paths: list[Path], cache_folder: Any, summary: AddSummary, *, progress: bool, workers: int, batch: int
    ) -> None:
        config = self._extract_config()
        cache = FeatureCache(cache_folder, config)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(paths), desc="index", unit="photo", file=sys.stderr)
        todo = self._photos_to_add(paths, summary)
        if bar is not None:
            bar.update(len(paths) - len(todo))
        last_save = time.monotonic()
        try:
            pending: list[Any] = []
            for result in featurise_photos(todo, cache, workers=workers):
                if result.error is not None:
                    summary.failed.append((str(result.path), result.error))
                    print(f"scan: warning: skipping unreadable photo: {result.error}", file=sys.stderr)
                else:
                    pending.append(result)
                    summary.extracted += 0 if result.cached else 1
                if bar is not None:
                    bar.update(1)
                if len(pending) >= batch:
                    summary.added += self._append(pending)
                    pending = []
                    if time.monotonic() - last_save > SAVE_EVERY_S:
                        self._save_images_index()
                        last_save = time.monotonic()
            if pending:
                summary.added += self._append(pending)
        finally:
            if bar is not None:
                bar.close()
            self._rebuild_if_outgrown()
            self._save_images_index()

    def _append(self, photos: Sequence[Any]) -> int:
        """Encode featurised photos, append them to the store (one shard), then to the first stage."""
        features = torch.from_numpy(np.stack([np.asarray(p.features, dtype=np.float32) for p in photos]))
        boxes = np.stack([p.boxes for p in photos])  # (n, R, 4)
        return len(
            self.add_features(
                features, boxes, [self._relative(p.path) for p in photos], [p.sha256 for p in photos], _locked=True
            )
        )

    def add_features(
        self,
        features: np.ndarray | torch.Tensor,
        boxes: np.ndarray | None,
        paths: Sequence[str],
        hashes: Sequence[str],
        *,
        encoded: bool = False,
        _locked: bool = False,
    ) -> list[int]:
        """Add items from precomputed region features `(n, R, F)` (and boxes `(n, R, 4)`); returns their ids.

        Items whose hash is already in the index are skipped. The first stage is saved by the
        caller (`add_photos`) or here, when called directly (and rebuilt as the approximate kind
        once the collection outgrows exact search, with first stage "auto").

        Args:
            encoded: The features are already the model's region vectors `(n, R, D)` (made by
                its image encoder elsewhere, e.g. by another process of a sharded build).
        """
        if not _locked:
            with FolderLock(self.folder, purpose=LOCK_PURPOSE):
                self.store = RegionStore.open(self.folder / STORE_FOLDER)  # another process may have added since
                self._load_images_index()
                ids = self.add_features(features, boxes, paths, hashes, encoded=encoded, _locked=True)
                self._rebuild_if_outgrown()
                self._save_images_index()
                return ids
        batch = torch.as_tensor(np.asarray(features, dtype=np.float32))  # (n, R, F) or (n, R, D)
        width = int(self.model.config.model.embed_dim if encoded else self.model.config.model.image_dim)
        if batch.ndim != 3 or batch.shape[2] != width:
            what = "encoded region vectors" if encoded else "region features"
            raise DataError(f"expected (n, R, {width}) {what}, got {tuple(batch.shape)}", field="features")
        if encoded:
            regions = batch
        else:
            net = self.model.model
            with torch.no_grad():
                regions = net.encode_image(batch.to(next(net.parameters()).device)).float().cpu()  # (n, R, D)
        ids = self.store.append(regions.numpy(), list(paths), list(hashes), boxes)
        if ids:
            rows = {sha: row for row, sha in reversed(list(enumerate(hashes)))}  # first row of each hash
            kept = [rows[self.store.item(i)["sha256"]] for i in ids]
            self._add_globals(regions[kept], ids)
        return ids

    def add_captions(self, captions: str | os.PathLike[str] | Sequence[tuple[str, str]]) -> int:
        """Add captions (a file, see `read_caption_file`, or `(text, source)` pairs); returns how many."""
        pairs = read_caption_file(captions) if isinstance(captions, str | os.PathLike) else list(captions)
        with FolderLock(self.folder, purpose=LOCK_PURPOSE):
            return self.captions.add(pairs)

    def remove(self, photos: Iterable[str | os.PathLike[str]]) -> int:
        """Remove photos (by path, as added or as recorded, or by content of a file given); returns how many.

        Raises:
            DataError: a path names no photo of the index (nothing is removed then).
        """
        with FolderLock(self.folder, purpose=LOCK_PURPOSE):
            self.store = RegionStore.open(self.folder / STORE_FOLDER)
            self._load_images_index()
            by_path = {self.store.item(i)["path"]: i for i in self.store.ids()}
            ids = []
            for photo in photos:
                recorded = str(photo) if str(photo) in by_path else self._relative(Path(photo))
                if recorded not in by_path:
                    raise DataError("not in the index (see `scan index info` for what is)", path=photo)
                ids.append(by_path[recorded])
            if not ids:
                return 0
            self.store.remove(ids)  # the truth first: a kill now leaves extra ids that open() removes
            if self.images is not None:
                self.images.remove(ids)
                if len(self.images) == 0:
                    self.images = None
            self._save_images_index()
        return len(ids)

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        return len(self.store)

    def info(self) -> dict[str, Any]:
        """What the index holds and how it was made (what `scan index info` prints)."""
        return {
            "folder": str(self.folder),
            "photos": len(self.store),
            "captions": len(self.captions),
            "model": self.manifest["model"]["folder"],
            "model_sha256": self.manifest["model"]["sha256"],
            "global_vectors": "trained global head" if self.head is not None else "mean pooling (no global head)",
            "first_stage": self.images.kind if self.images is not None else "(empty)",
            "regions": f"{self.store.num_regions} x {self.store.dim} {self.manifest.get('regions', 'float16')}",
            "bytes_on_disk": _folder_bytes(self.folder),
            "photos_root": self.manifest.get("photos_root") or "",
            "extraction": self.manifest.get("extraction") or {},
            "created": self.manifest.get("created", ""),
        }

    def _check_query(self, k: int, shortlist: int | None, size: int, what: str) -> int:
        k = _check_positive("k", k)
        if size == 0:
            raise ConfigError(f"{self.folder}: the index holds no {what}; nothing to search")
        if k > size:
            raise ConfigError(f"k = {k} is larger than the collection ({size} {what}); ask for at most {size}")
        shortlist = max(DEFAULT_SHORTLIST, k) if shortlist is None else _check_positive("shortlist", shortlist)
        if shortlist < k:
            raise ConfigError(f"shortlist must be at least k ({k}), got {shortlist}")
        return min(shortlist, size)

    def check_query(self, text: str) -> None:
        """Raise ConfigError if `text` cannot be searched with (empty, or unknown words only)."""
        query_ids(self.model, text)

    def _searcher(self) -> TwoStageSearch:
        assert self.images is not None  # the store is not empty, so _reconcile built it
        return TwoStageSearch(self.model, self.store, self.images, head=self.head)

    def search(self, text: str, *, k: int = 10, shortlist: int | None = None, exhaustive: bool = False) -> list[Hit]:
        """The `k` photos that best match `text`, best first (ranked by SCAN; see `TwoStageSearch`).

        Raises:
            ConfigError: an empty query or one of unknown words only, k <= 0 or larger than the
                collection, shortlist < k.
        """
        shortlist = self._check_query(k, shortlist, len(self.store), "photos")
        return self._searcher().search(text, k=k, shortlist=shortlist, exhaustive=exhaustive)

    def search_many(self, texts: Sequence[str], *, k: int = 10, shortlist: int | None = None) -> list[list[Hit]]:
        """`search` for several texts at once (one first-stage call for all; equal results)."""
        shortlist = self._check_query(k, shortlist, len(self.store), "photos")
        return self._searcher().search_many(texts, k=k, shortlist=shortlist)

    def explain(self, text: str, item: int) -> WordAttention:
        """Where each word of `text` looks in the index's photo `item` (its stored regions).

        Raises:
            ConfigError: the text cannot be searched with.
            StoreError: no such photo in the index.
        """
        query_ids(self.model, text)
        regions = torch.from_numpy(np.asarray(self.store.vectors([int(item)]), dtype=np.float32))  # (1, R, D)
        return self.explain_regions(text, regions, self.store.boxes([int(item)])[0])

    def explain_regions(self, text: str, regions: torch.Tensor, boxes: np.ndarray) -> WordAttention:
        """Where each word of `text` looks among encoded regions `(1, R, D)` with pixel `boxes` `(R, 4)`."""
        words, lengths, mask = encode_texts(self.model, [text])  # (1, W, D), (1,), (1, W)
        options = self.model.model.attention
        _, weights = attend(words, regions, query_mask=mask, norm=options.norm, smooth=options.smooth)  # (1, W, R)
        score = float(score_rows(self.model, regions, words, lengths)[0, 0])
        tokens = self.model.tokenizer.tokens(self.model.tokenizer.encode(text))
        return WordAttention(tokens, weights[0].float().numpy(), np.asarray(boxes, dtype=np.float32), score)

    def encode_photo(
        self, photo: str | os.PathLike[str], *, cache: str | os.PathLike[str] = DEFAULT_CACHE
    ) -> tuple[torch.Tensor, np.ndarray]:
        """A photo's encoded regions `(1, R, D)` and boxes `(R, 4)`, featurised as the index's photos.

        Raises:
            DataError: the photo cannot be read (naming it).
        """
        path = Path(photo)
        if not path.is_file():
            raise DataError("no such photo", path=path)
        config = self._extract_config()
        result = next(featurise_photos([(path, sha256_file(path))], FeatureCache(cache, config), workers=1))
        if result.error is not None or result.features is None or result.boxes is None:
            raise DataError(f"cannot use the query photo: {result.error}", path=path)
        return self._encode_regions(result.features), result.boxes

    def encode_image(self, image: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """A decoded RGB photo's `(H, W, 3)` encoded regions `(1, R, D)` and boxes `(R, 4)`; nothing is cached.

        For photos that are not files of the user's (an upload to `scan serve`): extracted as
        the index's photos were, with the extraction models loaded once per `Index`.
        """
        if self._extractor is None:
            from scan.features.extract import RegionExtractor

            self._extractor = RegionExtractor(self._extract_config())
        features, boxes, _detected = self._extractor.extract(image)
        return self._encode_regions(features), boxes

    def _encode_regions(self, features: np.ndarray) -> torch.Tensor:
        net = self.model.model
        with torch.no_grad():
            batch = torch.from_numpy(np.asarray(features, dtype=np.float32))[None]  # (1, R, F)
            return net.encode_image(batch.to(next(net.parameters()).device)).float().cpu()  # (1, R, D)

    def search_image(
        self,
        photo: str | os.PathLike[str],
        *,
        k: int = 10,
        shortlist: int | None = None,
        exhaustive: bool = False,
        cache: str | os.PathLike[str] = DEFAULT_CACHE,
    ) -> list[CaptionHit]:
        """The `k` captions of the index that best describe `photo`, best first (ranked by SCAN).

        Raises:
            ConfigError: the index has no captions, k <= 0 or larger than the caption collection.
            DataError: the photo cannot be read.
        """
        self._check_query(k, shortlist, len(self.captions), "captions")
        regions, _boxes = self.encode_photo(photo, cache=cache)
        return self.search_captions(regions, k=k, shortlist=shortlist, exhaustive=exhaustive)

    def search_captions(
        self, regions: torch.Tensor, *, k: int = 10, shortlist: int | None = None, exhaustive: bool = False
    ) -> list[CaptionHit]:
        """The `k` captions that best describe a photo's encoded regions `(1, R, D)` (see `encode_image`)."""
        shortlist = self._check_query(k, shortlist, len(self.captions), "captions")
        return self.captions.search(regions, k=k, shortlist=shortlist, exhaustive=exhaustive)


def _num_regions(model: TrainedModel) -> int:
    from scan.features.extract import ExtractConfig

    return ExtractConfig.from_settings(model.config.data.extract or {}).total_regions


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        if not folder.exists():
            raise DataError("no such index folder", path=folder)
        raise DataError(f"not an index (no {MANIFEST_FILE}; make one with `scan index build`)", path=folder)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"unreadable index manifest: {error}", path=path) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"not a {FORMAT} manifest", path=path)
    if manifest.get("version") != VERSION:
        raise DataError(f"index format version {manifest.get('version')!r}; this scan reads {VERSION}", path=path)
    model = manifest.get("model")
    if (
        not isinstance(model, dict)
        or not isinstance(model.get("folder"), str)
        or not isinstance(model.get("sha256"), str)
    ):
        raise DataError("the manifest's model entry is malformed", path=path, field="model")
    return manifest
