"""The jobs behind `scan index` and `scan search`: build and update an index, search it, explain hits.

Each job composes `scan.search.Index` with printing: a progress bar while photos are featurised,
one line per result, `--json` for programs, and attention pictures (`--explain DIR`) that show
where each word of the query looked in each photo found.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scan.distributed import World, gather_rows
from scan.errors import ConfigError
from scan.features.cache import DEFAULT_CACHE
from scan.search.captions import CaptionHit
from scan.search.index import AddSummary, Index
from scan.search.two_stage import Hit

__all__ = [
    "IndexBuildOptions",
    "SearchOptions",
    "explain_image_hits",
    "explain_text_hits",
    "index_add",
    "index_build",
    "index_info",
    "index_remove",
    "search",
]


@dataclass
class IndexBuildOptions:
    """What `scan index build` (and `add`) were asked for."""

    index: str  # the index folder
    photos: str = ""  # a folder of photos (searched recursively) or one photo
    model: str = ""  # a run directory or checkpoint folder (build only)
    captions: str = ""  # a caption file to index for image-to-text search
    first_stage: str = "auto"  # auto, flat, hnsw or ivf
    regions: str = "float16"  # float16 or pq
    cache: str = str(DEFAULT_CACHE)  # the region-feature cache
    workers: int = 0  # photos featurised at once (0: one per CPU)
    batch_size: int = 64  # photos per store shard (each one an atomic step of the update)
    progress: bool = True


def _print_summary(index: Index, summary: AddSummary) -> None:
    failed = f", {len(summary.failed)} unreadable left out" if summary.failed else ""
    captions = f", {summary.captions} captions added" if summary.captions else ""
    print(
        f"{index.folder}: {summary.added} photos added ({summary.extracted} featurised, "
        f"{summary.added - summary.extracted} from the cache), {summary.already} already in{failed}{captions}; "
        f"now {len(index)} photos and {len(index.captions)} captions ({summary.seconds:.1f} s)"
    )
    for path, reason in summary.failed:
        print(f"  left out {path}: {reason}", file=sys.stderr)


def index_build(options: IndexBuildOptions) -> Index:
    """`scan index build`: a new index of a photo folder (or finish an interrupted build).

    Under torchrun, every process featurises a share of the photos into the feature cache, then
    rank 0 adds them all: the same index one process builds (see `Index.featurise`).
    """
    if not options.model:
        raise ConfigError("--model is required to build an index")
    if not options.photos and not options.captions:
        raise ConfigError("give --photos (a folder of photos) and/or --captions (a caption file)")
    from scan.distributed import finish, init_from_env
    from scan.models.loading import load_model
    from scan.search.index import MANIFEST_FILE

    current = init_from_env("cpu")  # a world of one unless torchrun started us
    model = load_model(options.model)
    out = Path(options.index)
    index = None
    if current.main:
        if (out / MANIFEST_FILE).exists():
            print(f"{out} exists: continuing it (photos already in are skipped)")
            index = Index.open(out, model=model)
        else:
            root = Path(options.photos).expanduser() if options.photos else None
            index = Index.create(
                out,
                model,
                photos_root=(root if root.is_dir() else root.parent) if root is not None else None,
                first_stage=options.first_stage,
                regions=options.regions,
            )
    current.barrier()  # the index exists before the other ranks open it
    index = index or Index.open(out, model=model)
    _add(index, options, current)
    finish(current)
    return index


def _featurise_shares(index: Index, options: IndexBuildOptions, current: World) -> None:
    """Each rank featurises every `size`-th photo into the cache; rank 0 then finds them all there."""
    from scan.data.photos import find_photos

    started = time.perf_counter()
    photos = current.shard(find_photos(options.photos))
    workers = options.workers or max(1, (os.cpu_count() or 1) // current.local_size)
    summary = index.featurise(photos, cache=options.cache, progress=options.progress and current.main, workers=workers)
    counts = gather_rows(torch.tensor([[summary.extracted, len(photos)]]), current).sum(0).tolist()
    if current.main:
        print(
            f"featurised on {current.size} processes: {counts[0]} of {counts[1]} photos extracted, the rest "
            f"cached or already in ({time.perf_counter() - started:.1f} s)"
        )


def _add(index: Index, options: IndexBuildOptions, current: World | None = None) -> Index:
    current = current or World()
    if options.photos and current.distributed:
        _featurise_shares(index, options, current)
        current.barrier()  # every share is in the cache
    if not current.main:
        return index
    summary = AddSummary()
    if options.photos:
        summary = index.add_photos(
            options.photos,
            captions=options.captions or None,
            cache=options.cache,
            progress=options.progress,
            workers=options.workers,
            batch_size=options.batch_size,
        )
    elif options.captions:
        summary.captions = index.add_captions(options.captions)
    _print_summary(index, summary)
    return index


def index_add(options: IndexBuildOptions) -> Index:
    """`scan index add`: new photos (those already in, by content, are skipped) and captions.

    Under torchrun the photos are featurised on every process, as `index_build` does.
    """
    if not options.photos and not options.captions:
        raise ConfigError("give --photos (a folder of photos or one photo) and/or --captions (a caption file)")
    from scan.distributed import finish, init_from_env

    current = init_from_env("cpu")
    index = Index.open(options.index, model=options.model or None)
    _add(index, options, current)
    finish(current)
    return index


def index_remove(index_folder: str, photos: list[str], *, model: str = "") -> int:
    """`scan index remove`: take photos out of the index (their files are not touched)."""
    index = Index.open(index_folder, model=model or None)
    removed = index.remove(photos)
    print(f"{index.folder}: {removed} photos removed; {len(index)} left")
    return removed


def index_info(index_folder: str, *, model: str = "", as_json: bool = False) -> dict[str, Any]:
    """`scan index info`: what an index holds and how it was made."""
    index = Index.open(index_folder, model=model or None)
    info = index.info()
    if index.repaired:
        info["repaired"] = f"{index.repaired} photos the first stage missed after an interrupted update"
    if as_json:
        print(json.dumps(info, indent=2))
    else:
        width = max(len(key) for key in info)
        for key, value in info.items():
            shown = json.dumps(value) if isinstance(value, dict) else value
            print(f"{key:<{width}}  {shown}")
    return info


# ---------------------------------------------------------------------------------------------
# Searching


@dataclass
class SearchOptions:
    """What `scan search` was asked for."""

    index: str
    text: str = ""  # a query sentence (text-to-image)
    image: str = ""  # a query photo (image-to-text, against the index's captions)
    k: int = 10
    shortlist: int | None = None  # default: max(100, k)
    exhaustive: bool = False
    as_json: bool = False
    explain: str = ""  # a folder for attention pictures of the hits
    model: str = ""  # the model, if it moved since the index was built
    cache: str = str(DEFAULT_CACHE)


def search(options: SearchOptions) -> list[Hit] | list[CaptionHit]:
    """`scan search`: the best photos for a sentence, or the best captions for a photo."""
    if bool(options.text) == bool(options.image):
        raise ConfigError('give either a query text (scan search INDEX "a dog on the beach") or --image PHOTO')
    index = Index.open(options.index, model=options.model or None)
    hits: list[Hit] | list[CaptionHit]
    if options.text:
        hits = index.search(options.text, k=options.k, shortlist=options.shortlist, exhaustive=options.exhaustive)
        rows = [
            {
                "rank": rank,
                "score": hit.score,
                "first_stage_score": hit.first_stage_score,
                "path": str(index.photo_path(hit)),
                "id": hit.id,
            }
            for rank, hit in enumerate(hits, start=1)
        ]
    else:
        hits = index.search_image(
            options.image, k=options.k, shortlist=options.shortlist, exhaustive=options.exhaustive, cache=options.cache
        )
        rows = [
            {
                "rank": rank,
                "score": hit.score,
                "first_stage_score": hit.first_stage_score,
                "caption": hit.text,
                "source": hit.source,
                "id": hit.id,
            }
            for rank, hit in enumerate(hits, start=1)
        ]
    pictures: list[Path] = []
    if options.explain:
        if options.text:
            pictures = explain_text_hits(index, options.text, hits, Path(options.explain))  # type: ignore[arg-type]
        else:
            pictures = explain_image_hits(index, options.image, hits, Path(options.explain), cache=options.cache)  # type: ignore[arg-type]
        for row, picture in zip(rows, pictures, strict=True):
            row["explanation"] = str(picture)
    if options.as_json:
        print(json.dumps({"query": options.text or options.image, "hits": rows}, indent=2))
    else:
        for row in rows:
            what = (
                row["path"] if options.text else f"{row['caption']}" + (f"  [{row['source']}]" if row["source"] else "")
            )
            print(f"{row['rank']:>3}  {row['score']:.4f}  {what}")
        if pictures:
            print(f"attention pictures: {options.explain}")
    return hits


def explain_text_hits(index: Index, text: str, hits: list[Hit], out: Path) -> list[Path]:
    """For each photo found, where each word of the query looked: one picture per hit in `out`."""
    from scan.viz.attention import draw_word_attention

    written = []
    for rank, hit in enumerate(hits, start=1):
        seen = index.explain(text, hit.id)
        photo = index.photo_path(hit)
        path = out / f"{rank:02d}_{photo.stem}.jpg"
        draw_word_attention(photo, seen.boxes, seen.words, seen.weights, path, caption=text, score=hit.score)
        written.append(path)
    return written


def explain_image_hits(
    index: Index, photo: str | os.PathLike[str], hits: list[CaptionHit], out: Path, *, cache: str
) -> list[Path]:
    """For each caption found, where each of its words looked in the query photo: one picture per hit."""
    from scan.viz.attention import draw_word_attention

    regions, boxes = index.encode_photo(photo, cache=cache)  # (1, R, D), (R, 4)
    written = []
    for rank, hit in enumerate(hits, start=1):
        seen = index.explain_regions(hit.text, regions, boxes)
        path = out / f"{rank:02d}_caption{hit.id}.jpg"
        draw_word_attention(Path(photo), boxes, seen.words, seen.weights, path, caption=hit.text, score=hit.score)
        written.append(path)
    return written


# ---------------------------------------------------------------------------------------------
# The demo's index


DEMO_QUERY = "a dog runs through the grass"


def index_split_photos(
    model: Any, data: Path, features: Path, split: str, out: Path, *, cache: str = str(DEFAULT_CACHE)
) -> Index:
    """An index of one split's photos and captions, reusing the features extracted for evaluation.

    The split's features go into the region-feature cache first (keyed by content), so indexing
    its photos extracts nothing again; rerunning finds every photo already in and does nothing.
    """
    from scan.data.raw import read_image_folder
    from scan.features.cache import FeatureCache, seed_from_split
    from scan.search.index import MANIFEST_FILE

    records = [record for record in read_image_folder(data, check_files=False) if record.split == split]
    index = Index.open(out, model=model) if (out / MANIFEST_FILE).exists() else None
    if index is None:
        index = Index.create(out, model, photos_root=data)
    seed_from_split(
        FeatureCache(cache, index._extract_config()), features, split, {r.filename: r.path for r in records}
    )
    index.add_photos([record.path for record in records], cache=cache, progress=False)
    if len(index.captions) == 0:
        index.add_captions([(caption, record.filename) for record in records for caption in record.captions])
    return index
