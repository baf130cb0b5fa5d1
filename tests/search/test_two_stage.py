"""Two-stage search: shortlist by global vectors, re-rank by SCAN, agree with scoring everything."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("faiss")

from scan.data.precomp import PrecompSplit
from scan.errors import ConfigError
from scan.models.loading import TrainedModel, load_model
from scan.search.first_stage import FirstStageIndex
from scan.search.store import RegionStore
from scan.search.two_stage import (
    INDEX_FILE,
    STORE_FOLDER,
    Hit,
    TwoStageSearch,
    build_collection,
    global_image_vectors,
    global_text_vector,
    open_collection,
)

QUERIES = (0, 7, 123, 499)  # caption indices of the test split (caption k shows image k // 5)
TOLERANCE = 1e-5


class Collection:
    """The test split as a built collection, with the reference scores to check searches against."""

    def __init__(self, model: TrainedModel, split: PrecompSplit, folder: Path) -> None:
        self.model = model
        self.split = split
        self.folder = folder
        self.paths = [f"photos/{i:03d}.jpg" for i in range(split.num_images)]
        hashes = [f"{i:064x}" for i in range(split.num_images)]
        self.store, self.index = build_collection(model, split, self.paths, hashes, folder)
        self.search = TwoStageSearch(model, self.store, self.index)
        features = torch.from_numpy(np.stack([split.image_features(i) for i in range(split.num_images)]))
        with torch.no_grad():
            regions = model.model.encode_image(features).float()  # (N, R, D)
        self.regions = regions.half().float()  # (N, R, D) as the float16 store keeps them

    def reference(self, text: str) -> np.ndarray:
        """`(N,)` scores of every image for `text`, from the model's full score matrix."""
        words, lengths = self.search.encode_query(text)  # (1, W, D), (1,)
        return self.model.model.score_matrix(self.regions, words, lengths)[:, 0].numpy()  # (N,)


@pytest.fixture(scope="module")
def collection(tiny_run, synthetic_data, tmp_path_factory) -> Collection:
    split = PrecompSplit.open(synthetic_data, "test")
    return Collection(load_model(tiny_run), split, tmp_path_factory.mktemp("collection"))


def assert_ranked_like(hits: list[Hit], reference: np.ndarray) -> None:
    """Hits carry the reference scores and come in the reference order (up to exact ties)."""
    ids = np.array([hit.id for hit in hits])
    scores = np.array([hit.score for hit in hits])
    np.testing.assert_allclose(scores, reference[ids], atol=TOLERANCE)
    best = np.sort(reference)[::-1][: len(hits)]  # (k,) the reference's top scores, in order
    np.testing.assert_allclose(scores, best, atol=TOLERANCE)
    assert np.all(np.diff(scores) <= 0)


def test_global_vectors_are_unit_means() -> None:
    regions = torch.randn(3, 5, 4)  # (N, R, D)
    expected = regions.mean(dim=1)
    np.testing.assert_allclose(
        global_image_vectors(regions).numpy(), (expected / expected.norm(dim=1, keepdim=True)).numpy(), atol=1e-6
    )
    words = torch.randn(2, 4, 4)  # (M, W, D)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    got = global_text_vector(words, mask)  # (M, D)
    first = words[0, :2].mean(dim=0)
    np.testing.assert_allclose(got[0].numpy(), (first / first.norm()).numpy(), atol=1e-6)
    np.testing.assert_allclose(got.norm(dim=1).numpy(), [1.0, 1.0], atol=1e-6)


def test_store_ids_are_image_indices(collection: Collection) -> None:
    assert collection.store.ids() == list(range(collection.split.num_images))
    assert sorted(collection.index.ids.tolist()) == list(range(collection.split.num_images))
    np.testing.assert_array_equal(
        collection.store.vectors([3, 1]).astype(np.float32), collection.regions[[3, 1]].numpy()
    )


@pytest.mark.parametrize("caption", QUERIES)
def test_full_shortlist_equals_exhaustive_and_score_matrix(collection: Collection, caption: int) -> None:
    text = collection.split.captions[caption]
    n = collection.split.num_images
    reference = collection.reference(text)  # (N,)
    two_stage = collection.search.search(text, k=n, shortlist=n)
    exhaustive = collection.search.search(text, k=n, exhaustive=True)
    assert len(two_stage) == len(exhaustive) == n
    assert_ranked_like(two_stage, reference)
    assert_ranked_like(exhaustive, reference)
    np.testing.assert_allclose([h.score for h in two_stage], [h.score for h in exhaustive], atol=TOLERANCE)
    assert all(hit.first_stage_score is not None for hit in two_stage)
    assert all(hit.first_stage_score is None for hit in exhaustive)
    assert all(hit.path == collection.paths[hit.id] for hit in two_stage)


@pytest.mark.parametrize("caption", QUERIES)
def test_exhaustive_top_hits_are_the_score_matrix_argsort(collection: Collection, caption: int) -> None:
    text = collection.split.captions[caption]
    reference = collection.reference(text)  # (N,)
    k = 10
    hits = collection.search.search(text, k=k, exhaustive=True)
    top = np.argsort(-reference, kind="stable")[:k]
    gap = np.sort(reference)[::-1][k - 1] - np.sort(reference)[::-1][k]  # a near-tie at the cut may swap
    if gap > TOLERANCE:
        assert {hit.id for hit in hits} == set(top.tolist())
    assert_ranked_like(hits, reference)


@pytest.mark.parametrize("caption", QUERIES)
def test_small_shortlist_is_a_reranked_subset(collection: Collection, caption: int) -> None:
    text = collection.split.captions[caption]
    words, _ = collection.search.encode_query(text)
    mask = torch.ones(words.shape[:2], dtype=torch.bool)
    query = global_text_vector(words, mask, collection.search.head).numpy()  # (1, D), as the search encodes it
    first_scores, first_ids = collection.index.search(query, 20)  # (1, 20)
    first = dict(zip(first_ids[0].tolist(), first_scores[0].tolist(), strict=True))
    reference = collection.reference(text)  # (N,)
    hits = collection.search.search(text, k=20, shortlist=20)
    assert {hit.id for hit in hits} == set(first)
    for hit in hits:
        assert hit.first_stage_score == pytest.approx(first[hit.id], abs=TOLERANCE)
        assert hit.score == pytest.approx(float(reference[hit.id]), abs=TOLERANCE)
    scores = [hit.score for hit in hits]
    assert scores == sorted(scores, reverse=True)
    top5 = collection.search.search(text, k=5, shortlist=20)
    assert [hit.id for hit in top5] == [hit.id for hit in hits[:5]]


@pytest.mark.parametrize(
    ("text", "options", "names"),
    [
        ("", {}, "query"),
        ("   \t\n", {}, "query"),
        ("qqxzv zzqxw", {}, "unknown"),
        (None, {"k": 0}, "k"),
        (None, {"k": -1}, "k"),
        (None, {"k": 5, "shortlist": 4}, "shortlist"),
        (None, {"shortlist": 0}, "shortlist"),
    ],
)
def test_bad_queries_and_arguments_raise_config_error(
    collection: Collection, text: str | None, options: dict, names: str
) -> None:
    query = collection.split.captions[0] if text is None else text
    with pytest.raises(ConfigError, match=names):
        collection.search.search(query, **options)


def test_k_beyond_the_collection_returns_every_item(collection: Collection) -> None:
    text = collection.split.captions[3]
    n = collection.split.num_images
    assert len(collection.search.search(text, k=n + 50, shortlist=n + 50)) == n
    assert len(collection.search.search(text, k=n + 50, shortlist=n + 50, exhaustive=True)) == n
    hits = collection.search.search(text, k=n + 50, shortlist=n + 50)
    assert sorted(hit.id for hit in hits) == list(range(n))


def test_reopened_collection_gives_the_same_results(collection: Collection) -> None:
    assert (collection.folder / STORE_FOLDER / "manifest.json").is_file()
    store = RegionStore.open(collection.folder / STORE_FOLDER)
    index = FirstStageIndex.load(collection.folder / INDEX_FILE)
    assert store.ids() == collection.store.ids()
    assert store.model_fingerprint == collection.store.model_fingerprint
    reopened = TwoStageSearch(collection.model, store, index)
    also = TwoStageSearch(collection.model, *open_collection(collection.folder))
    for caption in QUERIES:
        text = collection.split.captions[caption]
        for options in ({"k": 10, "shortlist": 20}, {"k": 10, "exhaustive": True}):
            expected = collection.search.search(text, **options)
            assert reopened.search(text, **options) == expected
            assert also.search(text, **options) == expected


def test_build_collection_from_an_array_matches_the_split(collection: Collection, tmp_path: Path) -> None:
    split = collection.split
    features = np.stack([split.image_features(i) for i in range(split.num_images)])  # (N, R, F)
    hashes = [f"{i:064x}" for i in range(split.num_images)]
    store, index = build_collection(collection.model, features, collection.paths, hashes, tmp_path, batch_size=32)
    np.testing.assert_array_equal(store.vectors(store.ids()), collection.store.vectors(collection.store.ids()))
    text = split.captions[42]
    search = TwoStageSearch(collection.model, store, index)
    assert search.search(text, k=10, shortlist=30) == collection.search.search(text, k=10, shortlist=30)
