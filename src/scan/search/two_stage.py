"""Text-to-image search of a collection in two stages: a vector index shortlists, SCAN re-ranks.

A SCAN score attends every word of the query over every region of an image, so it cannot be
folded into one vector per image and looked up in an index; scoring a whole collection of
millions of photos for each query would take seconds to minutes. A single global vector per image
can be searched in milliseconds (faiss), but ranks worse. So search runs in two stages, as LAVIS'
`k_test` does for BLIP: the `FirstStageIndex` shortlists `shortlist` candidates by the cosine of
global vectors, then SCAN scores only those candidates with their region vectors (read from the
`RegionStore`) and the best `k` of them are returned, ranked by SCAN. `exhaustive=True` skips the
first stage and scores every item, which is exact (and the reference the two stages are checked
against) but slow on a large collection.

A collection built by `build_collection` lives in one folder:

    regions/                 the RegionStore (a folder of its own: see scan.search.store)
    first_stage.faiss        the FirstStageIndex over the items' global vectors (plus its siblings)

The global vectors come from the model's global head (`scan.models.global_head`), trained
jointly with SCAN so that one checkpoint serves both stages; a model trained without one falls
back, with a warning, to the mean of its region (or word) vectors, which SCAN was never trained for.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from scan import checkpoint as ckpt
from scan.data.precomp import PrecompSplit
from scan.errors import ConfigError, DataError
from scan.models.loading import TrainedModel
from scan.search.first_stage import FirstStageIndex
from scan.search.store import RegionStore

__all__ = [
    "EXHAUSTIVE_BLOCK",
    "INDEX_FILE",
    "STORE_FOLDER",
    "Hit",
    "TwoStageSearch",
    "build_collection",
    "encode_texts",
    "global_image_vectors",
    "global_text_vector",
    "model_fingerprint",
    "open_collection",
    "query_ids",
    "rank",
    "score_rows",
]

STORE_FOLDER = "regions"  # the RegionStore of a collection folder (a store needs a folder of its own)
INDEX_FILE = "first_stage.faiss"  # the FirstStageIndex of a collection folder
EXHAUSTIVE_BLOCK = 4096  # items scored at once by an exhaustive search: bounds its memory
ENCODE_BATCH = 128  # images encoded at once by build_collection
_EPS = 1e-12


# ---------------------------------------------------------------------------------- global vectors


def _unit_rows(vectors: torch.Tensor) -> torch.Tensor:
    """L2-normalise the last dimension; a zero row stays zero (the index refuses it, loudly)."""
    return vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(_EPS)


def global_image_vectors(regions: torch.Tensor, head: torch.nn.Module | None = None) -> torch.Tensor:
    """The first-stage vector of each image: the model's trained global head, else mean pooling.

    Args:
        regions: `(N, R, D)` encoded region vectors.
        head: The model's `global_head` (see `scan.models.global_head`), or None for the
            fallback: the mean of the unit region vectors, a weak but cheap summary that SCAN
            was never trained for (models from before the global head have nothing better).

    Returns:
        `(N, D)` float32 unit vectors.
    """
    if head is not None:
        with torch.no_grad():
            return _unit_rows(head.image(regions.to(_model_device(head)).float()).float().cpu())  # type: ignore[operator]
    return _unit_rows(regions.float().mean(dim=1))  # (N, D)


def global_text_vector(words: torch.Tensor, mask: torch.Tensor, head: torch.nn.Module | None = None) -> torch.Tensor:
    """The first-stage vector of each caption: the model's global head, else its words' mean.

    Args:
        words: `(M, W, D)` encoded word vectors, padded.
        mask: `(M, W)` True (or 1) at real words.
        head: The model's `global_head`, or None for the mean-pooling fallback.

    Returns:
        `(M, D)` float32 unit vectors.
    """
    if head is not None:
        device = _model_device(head)
        with torch.no_grad():
            return _unit_rows(head.text(words.to(device).float(), mask.to(device).bool()).float().cpu())  # type: ignore[operator]
    weights = mask.to(torch.float32).unsqueeze(-1)  # (M, W, 1)
    total = (words.float() * weights).sum(dim=1)  # (M, D)
    count = weights.sum(dim=1).clamp_min(1.0)  # (M, 1)
    return _unit_rows(total / count)  # (M, D)


def global_head(model: TrainedModel) -> torch.nn.Module | None:
    """The model's trained global head, or None (with a warning) for a model trained without one."""
    head = getattr(model.model, "global_head", None)
    if head is None:
        warnings.warn(
            f"{model.folder} has no trained global head (model.global_head was off or the model predates it): "
            "the first stage shortlists by mean pooling of SCAN's vectors, which ranks worse; "
            "raise the shortlist, or retrain with model.global_head=true",
            stacklevel=2,
        )
    return head


# ---------------------------------------------------------------------------------- search


@dataclass(frozen=True)
class Hit:
    """One search result.

    Attributes:
        id: The item's id in the `RegionStore`.
        score: Its SCAN score against the query (what results are ranked by).
        first_stage_score: Its cosine in the first stage, or None when the search was exhaustive.
        path: The item's relative path, as recorded in the store.
    """

    id: int
    score: float
    first_stage_score: float | None
    path: str


def _model_device(model: torch.nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def encode_texts(model: TrainedModel, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokenize and encode captions or queries with the model's text encoder.

    Returns:
        `(M, W, D)` float32 word vectors (zero-padded), `(M,)` lengths and `(M, W)` mask, on the CPU.
    """
    ids = [model.tokenizer.encode(text) for text in texts]
    lengths = torch.tensor([len(i) for i in ids], dtype=torch.long)  # (M,)
    tokens = torch.zeros(len(ids), int(lengths.max()), dtype=torch.long)  # (M, W), padded with 0
    for row, sentence in enumerate(ids):
        tokens[row, : len(sentence)] = torch.tensor(sentence, dtype=torch.long)
    net = model.model
    device = _model_device(net)
    with torch.no_grad():
        words, mask = net.encode_text(tokens.to(device), lengths.to(device))  # (M, W, D), (M, W)
    return words.float().cpu(), lengths, mask.cpu()


def query_ids(model: TrainedModel, text: str) -> list[int]:
    """The token ids of a query, checked: something to search with.

    Raises:
        ConfigError: the query is not a text, is empty or whitespace, or the vocabulary knows
            none of its words.
    """
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"query must be a non-empty text, got {text!r}")
    tokenizer = model.tokenizer
    ids = tokenizer.encode(text)  # wrapped in the start and end ids
    inner = ids[1:-1]
    unk = getattr(tokenizer, "unk_id", None)
    if not inner or (unk is not None and all(token == unk for token in inner)):
        raise ConfigError(f"query {text!r}: every word is unknown to the model's vocabulary; nothing to search with")
    return ids


def score_rows(model: TrainedModel, regions: torch.Tensor, words: torch.Tensor, lengths: torch.Tensor) -> np.ndarray:
    """`(N, M)` float32 SCAN scores of encoded images `(N, R, D)` against encoded texts `(M, W, D)`."""
    device = _model_device(model.model)
    return model.model.score_matrix(regions.float().to(device), words, lengths).numpy().astype(np.float32)


def rank(scores: np.ndarray, candidates: np.ndarray, k: int) -> list[int]:
    """Positions of the best `k` of `scores`, highest first, equal scores by candidate id."""
    return np.lexsort((candidates, -scores))[: int(k)].tolist()


class TwoStageSearch:
    """Search a collection for the images that best match a text, shortlisting then re-ranking.

        search = TwoStageSearch(load_model(run_dir), *open_collection(folder))
        hits = search.search("a dog runs on the beach", k=10, shortlist=100)

    The store and the index must hold the same items under the same ids, with vectors made by
    `model` (`build_collection` makes such a pair). Removing an item from the store means
    removing it from the index too; otherwise a shortlist naming it fails with a StoreError.

    Args:
        model: The trained model whose encoders made the store's region vectors.
        store: The items' region vectors.
        index: The items' global vectors, under the store's ids.
        head: The model's global head (or None for mean pooling), when the caller looked it up.

    Raises:
        DataError: the store, the index and the model disagree on the vector dimension.
    """

    def __init__(
        self, model: TrainedModel, store: RegionStore, index: FirstStageIndex, *, head: object = "model's"
    ) -> None:
        dim = int(model.config.model.embed_dim)
        if store.dim != dim:
            raise DataError(f"the region store holds {store.dim}-dim vectors, the model makes {dim}", field="dim")
        if index.dim != dim:
            raise DataError(f"the first-stage index holds {index.dim}-dim vectors, the model makes {dim}", field="dim")
        self.model = model
        self.store = store
        self.index = index
        # The caller may pass the head it already looked up (and warned about, if missing).
        self.head: torch.nn.Module | None = global_head(model) if head == "model's" else head  # type: ignore[assignment]

    def encode_query(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize and encode a query.

        Returns:
            `(1, W, D)` float32 word vectors and `(1,)` lengths, on the CPU.

        Raises:
            ConfigError: the query is empty or whitespace, or the vocabulary knows none of its words.
        """
        ids = query_ids(self.model, text)
        net = self.model.model
        device = _model_device(net)
        tokens = torch.tensor([ids], dtype=torch.long)  # (1, W)
        lengths = torch.tensor([len(ids)], dtype=torch.long)  # (1,)
        with torch.no_grad():
            words, _mask = net.encode_text(tokens.to(device), lengths.to(device))  # (1, W, D), (1, W)
        return words.float().cpu(), lengths

    def _scan_scores(self, ids: Sequence[int], words: torch.Tensor, lengths: torch.Tensor) -> np.ndarray:
        """SCAN scores of store items `ids` against one encoded query: `(len(ids),)` float32."""
        regions = torch.from_numpy(self.store.vectors(ids).astype(np.float32))  # (n, R, D)
        return score_rows(self.model, regions, words, lengths)[:, 0]  # (n,)

    def search(self, text: str, *, k: int = 10, shortlist: int = 100, exhaustive: bool = False) -> list[Hit]:
        """The `k` items that best match `text`, best first, ranked by SCAN score.

        With `k` above the number of items (or above the shortlist's size), every candidate is
        returned: fewer than `k` hits, not an error. Equal SCAN scores are ordered by id.

        Args:
            text: The query.
            k: Hits wanted, >= 1.
            shortlist: Candidates the first stage passes to SCAN, >= k. More is slower and closer
                to the exhaustive ranking; the size of the collection gives exactly that ranking
                (when the index is exact).
            exhaustive: Score every live item of the store with SCAN and skip the first stage.

        Returns:
            Up to `k` hits, highest SCAN score first.

        Raises:
            ConfigError: `k` or `shortlist` is not a positive integer, `shortlist` < `k`, or the
                query is empty or made only of unknown words.
        """
        _check_sizes(k, shortlist)
        words, lengths = self.encode_query(text)  # (1, W, D), (1,)

        first: np.ndarray | None
        if exhaustive:
            all_ids = self.store.ids()
            candidates = np.asarray(all_ids, dtype=np.int64)  # (n,)
            first = None
            blocks = [
                self._scan_scores(all_ids[start : start + EXHAUSTIVE_BLOCK], words, lengths)
                for start in range(0, len(all_ids), EXHAUSTIVE_BLOCK)
            ]
            scores = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)  # (n,)
        else:
            query = self._global_query(words)  # (1, D)
            first_scores, first_ids = self.index.search(query, int(shortlist))  # (1, s), (1, s)
            candidates, first = first_ids[0], first_scores[0]  # (s,), (s,)
            scores = self._scan_scores(candidates.tolist(), words, lengths)  # (s,)
        return self._hits(candidates, scores, first, k)

    def search_many(self, texts: Sequence[str], *, k: int = 10, shortlist: int = 100) -> list[list[Hit]]:
        """`search` for several queries at once: one first-stage call for all, then a re-rank each.

        Equal to `[search(t, k=k, shortlist=shortlist) for t in texts]`; a server that gathers
        concurrent queries saves the per-call overhead of the first stage (one matrix product
        over the index instead of one per query).

        Raises:
            ConfigError: as `search`, for the first bad query (none is searched then).
        """
        _check_sizes(k, shortlist)
        encoded = [self.encode_query(text) for text in texts]  # [(1, W_i, D), (1,)]
        if not encoded:
            return []
        queries = np.concatenate([self._global_query(words) for words, _ in encoded])  # (Q, D)
        first_scores, first_ids = self.index.search(queries, int(shortlist))  # (Q, s), (Q, s)
        return [
            self._hits(first_ids[row], self._scan_scores(first_ids[row].tolist(), words, lengths), first_scores[row], k)
            for row, (words, lengths) in enumerate(encoded)
        ]

    def _global_query(self, words: torch.Tensor) -> np.ndarray:
        """`(1, D)` the first-stage vector of one encoded, unpadded query `(1, W, D)`."""
        mask = torch.ones(words.shape[:2], dtype=torch.bool)  # (1, W)
        return global_text_vector(words, mask, self.head).numpy()

    def _hits(self, candidates: np.ndarray, scores: np.ndarray, first: np.ndarray | None, k: int) -> list[Hit]:
        return [
            Hit(
                id=int(candidates[i]),
                score=float(scores[i]),
                first_stage_score=None if first is None else float(first[i]),
                path=str(self.store.item(int(candidates[i]))["path"]),
            )
            for i in rank(scores, candidates, k)
        ]


def _check_sizes(k: object, shortlist: object) -> None:
    for name, value in (("k", k), ("shortlist", shortlist)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if shortlist < k:  # type: ignore[operator]
        raise ConfigError(f"shortlist must be at least k ({k}), got {shortlist}")


# ---------------------------------------------------------------------------------- building


def model_fingerprint(model: TrainedModel) -> str:
    """The SHA-256 of the model's weights file (see `scan.checkpoint.weights_digest`)."""
    return ckpt.weights_digest(model.folder)


def _read_batch(features: np.ndarray | PrecompSplit, rows: range) -> np.ndarray:
    if isinstance(features, PrecompSplit):
        return np.stack([features.image_features(i) for i in rows])  # (n, R, F)
    return np.asarray(features[rows.start : rows.stop], dtype=np.float32)  # (n, R, F)


def build_collection(
    model: TrainedModel,
    features: np.ndarray | PrecompSplit,
    paths: Sequence[str | os.PathLike[str]],
    hashes: Sequence[str],
    folder: str | os.PathLike[str],
    *,
    batch_size: int = ENCODE_BATCH,
) -> tuple[RegionStore, FirstStageIndex]:
    """Encode a collection's images and write its region store and first-stage index.

    The store goes to `folder/regions` and the index to `folder/first_stage.faiss`; reopen them
    with `open_collection(folder)`. Items get store ids in input order (0, 1, ... in a new
    store), except duplicates by content hash, which the store skips.

    Args:
        model: The trained model to encode with.
        features: `(N, R, F)` region features, or a `PrecompSplit` (all of its images, in order).
        paths: N relative paths, one per image.
        hashes: N sha256 content hashes, one per image.
        folder: Where the collection goes; its `regions` subfolder must not exist or be empty.
        batch_size: Images encoded at once.

    Returns:
        The store and the index, ready for `TwoStageSearch`.

    Raises:
        DataError: the features are not `(N, R, F)` with the model's F, or do not match `paths`
            and `hashes` in number (StoreError, a DataError, for what the store refuses).
        ConfigError: `batch_size` is not positive.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    image_dim = int(model.config.model.image_dim)
    if isinstance(features, PrecompSplit):
        shape: tuple[int, ...] = (features.num_images, features.num_regions, features.feature_dim)
    else:
        shape = tuple(np.shape(features))
    if len(shape) != 3 or shape[2] != image_dim or shape[0] == 0:
        raise DataError(f"expected (N, R, {image_dim}) region features with N >= 1, got {shape}", field="features")
    if len(paths) != shape[0] or len(hashes) != shape[0]:
        raise DataError(f"{shape[0]} images but {len(paths)} paths and {len(hashes)} hashes", field="paths")
    net = model.model
    net.eval()
    device = _model_device(net)
    head = global_head(model)
    folder = Path(folder)
    store = RegionStore.create(
        folder / STORE_FOLDER,
        num_regions=shape[1],
        dim=int(model.config.model.embed_dim),
        model_fingerprint=model_fingerprint(model),
    )
    all_ids: list[int] = []
    globals_: list[np.ndarray] = []
    for start in range(0, shape[0], batch_size):
        rows = range(start, min(start + batch_size, shape[0]))
        batch = torch.from_numpy(_read_batch(features, rows))  # (n, R, F)
        with torch.no_grad():
            regions = net.encode_image(batch.to(device)).float().cpu()  # (n, R, D)
        ids = store.append(regions.numpy(), list(paths[rows.start : rows.stop]), list(hashes[rows.start : rows.stop]))
        if not ids:
            continue
        kept = [store.item(i)["sha256"] for i in ids]
        position: dict[str, int] = {}
        for row, sha in enumerate(hashes[rows.start : rows.stop]):
            position.setdefault(sha, row)  # the store keeps the first of repeated hashes
        keep = [position[sha] for sha in kept]  # the rows the store took (duplicates skipped)
        globals_.append(global_image_vectors(regions[keep], head).numpy())  # (m, D)
        all_ids.extend(ids)
    vectors = np.concatenate(globals_)  # (N', D)
    index = FirstStageIndex.build(vectors, np.asarray(all_ids, dtype=np.int64), kind="auto")
    index.save(folder / INDEX_FILE)
    return store, index


def open_collection(folder: str | os.PathLike[str]) -> tuple[RegionStore, FirstStageIndex]:
    """Reopen a collection written by `build_collection`: its store and its index.

    Raises:
        StoreError: the store is missing or malformed.
        DataError: the index is missing or malformed, or its dimension is not the store's.
    """
    folder = Path(folder)
    store = RegionStore.open(folder / STORE_FOLDER)
    index = FirstStageIndex.load(folder / INDEX_FILE, expected_dim=store.dim)
    return store, index
