"""The first stage of collection search: faiss indexes agree with brute force, ids, updates, files."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("faiss")

from scan.errors import ConfigError, DataError
from scan.search.first_stage import INDEX_KINDS, FirstStageIndex, choose_kind

N, D, Q, K = 2000, 64, 50, 10
GENEROUS = {"flat": {}, "hnsw": {"ef_search": 256}, "ivf": {"nprobe": 40}}
MIN_RECALL = {"flat": 1.0, "hnsw": 0.95, "ivf": 0.95}


def unit(array: np.ndarray) -> np.ndarray:
    return (array / np.linalg.norm(array, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    vectors = unit(rng.standard_normal((N, D)))  # (N, D)
    ids = np.arange(N, dtype=np.int64) * 10 + 7  # store ids are not rows
    queries = unit(rng.standard_normal((Q, D)))  # (Q, D)
    return vectors, ids, queries


def brute_force(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ vectors.T  # (Q, N)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (Q, k)
    return np.take_along_axis(scores, order, axis=1), ids[order]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / truth.shape[1] for f, t in zip(found, truth, strict=True)]))


def build(kind: str, vectors: np.ndarray, ids: np.ndarray) -> FirstStageIndex:
    return FirstStageIndex.build(vectors, ids, kind=kind, **GENEROUS[kind])


@pytest.mark.parametrize("kind", sorted(INDEX_KINDS))
def test_search_agrees_with_brute_force(kind, data):
    vectors, ids, queries = data
    index = build(kind, vectors, ids)
    assert index.kind == kind and len(index) == N and index.dim == D
    scores, found = index.search(queries, K)
    assert scores.shape == found.shape == (Q, K)
    assert scores.dtype == np.float32 and found.dtype == np.int64
    assert (found >= 0).all() and np.isin(found, ids).all()  # store ids, never -1 or a row number
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    truth_scores, truth = brute_force(vectors, ids, queries, K)
    assert recall(found, truth) >= MIN_RECALL[kind]
    if kind == "flat":
        np.testing.assert_array_equal(found, truth)
        np.testing.assert_allclose(scores, truth_scores, atol=1e-5)


@pytest.mark.parametrize("kind", sorted(INDEX_KINDS))
def test_vectors_are_normalised_inside(kind, data):
    vectors, ids, queries = data
    scale = np.linspace(0.1, 50, N, dtype=np.float32)[:, None]
    index = build(kind, vectors * scale, ids)
    scores, found = index.search(queries * 3.0, K)
    assert np.abs(scores).max() <= 1.0 + 1e-5  # cosines
    assert recall(found, brute_force(vectors, ids, queries, K)[1]) >= MIN_RECALL[kind]


@pytest.mark.parametrize("kind", sorted(INDEX_KINDS))
def test_a_vector_finds_its_own_id(kind, data):
    vectors, ids, _ = data
    index = build(kind, vectors, ids)
    _, found = index.search(vectors[:100], 1)
    np.testing.assert_array_equal(found[:, 0], ids[:100])


@pytest.mark.parametrize("kind", sorted(INDEX_KINDS))
def test_add_then_search_finds_the_new_items(kind, data):
    vectors, ids, _ = data
    index = build(kind, vectors[:1500], ids[:1500])
    index.add(vectors[1500:], ids[1500:])
    assert len(index) == N
    _, found = index.search(vectors[1500:1600], 1)
    np.testing.assert_array_equal(found[:, 0], ids[1500:1600])
    with pytest.raises(DataError, match="ids.*already in the index"):
        index.add(vectors[:1], ids[:1])


@pytest.mark.parametrize("kind", sorted(INDEX_KINDS))
def test_removed_ids_are_never_returned(kind, data):
    vectors, ids, queries = data
    index = build(kind, vectors, ids)
    _, before = index.search(queries, K)
    removed = np.unique(before[:, :5])  # the best hits of every query
    index.remove(removed)
    index.remove(removed[:3])  # removing again is not an error
    assert len(index) == N - removed.size
    assert not np.isin(index.ids, removed).any()
    _, found = index.search(queries, K)
    assert found.shape == (Q, K)
    assert not np.isin(found, removed).any()
    keep = ~np.isin(ids, removed)
    assert recall(found, brute_force(vectors[keep], ids[keep], queries, K)[1]) >= MIN_RECALL[kind]
    _, own = index.search(vectors[np.isin(ids, removed)], 1)
    assert not np.isin(own, removed).any()
    index.add(vectors[ids == removed[0]], removed[:1])  # a removed id may come back
    _, again = index.search(vectors[ids == removed[0]], 1)
    assert again[0, 0] == removed[0]
    with pytest.raises(DataError, match="ids.*not in the index"):
        index.remove([123456789])


@pytest.mark.parametrize("kind", sorted(INDEX_KINDS))
def test_fewer_live_items_than_k_gives_fewer_columns(kind, data):
    vectors, ids, queries = data
    index = FirstStageIndex.build(vectors[:40], ids[:40], kind=kind)
    index.remove(ids[:35])
    scores, found = index.search(queries, K)
    assert scores.shape == found.shape == (Q, 5)
    assert (np.sort(found, axis=1) == np.sort(ids[35:40])).all()
    index.remove(ids[35:40])
    scores, found = index.search(queries, K)
    assert scores.shape == found.shape == (Q, 0)


@pytest.mark.parametrize("kind", sorted(INDEX_KINDS))
def test_save_load_round_trip(kind, data, tmp_path):
    vectors, ids, queries = data
    index = build(kind, vectors, ids)
    index.remove(ids[:50])
    scores, found = index.search(queries, K)
    path = index.save(tmp_path / "first.faiss")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.faiss", "first.faiss.ids.npz", "first.faiss.json"]
    header = json.loads((tmp_path / "first.faiss.json").read_text())
    assert (header["kind"], header["dim"], header["count"]) == (kind, D, N - 50)
    loaded = FirstStageIndex.load(path, expected_dim=D)
    assert (loaded.kind, loaded.dim, len(loaded)) == (kind, D, N - 50)
    assert (loaded.ef_search, loaded.nprobe) == (index.ef_search, index.nprobe)
    loaded_scores, loaded_found = loaded.search(queries, K)
    np.testing.assert_array_equal(loaded_found, found)
    np.testing.assert_array_equal(loaded_scores, scores)
    loaded.add(vectors[:1], ids[:1])  # and it stays usable
    assert loaded.search(vectors[:1], 1)[1][0, 0] == ids[0]


def test_load_names_the_file_at_fault(data, tmp_path):
    vectors, ids, _ = data
    path = FirstStageIndex.build(vectors, ids, kind="flat").save(tmp_path / "first.faiss")
    with pytest.raises(DataError, match="dimension 64, expected 128"):
        FirstStageIndex.load(path, expected_dim=128)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"first\.faiss: .*truncated"):
        FirstStageIndex.load(path)
    path.write_bytes(raw)
    ids_file = tmp_path / "first.faiss.ids.npz"
    ids_file.write_bytes(ids_file.read_bytes()[:100])
    with pytest.raises(DataError, match=r"first\.faiss\.ids\.npz"):
        FirstStageIndex.load(path)
    (tmp_path / "first.faiss.json").unlink()
    with pytest.raises(DataError, match=r"first\.faiss\.json: .*missing"):
        FirstStageIndex.load(path)
    with pytest.raises(DataError, match=r"other\.faiss\.json"):
        FirstStageIndex.load(tmp_path / "other.faiss")


def test_load_rejects_files_from_different_saves(data, tmp_path):
    vectors, ids, _ = data
    index = FirstStageIndex.build(vectors, ids, kind="flat")
    path = index.save(tmp_path / "first.faiss")
    stale = (tmp_path / "first.faiss.json").read_text()
    index.remove(ids[:10])
    index.save(path)
    (tmp_path / "first.faiss.json").write_text(stale)  # as if a save died before its header
    with pytest.raises(DataError, match="different saves"):
        FirstStageIndex.load(path)


def test_bad_inputs_name_the_argument(data):
    vectors, ids, queries = data
    index = FirstStageIndex.build(vectors[:100], ids[:100], kind="flat")
    with pytest.raises(DataError, match="'queries'.*dimension 64"):
        index.search(queries[:, :32], K)
    for k in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="k must be"):
            index.search(queries, k)
    bad = vectors[:100].copy()
    bad[3, 0] = np.nan
    with pytest.raises(DataError, match="'vectors'.*row 3.*NaN"):
        FirstStageIndex.build(bad, ids[:100])
    with pytest.raises(DataError, match="'vectors'.*row 0.*zeros"):
        index.add(np.zeros((1, D)), [99999])
    with pytest.raises(DataError, match="'vectors'.*no vectors"):
        FirstStageIndex.build(np.zeros((0, D), dtype=np.float32), np.zeros(0, dtype=np.int64))
    with pytest.raises(DataError, match="'ids'.*expected 100 ids"):
        FirstStageIndex.build(vectors[:100], ids[:99])
    with pytest.raises(DataError, match="'ids'.*more than once"):
        FirstStageIndex.build(vectors[:2], [5, 5])
    with pytest.raises(ConfigError, match="unknown index kind 'annoy'"):
        FirstStageIndex.build(vectors[:100], ids[:100], kind="annoy")
    with pytest.raises(ConfigError, match="nprobe"):
        index.nprobe = 0


def test_choose_kind_thresholds():
    assert choose_kind(0) == "flat"
    assert choose_kind(49_999) == "flat"
    assert choose_kind(50_000) == "ivf"  # HNSW takes too long to build on a few cores
    assert choose_kind(10**6) == "ivf"
    assert choose_kind(10, exact_below=10) == "ivf"
    assert choose_kind(10**6, exact_below=10**7) == "flat"
    with pytest.raises(ConfigError):
        choose_kind(-1)


def test_auto_kind_follows_choose_kind(data):
    vectors, ids, _ = data
    assert FirstStageIndex.build(vectors[:100], ids[:100]).kind == "flat"
    assert FirstStageIndex.build(vectors[:100], ids[:100], exact_below=50).kind == "ivf"


def test_missing_faiss_says_how_to_install(monkeypatch):
    import sys

    from scan.errors import MissingDependencyError
    from scan.search import first_stage

    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'scan\[search\]' \(faiss-cpu\)"):
        first_stage.FirstStageIndex.build(np.ones((3, 4)), [1, 2, 3], kind="flat")


def test_short_rows_are_searched_again_wider(data):
    vectors, ids, queries = data
    index = FirstStageIndex.build(vectors, ids, kind="ivf", nprobe=1)  # one cell holds ~40 items
    scores, found = index.search(queries, 200)
    assert found.shape == (Q, 200) and (found >= 0).all()
    assert all(np.unique(row).size == 200 for row in found)
    assert (np.diff(scores, axis=1) <= 1e-6).all()


def test_ivf_trains_on_a_fixed_sample_of_at_most_its_budget(data, monkeypatch):
    from scan.search import first_stage

    vectors, ids, queries = data
    sample = first_stage._training_sample(vectors, 300)
    assert sample.shape == (300, D)
    np.testing.assert_array_equal(sample, first_stage._training_sample(vectors, 300))  # same seed, same sample
    assert first_stage._training_sample(vectors, N) is vectors
    monkeypatch.setattr(first_stage, "IVF_TRAIN_PER_LIST", 10)  # 51 lists: 510 of the 2000 vectors
    index = FirstStageIndex.build(vectors, ids, kind="ivf", nprobe=40)
    assert recall(index.search(queries, K)[1], brute_force(vectors, ids, queries, K)[1]) >= MIN_RECALL["ivf"]
