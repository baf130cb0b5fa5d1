"""Search over a photo collection: a vector index shortlists, SCAN re-ranks with region vectors.

Re-ranking with stacked cross attention needs every item's region vectors, so they live on disk
in a `RegionStore`: append-only float16 shards read through memory maps, with a JSON manifest
that is replaced atomically last, so a killed update leaves the previous store readable.
"""

from __future__ import annotations

from scan.search.store import RegionStore, StoreError

__all__ = ["RegionStore", "StoreError"]
