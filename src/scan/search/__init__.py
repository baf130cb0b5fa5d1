"""Search over a photo collection: a vector index shortlists, SCAN re-ranks with region vectors.

A SCAN score cannot be precomputed into one vector per item, so search runs in two stages: a
`FirstStageIndex` (faiss: exact while small, IVF above 50,000 items, HNSW by name) shortlists candidates by one
global vector per item, and SCAN re-ranks them with their region vectors, which live on disk in
a `RegionStore`: append-only float16 shards read through memory maps, with a JSON manifest that
is replaced atomically last, so a killed update leaves the previous store readable.

`Index` is the user's verb set on top of those parts: a folder holding the store, the first-stage
index, a manifest (model fingerprint, extraction settings, per photo its path and content hash)
and optionally a `CaptionCollection` for image-to-text search.

    index = Index.build("runs/demo", photos="holiday/", out="holiday-index")
    hits = index.search("a dog runs on the beach", k=10)
"""

from __future__ import annotations

from scan.search.captions import CaptionCollection, CaptionHit
from scan.search.first_stage import INDEX_KINDS, FirstStageIndex, choose_kind
from scan.search.index import Index
from scan.search.store import RegionStore, StoreError
from scan.search.two_stage import Hit, TwoStageSearch, build_collection, open_collection

__all__ = [
    "INDEX_KINDS",
    "CaptionCollection",
    "CaptionHit",
    "FirstStageIndex",
    "Hit",
    "Index",
    "RegionStore",
    "StoreError",
    "TwoStageSearch",
    "build_collection",
    "choose_kind",
    "open_collection",
]
