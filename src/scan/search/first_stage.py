"""The first stage of collection search: a vector index that shortlists k candidates per query.

SCAN's score of an image and a caption comes from cross attention between the caption's words
and the image's regions, so it depends on both at once and cannot be precomputed into one vector
per item: scoring a whole collection with it costs one attention pass per item and query. Search
therefore runs in two stages, as LAVIS (`k_test`) and clip-retrieval do: a trained global vector
per item (one D-vector, compared by cosine) goes into a faiss index that shortlists k candidates
cheaply, and SCAN re-ranks only those with the items' region vectors (`scan.search.store`).

`FirstStageIndex` wraps that faiss index. Vectors are L2-normalised inside (on `build`, `add`
and `search`), so inner product is cosine whatever the caller passes. The kinds of index are
listed in one table, `INDEX_KINDS`:

    flat   exact search (`IndexFlatIP` inside `IndexIDMap2`), removes items for real
    hnsw   a graph (`IndexHNSWFlat`, M=32), fast and approximate; faiss cannot remove from it,
           so removed items stay in the graph, marked, and searches skip them
    ivf    inverted lists (`IndexIVFFlat`, nlist ~ 4*sqrt(N)) trained at `build` on a sample of
           the vectors (at most `IVF_TRAIN_PER_LIST` per list)

`choose_kind` ("auto") takes flat below `EXACT_BELOW` items and IVF above, by measurement on a
2-core CPU at D = 256 (benchmarks/search.py; clustered unit vectors, shortlist of 100):

    10^5 items   flat 10 ms/query; IVF (1264 lists, nprobe 316) 2.5 ms, recall@100 0.98 against
                 flat, built in ~20 s; HNSW built at ~2000 items/s with efConstruction 40
                 (49 s, recall@100 0.86 at efSearch 256) and ~530 items/s at 80 (187 s, 0.90)
    10^6 items   flat ~100 ms/query (extrapolated), half a 200 ms budget; HNSW would take from
                 ~10 minutes (efConstruction 40) to hours (200) to build on 2 cores, and its cost
                 grows faster than N; IVF (4000 lists, trained on 200k sampled vectors) built
                 at 24,500 items/s (41 s), recall@100 1.00 against exact cosine, and 14.6 ms
                 per query at p50 with the query's encoding (benchmarks/search.py)

so HNSW stays available by name (with efConstruction 80), for machines with the cores to
build it, but is never chosen on its own.

faiss labels are the rows in the order items were added (never reused), and an array beside the
index maps each row to the caller's item id, so removing and re-adding an id is fine for every
kind. `save` writes three files, each atomically, and `load` checks that they agree:

    {path}            the faiss index (`faiss.write_index` format)
    {path}.ids.npz    row_ids (rows,) int64 and alive (rows,) bool
    {path}.json       format, version, kind, dim, count (live items), rows, ef_search, nprobe

faiss is optional (`pip install 'scan[search]'`): it is imported only inside the functions that
need it.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scan.atomic import atomic_open, write_text_atomic
from scan.errors import ConfigError, DataError, MissingDependencyError

__all__ = [
    "DEFAULT_EF_SEARCH",
    "EXACT_BELOW",
    "INDEX_KINDS",
    "IVF_TRAIN_PER_LIST",
    "FirstStageIndex",
    "IndexKind",
    "choose_kind",
]

FORMAT = "scan-first-stage"
VERSION = 1
EXACT_BELOW = 50_000  # below this many items exact search is fast enough (a few ms per query)
HNSW_M = 32  # neighbours per node: faiss's usual choice for recall > 0.95 at D of a few hundred
DEFAULT_EF_SEARCH = 128  # candidates HNSW keeps while searching; more is slower and more exact
DEFAULT_EF_CONSTRUCTION = 80  # 200 is common on many cores; on 2 it builds 10^5 items in ~7 min
MIN_POINTS_PER_LIST = 39  # faiss's k-means warns with fewer training points per centroid
IVF_TRAIN_PER_LIST = 50  # k-means sample per list: training costs ~ sample * nlist * D per iteration
TRAIN_SEED = 0  # the IVF training sample is drawn with a fixed seed: a rebuild gives the same index
_MAX_WIDENINGS = 32  # bound on re-searching short rows with a wider search (each doubles it)


def _faiss() -> Any:
    """Import faiss, or say how to install it."""
    try:
        import faiss
    except ImportError as error:
        raise MissingDependencyError(
            "collection search needs faiss for its vector index: pip install 'scan[search]' (faiss-cpu)"
        ) from error
    return faiss


def default_nlist(num_items: int) -> int:
    """Number of IVF lists for `num_items`: ~4*sqrt(N), with at least 39 training points per list."""
    return max(1, min(round(4 * math.sqrt(num_items)), num_items // MIN_POINTS_PER_LIST))


def _build_flat(dim: int, num_items: int) -> Any:
    faiss = _faiss()
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def _build_hnsw(dim: int, num_items: int) -> Any:
    faiss = _faiss()
    index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = DEFAULT_EF_CONSTRUCTION
    index.hnsw.efSearch = DEFAULT_EF_SEARCH
    return index


def _build_ivf(dim: int, num_items: int) -> Any:
    faiss = _faiss()
    quantizer = faiss.IndexFlatIP(dim)
    # faiss's Python wrapper keeps `quantizer` alive as long as the IVF index
    return faiss.IndexIVFFlat(quantizer, dim, default_nlist(num_items), faiss.METRIC_INNER_PRODUCT)


@dataclass(frozen=True)
class IndexKind:
    """One kind of first-stage index: how to build it and what it can do.

    Attributes:
        name: The key in `INDEX_KINDS`, stored in saved headers.
        description: One line for help texts and reports.
        build: `(dim, num_items) -> faiss index`, empty (and untrained if `trains`); its labels
            must be free (`add_with_ids`) or sequential from 0 (`add`) as `sequential_labels` says.
        faiss_class: The class name `faiss.read_index` gives back for this kind, checked on load.
        removes: faiss removes items from it (`remove_ids`); otherwise they are marked and skipped.
        trains: It must be trained on the vectors before the first add.
        sequential_labels: faiss numbers its rows 0, 1, ... itself (no `add_with_ids`).
    """

    name: str
    description: str
    build: Callable[[int, int], Any]
    faiss_class: str
    removes: bool
    trains: bool = False
    sequential_labels: bool = False


INDEX_KINDS: dict[str, IndexKind] = {
    kind.name: kind
    for kind in (
        IndexKind(
            name="flat",
            description="exact inner product over every item (IndexFlatIP)",
            build=_build_flat,
            faiss_class="IndexIDMap2",
            removes=True,
        ),
        IndexKind(
            name="hnsw",
            description=f"HNSW graph, M={HNSW_M}, approximate; removed items are skipped, not deleted",
            build=_build_hnsw,
            faiss_class="IndexHNSWFlat",
            removes=False,
            sequential_labels=True,
        ),
        IndexKind(
            name="ivf",
            description="inverted lists over k-means cells (IndexIVFFlat, nlist ~ 4*sqrt(N)), approximate",
            build=_build_ivf,
            faiss_class="IndexIVFFlat",
            removes=True,
            trains=True,
        ),
    )
}


def choose_kind(num_items: int, *, exact_below: int = EXACT_BELOW) -> str:
    """The index kind for a collection of `num_items`: exact while small, IVF beyond.

    IVF rather than HNSW above: on a CPU of few cores an HNSW graph of 10^6 items takes from
    minutes to hours to build, an IVF index a few minutes, and it searches a shortlist as fast
    (the measurements are in this module's docstring).

    Args:
        num_items: Items the index will hold.
        exact_below: Collections smaller than this get the exact "flat" index.

    Returns:
        "flat" if `num_items < exact_below`, else "ivf".
    """
    if num_items < 0:
        raise ConfigError(f"num_items must be >= 0, got {num_items}")
    return "flat" if num_items < exact_below else "ivf"


def _training_sample(unit: np.ndarray, most: int) -> np.ndarray:
    """At most `most` rows of `unit` (N, D), drawn with a fixed seed; all of them if N <= most.

    k-means would otherwise run over every vector: at 10^6 items and 4000 lists that is most of
    an hour on 2 cores, for centroids no better than those of a sample of 50 per list.
    """
    if unit.shape[0] <= most:
        return unit
    rows = np.sort(np.random.default_rng(TRAIN_SEED).choice(unit.shape[0], most, replace=False))  # (most,)
    return unit[rows]  # (most, D)


def _kind(name: str) -> IndexKind:
    if name not in INDEX_KINDS:
        raise ConfigError(f"kind: unknown index kind {name!r}; expected 'auto' or one of {sorted(INDEX_KINDS)}")
    return INDEX_KINDS[name]


def _normalised(vectors: object, *, name: str, dim: int | None = None) -> np.ndarray:
    """`vectors` as C-contiguous float32 (N, D) with unit rows; DataError naming `name` otherwise."""
    array = np.asarray(vectors)
    if array.ndim != 2:
        raise DataError(f"expected a 2-D array (N, D), got shape {array.shape}", field=name)
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise DataError(f"expected real numbers, got dtype {array.dtype}", field=name)
    if dim is not None and array.shape[1] != dim:
        raise DataError(f"expected vectors of dimension {dim} (the index's), got {array.shape[1]}", field=name)
    if array.shape[1] == 0:
        raise DataError("vectors have dimension 0", field=name)
    array = np.ascontiguousarray(array, dtype=np.float32)  # (N, D)
    finite = np.isfinite(array).all(axis=1)  # (N,)
    if not finite.all():
        raise DataError(f"row {int(np.argmin(finite))} holds NaN or infinity", field=name)
    norms = np.linalg.norm(array, axis=1, keepdims=True)  # (N, 1)
    if (norms == 0).any():
        raise DataError(f"row {int(np.argmin(norms[:, 0]))} is all zeros and has no direction", field=name)
    return np.ascontiguousarray(array / norms, dtype=np.float32)  # (N, D)


def _as_ids(ids: object, count: int | None, *, name: str = "ids") -> np.ndarray:
    """`ids` as (N,) int64 without duplicates; DataError naming `name` otherwise."""
    array = np.asarray(ids)
    if array.ndim != 1:
        raise DataError(f"expected a 1-D array of ids, got shape {array.shape}", field=name)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"expected integer ids, got dtype {array.dtype}", field=name)
    array = array.astype(np.int64)  # (N,)
    if count is not None and array.shape[0] != count:
        raise DataError(f"expected {count} ids (one per vector), got {array.shape[0]}", field=name)
    unique, counts = np.unique(array, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"id {int(unique[np.argmax(counts > 1)])} appears more than once", field=name)
    return array


class FirstStageIndex:
    """A faiss index over unit global vectors, searched by cosine, labelled with item ids.

    Build with `FirstStageIndex.build` or read with `FirstStageIndex.load`; the constructor is
    internal. Every array in and out is float32 vectors and int64 ids.

    Args:
        kind: A key of `INDEX_KINDS`.
        index: The faiss index, labelled by row.
        row_ids: (rows,) int64: the item id of each faiss row.
        alive: (rows,) bool: whether the row's item is still in the index.
        ef_search: HNSW's search breadth (ignored by other kinds).
        nprobe: IVF lists visited per query (ignored by other kinds).
    """

    def __init__(
        self,
        kind: str,
        index: Any,
        row_ids: np.ndarray,
        alive: np.ndarray,
        *,
        ef_search: int = DEFAULT_EF_SEARCH,
        nprobe: int | None = None,
    ) -> None:
        self.spec = _kind(kind)
        self.index = index
        self._row_ids = row_ids  # (rows,) int64
        self._alive = alive  # (rows,) bool
        self._id_to_row = {int(i): r for r, i in enumerate(row_ids.tolist()) if alive[r]}
        self.ef_search = ef_search
        self.nprobe = nprobe if nprobe is not None else self._default_nprobe()

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        ids: np.ndarray,
        *,
        kind: str = "auto",
        exact_below: int = EXACT_BELOW,
        ef_search: int = DEFAULT_EF_SEARCH,
        nprobe: int | None = None,
    ) -> FirstStageIndex:
        """Index `vectors` (normalised here) under `ids`.

        Args:
            vectors: (N, D) global vectors, any scale; each row is L2-normalised before indexing.
            ids: (N,) integer item ids (e.g. a `RegionStore`'s), all different.
            kind: A key of `INDEX_KINDS`, or "auto" for `choose_kind(N, exact_below=...)`.
            exact_below: With kind="auto", collections smaller than this are searched exactly.
            ef_search: HNSW's search breadth; changeable later through the attribute.
            nprobe: IVF lists visited per query; default a quarter of the lists (at least 8).

        Raises:
            DataError: `vectors` is empty, not 2-D, holds NaN/inf or a zero row, or `ids` does
                not match it or repeats an id.
            ConfigError: `kind` is unknown, or `ef_search`/`nprobe` is not positive.
            MissingDependencyError: faiss is not installed.
        """
        unit = _normalised(vectors, name="vectors")  # (N, D)
        if unit.shape[0] == 0:
            raise DataError("cannot build an index from no vectors (N = 0)", field="vectors")
        item_ids = _as_ids(ids, unit.shape[0])  # (N,)
        name = choose_kind(unit.shape[0], exact_below=exact_below) if kind == "auto" else kind
        spec = _kind(name)
        index = spec.build(unit.shape[1], unit.shape[0])
        if spec.trains:
            index.train(_training_sample(unit, IVF_TRAIN_PER_LIST * int(index.nlist)))
        built = cls(
            name,
            index,
            np.zeros(0, dtype=np.int64),
            np.zeros(0, dtype=bool),
            ef_search=ef_search,
            nprobe=nprobe,
        )
        built._add_unit(unit, item_ids)
        return built

    # --- properties ---------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        """The key of this index's kind in `INDEX_KINDS`."""
        return self.spec.name

    @property
    def dim(self) -> int:
        """Dimension D of the vectors."""
        return int(self.index.d)

    def __len__(self) -> int:
        """Number of live (searchable) items."""
        return len(self._id_to_row)

    @property
    def ids(self) -> np.ndarray:
        """(count,) int64: the live item ids, in the order they were added."""
        return self._row_ids[self._alive]

    @property
    def ef_search(self) -> int:
        """HNSW's search breadth: candidates kept per query (at least k is always used)."""
        return self._ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        if int(value) != value or value < 1:
            raise ConfigError(f"ef_search must be a positive integer, got {value!r}")
        self._ef_search = int(value)

    @property
    def nprobe(self) -> int:
        """IVF lists visited per query (more is slower and more exact; nlist is exhaustive)."""
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if int(value) != value or value < 1:
            raise ConfigError(f"nprobe must be a positive integer, got {value!r}")
        self._nprobe = int(value)

    def _nlist(self) -> int:
        return int(self.index.nlist) if self.spec.trains else 1

    def _default_nprobe(self) -> int:
        nlist = self._nlist()
        return min(nlist, max(8, nlist // 4))

    # --- updates ------------------------------------------------------------------------------

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add items: `vectors` (N, D), normalised here, under `ids` (N,), none already live.

        An id removed earlier may be added again (it gets a new row). IVF puts new vectors in
        the cells it was trained with at `build`; rebuild after the collection changes a lot.

        Raises:
            DataError: bad vectors (see `build`), wrong dimension, or an id already in the index.
        """
        unit = _normalised(vectors, name="vectors", dim=self.dim)  # (N, D)
        item_ids = _as_ids(ids, unit.shape[0])  # (N,)
        self._add_unit(unit, item_ids)

    def _add_unit(self, unit: np.ndarray, item_ids: np.ndarray) -> None:
        present = [int(i) for i in item_ids.tolist() if int(i) in self._id_to_row]
        if present:
            raise DataError(f"id {present[0]} is already in the index; remove it first", field="ids")
        start = self._row_ids.shape[0]
        rows = np.arange(start, start + unit.shape[0], dtype=np.int64)  # (N,)
        if self.spec.sequential_labels:
            if self.index.ntotal != start:
                raise DataError(f"index holds {self.index.ntotal} rows but its id table {start}")
            self.index.add(unit)
        else:
            self.index.add_with_ids(unit, rows)
        self._row_ids = np.concatenate([self._row_ids, item_ids])
        self._alive = np.concatenate([self._alive, np.ones(unit.shape[0], dtype=bool)])
        self._id_to_row.update(zip(item_ids.tolist(), rows.tolist(), strict=True))

    def remove(self, ids: np.ndarray | list[int]) -> None:
        """Remove items by id; searches never return them afterwards.

        flat and ivf delete the vectors; hnsw (which faiss cannot delete from) keeps them in the
        graph, marked, and searches fetch extra candidates to make up for the ones they skip.
        Removing an id already removed is not an error.

        Raises:
            DataError: an id was never in the index.
        """
        wanted = np.unique(np.asarray(ids, dtype=np.int64).reshape(-1))  # (M,)
        known = set(self._row_ids.tolist())
        unknown = [int(i) for i in wanted.tolist() if int(i) not in known]
        if unknown:
            raise DataError(f"id {unknown[0]} is not in the index", field="ids")
        rows = np.array([self._id_to_row[i] for i in wanted.tolist() if i in self._id_to_row], dtype=np.int64)
        if rows.size == 0:
            return
        if self.spec.removes:
            self.index.remove_ids(rows)
        self._alive[rows] = False
        for item_id in self._row_ids[rows].tolist():
            del self._id_to_row[item_id]

    # --- search -------------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k items with the highest cosine to each query, best first.

        Queries are L2-normalised here, so scores are cosines in [-1, 1]. Ids are never -1:
        the result has `min(k, len(self))` columns, and every row is full. (An approximate kind
        that finds fewer hits for a query is searched again, wider, until it finds enough; in
        the unlikely case it still cannot, the columns are cut to the shortest row.)

        Args:
            queries: (Q, D) query vectors.
            k: Candidates wanted per query, >= 1.

        Returns:
            scores (Q, k') float32 and ids (Q, k') int64, k' = min(k, len(self)).

        Raises:
            ConfigError: k is not a positive integer.
            DataError: queries are not (Q, D) with the index's D, or hold NaN/inf or a zero row.
        """
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        unit = _normalised(queries, name="queries", dim=self.dim)  # (Q, D)
        want = min(int(k), len(self))
        num_queries = unit.shape[0]
        scores = np.zeros((num_queries, want), dtype=np.float32)  # (Q, k')
        ids = np.full((num_queries, want), -1, dtype=np.int64)  # (Q, k')
        if want == 0 or num_queries == 0:
            return scores, ids
        dead = self.index.ntotal - len(self)  # rows faiss still holds but searches must skip
        fetch = min(want + dead, self.index.ntotal)
        breadth = 1
        filled = np.zeros(num_queries, dtype=np.int64)  # (Q,)
        pending = np.arange(num_queries)
        for _ in range(_MAX_WIDENINGS):
            got_scores, got_ids = self._search_rows(unit[pending], fetch, breadth, want)  # P rows of <= k' hits
            for slot, query in enumerate(pending.tolist()):
                n = got_ids[slot].shape[0]
                scores[query, :n] = got_scores[slot]
                ids[query, :n] = got_ids[slot]
                filled[query] = n
            pending = np.flatnonzero(filled < want)
            if pending.size == 0 or not self._can_widen(fetch, breadth):
                break
            fetch = min(2 * fetch, self.index.ntotal)
            breadth *= 2
        columns = int(filled.min())
        return scores[:, :columns], ids[:, :columns]

    def _can_widen(self, fetch: int, breadth: int) -> bool:
        if self.spec.trains:
            return self.nprobe * breadth < self._nlist() or fetch < self.index.ntotal
        if self.spec.sequential_labels:
            return fetch < self.index.ntotal or self.ef_search * breadth < self.index.ntotal
        return False  # exact: a second search finds nothing more

    def _search_rows(
        self, unit: np.ndarray, fetch: int, breadth: int, want: int
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Search faiss for `fetch` labels per query; per query its live hits, best first, at most `want`."""
        faiss = _faiss()
        params: Any = None
        if self.spec.trains:
            params = faiss.SearchParametersIVF(nprobe=min(self.nprobe * breadth, self._nlist()))
        elif self.spec.sequential_labels:
            params = faiss.SearchParametersHNSW(efSearch=max(self.ef_search * breadth, fetch))
        raw_scores, rows = self.index.search(unit, fetch, params=params)  # (P, fetch), (P, fetch)
        out_scores, out_ids = [], []
        for row_scores, row_labels in zip(raw_scores, rows, strict=True):
            keep = row_labels >= 0  # (fetch,)
            keep[keep] = self._alive[row_labels[keep]]
            out_scores.append(row_scores[keep][:want].astype(np.float32))
            out_ids.append(self._row_ids[row_labels[keep]][:want])
        return out_scores, out_ids

    # --- files --------------------------------------------------------------------------------

    @staticmethod
    def files(path: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
        """The three files of an index saved at `path`: the faiss index, the id table, the header."""
        path = Path(path)
        return path, path.with_name(path.name + ".ids.npz"), path.with_name(path.name + ".json")

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the index to `path` and its two siblings, each atomically (header last).

        A reader sees, for each file, the old one or the new one; `load` rejects a mix of an old
        and a new file (left by a save killed between files) because the counts disagree.

        Returns:
            The path of the faiss index file.
        """
        faiss = _faiss()
        index_path, ids_path, header_path = self.files(path)
        with atomic_open(index_path, "wb") as handle:
            handle.write(faiss.serialize_index(self.index).tobytes())
        buffer = io.BytesIO()
        np.savez(buffer, row_ids=self._row_ids, alive=self._alive)
        with atomic_open(ids_path, "wb") as handle:
            handle.write(buffer.getvalue())
        header = {
            "format": FORMAT,
            "version": VERSION,
            "kind": self.kind,
            "dim": self.dim,
            "count": len(self),
            "rows": int(self._row_ids.shape[0]),
            "ntotal": int(self.index.ntotal),
            "ef_search": self.ef_search,
            "nprobe": self.nprobe,
        }
        write_text_atomic(header_path, json.dumps(header, indent=2) + "\n")
        return index_path

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, expected_dim: int | None = None) -> FirstStageIndex:
        """Read an index written by `save`.

        Args:
            path: The faiss index file given to `save`.
            expected_dim: If given, the dimension the caller's vectors have; a different one is
                an error (e.g. an index made with another model).

        Raises:
            DataError: a file is missing, truncated or malformed, the files disagree, or the
                dimension is not `expected_dim`; the message names the file at fault.
            MissingDependencyError: faiss is not installed.
        """
        faiss = _faiss()
        index_path, ids_path, header_path = cls.files(path)
        header = _read_header(header_path)
        spec = INDEX_KINDS[header["kind"]]
        if expected_dim is not None and header["dim"] != expected_dim:
            raise DataError(
                f"the index holds vectors of dimension {header['dim']}, expected {expected_dim} "
                "(made with another model?); rebuild it",
                path=header_path,
                field="dim",
            )
        if not index_path.is_file():
            raise DataError("index file is missing", path=index_path)
        try:
            index = faiss.read_index(os.fspath(index_path))
        except RuntimeError as error:
            raise DataError(f"not a readable faiss index (truncated or corrupt): {error}", path=index_path) from None
        if type(index).__name__ != spec.faiss_class:
            raise DataError(
                f"expected a {spec.faiss_class} for kind {spec.name!r}, found {type(index).__name__}", path=index_path
            )
        if index.d != header["dim"] or index.ntotal != header["ntotal"]:
            raise DataError(
                f"index has dim {index.d} and {index.ntotal} rows, its header {header_path.name} says "
                f"{header['dim']} and {header['ntotal']} (files from different saves?)",
                path=index_path,
            )
        row_ids, alive = _read_ids(ids_path, header)
        rows_in_faiss = row_ids.shape[0] if spec.sequential_labels else int(alive.sum())
        if rows_in_faiss != index.ntotal:
            raise DataError(
                f"id table has {rows_in_faiss} rows for an index of {index.ntotal} (files from different saves?)",
                path=ids_path,
            )
        return cls(spec.name, index, row_ids, alive, ef_search=header["ef_search"], nprobe=header["nprobe"])


def _read_header(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError("index header is missing (was the index saved with FirstStageIndex.save?)", path=path)
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"not a readable JSON header: {error}", path=path) from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise DataError(f"not a first-stage index header (format should be {FORMAT!r})", path=path, field="format")
    if header.get("version") != VERSION:
        raise DataError(
            f"unsupported version {header.get('version')!r}, expected {VERSION}", path=path, field="version"
        )
    if header.get("kind") not in INDEX_KINDS:
        raise DataError(
            f"unknown kind {header.get('kind')!r}, expected one of {sorted(INDEX_KINDS)}", path=path, field="kind"
        )
    for field in ("dim", "count", "rows", "ntotal", "ef_search", "nprobe"):
        value = header.get(field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise DataError(f"expected a count, got {value!r}", path=path, field=field)
    return header


def _read_ids(path: Path, header: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError("id table is missing", path=path)
    try:
        with np.load(path, allow_pickle=False) as data:
            row_ids = np.asarray(data["row_ids"])
            alive = np.asarray(data["alive"])
    except Exception as error:  # a damaged zip raises anything from BadZipFile to ValueError
        raise DataError(f"not a readable id table (truncated or corrupt): {error}", path=path) from None
    if row_ids.dtype != np.int64 or alive.dtype != np.bool_ or row_ids.ndim != 1 or alive.shape != row_ids.shape:
        raise DataError("expected row_ids (rows,) int64 and alive (rows,) bool", path=path)
    if row_ids.shape[0] != header["rows"] or int(alive.sum()) != header["count"]:
        raise DataError(
            f"id table has {row_ids.shape[0]} rows, {int(alive.sum())} live; the header says "
            f"{header['rows']} and {header['count']} (files from different saves?)",
            path=path,
        )
    if np.unique(row_ids[alive]).shape[0] != int(alive.sum()):
        raise DataError("a live id appears more than once", path=path, field="row_ids")
    return row_ids, alive
