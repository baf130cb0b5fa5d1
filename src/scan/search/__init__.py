"""Search over a photo collection: a vector index shortlists, SCAN re-ranks with region vectors.

A SCAN score cannot be precomputed into one vector per item, so search runs in two stages: a
`FirstStageIndex` (faiss: exact while small, HNSW or IVF above) shortlists candidates by one
global vector per item, and SCAN re-ranks them with their region vectors, which live on disk in
a `RegionStore`: append-only float16 shards read through memory maps, with a JSON manifest that
is replaced atomically last, so a killed update leaves the previous store readable.
"""

from __future__ import annotations

from scan.search.first_stage import INDEX_KINDS, FirstStageIndex, choose_kind
from scan.search.store import RegionStore, StoreError
from scan.search.two_stage import Hit, TwoStageSearch, build_collection, open_collection

__all__ = [
    "INDEX_KINDS",
    "FirstStageIndex",
    "Hit",
    "RegionStore",
    "StoreError",
    "TwoStageSearch",
    "build_collection",
    "choose_kind",
    "open_collection",
]
