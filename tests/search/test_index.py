"""The photo index: build from a folder, add, remove, search both ways, repair, and refuse bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")

from photo_models import NUM_PHOTOS, make_photo_folder, make_photo_model
from scan.errors import ConfigError, DataError, ModelMismatchError
from scan.search.first_stage import FirstStageIndex
from scan.search.index import IMAGE_INDEX_FILE, MANIFEST_FILE, STORE_FOLDER, Index


@pytest.fixture(scope="module")
def built_once(photo_model, flickr_records, feature_cache, tmp_path_factory) -> Path:
    """One index of the 12 photos and their 60 captions, built once for the module."""
    folder = tmp_path_factory.mktemp("built")
    photos = make_photo_folder(flickr_records, folder)
    Index.build(
        photo_model,
        photos,
        folder / "photos.index",
        captions=folder / "captions.txt",
        cache=feature_cache,
        progress=False,
        workers=1,
    )
    return folder


@pytest.fixture
def built(built_once, tmp_path) -> Index:
    """A copy of the built index (and its photos) that a test may change."""
    shutil.copytree(built_once, tmp_path / "built")
    return Index.open(tmp_path / "built" / "photos.index")


def test_build_indexes_every_photo_recursively_with_relative_paths(built):
    photos = built.folder.parent / "photos"
    assert len(built) == NUM_PHOTOS
    assert len(built.captions) == 5 * NUM_PHOTOS
    recorded = sorted(built.store.item(i)["path"] for i in built.store.ids())
    expected = sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*.jpg"))
    assert recorded == expected
    assert any(path.startswith("more/") for path in recorded)
    for i in built.store.ids():
        assert built.photo_path(i).is_file()


def test_search_returns_k_photos_and_equals_exhaustive_when_the_shortlist_is_everything(built):
    query = "a dog runs through the grass"
    two_stage = built.search(query, k=5, shortlist=NUM_PHOTOS)
    exhaustive = built.search(query, k=5, exhaustive=True)
    assert len(two_stage) == 5
    assert [h.id for h in two_stage] == [h.id for h in exhaustive]
    np.testing.assert_allclose([h.score for h in two_stage], [h.score for h in exhaustive], rtol=1e-5, atol=1e-6)
    assert all(h.first_stage_score is not None for h in two_stage)
    assert [h.score for h in two_stage] == sorted((h.score for h in two_stage), reverse=True)


def test_image_to_text_search_ranks_captions_and_equals_exhaustive(built, feature_cache):
    photo = next((built.folder.parent / "photos").glob("*.jpg"))
    hits = built.search_image(photo, k=7, shortlist=5 * NUM_PHOTOS, cache=feature_cache)
    exhaustive = built.search_image(photo, k=7, exhaustive=True, cache=feature_cache)
    assert len(hits) == 7
    assert [h.id for h in hits] == [h.id for h in exhaustive]
    np.testing.assert_allclose([h.score for h in hits], [h.score for h in exhaustive], rtol=1e-5, atol=1e-6)
    assert all(h.text and h.source.endswith(".jpg") for h in hits)


def test_reopening_finds_the_same_results(built):
    before = built.search("two people", k=3)
    again = Index.open(built.folder)
    assert again.repaired == 0
    assert [h.id for h in again.search("two people", k=3)] == [h.id for h in before]


def test_adding_again_skips_photos_already_in_by_content(built, feature_cache):
    photos = built.folder.parent / "photos"
    copy = photos / "copy-of-a-photo.jpg"
    shutil.copyfile(next(photos.glob("*.jpg")), copy)
    summary = built.add_photos(photos, cache=feature_cache, progress=False, workers=1)
    assert summary.added == 0
    assert summary.already == NUM_PHOTOS + 1
    assert summary.extracted == 0
    assert len(built) == NUM_PHOTOS


def test_the_feature_cache_spares_a_second_index_any_extraction(
    photo_model, photos, feature_cache, built_once, tmp_path
):
    index = Index.create(tmp_path / "second.index", __import__("scan").load_model(photo_model), photos_root=photos)
    summary = index.add_photos(photos, cache=feature_cache, progress=False, workers=1)
    assert summary.added == NUM_PHOTOS and summary.extracted == 0


def test_remove_takes_a_photo_out_of_both_stages(built):
    victim = built.store.item(built.store.ids()[0])["path"]
    assert built.remove([victim]) == 1
    assert len(built) == NUM_PHOTOS - 1
    reopened = Index.open(built.folder)
    assert reopened.repaired == 0
    paths = {reopened.store.item(h.id)["path"] for h in reopened.search("a dog", k=NUM_PHOTOS - 1)}
    assert victim not in paths


def test_removing_an_unknown_photo_is_an_error_and_removes_nothing(built):
    known = built.store.item(built.store.ids()[0])["path"]
    with pytest.raises(DataError, match="not in the index"):
        built.remove([known, "no/such/photo.jpg"])
    assert len(Index.open(built.folder)) == NUM_PHOTOS


def test_a_lost_first_stage_is_rebuilt_from_the_store_on_open(built):
    for path in FirstStageIndex.files(built.folder / IMAGE_INDEX_FILE):
        path.unlink()
    reopened = Index.open(built.folder)
    assert reopened.repaired == NUM_PHOTOS
    assert len(reopened.search("a dog", k=3)) == 3


def test_an_unreadable_photo_is_left_out_by_name_and_the_rest_indexed(photo_model, photos, feature_cache, tmp_path):
    bad = photos / "truncated.jpg"
    bad.write_bytes(next(photos.glob("*.jpg")).read_bytes()[:300])
    index = Index.build(photo_model, photos, tmp_path / "x.index", cache=feature_cache, progress=False, workers=1)
    assert len(index) == NUM_PHOTOS
    summary = index.add_photos(photos, cache=feature_cache, progress=False, workers=1)
    assert [Path(p).name for p, _ in summary.failed] == ["truncated.jpg"]
    assert "truncated.jpg" in summary.failed[0][1]


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("query", "k", "message"),
    [
        ("", 5, "non-empty"),
        ("   ", 5, "non-empty"),
        ("zzyzx qwxv", 5, "unknown"),
        ("a dog", 0, "positive integer"),
        ("a dog", -3, "positive integer"),
        ("a dog", NUM_PHOTOS + 1, "larger than the collection"),
    ],
)
def test_bad_queries_are_clear_errors(built, query, k, message):
    with pytest.raises(ConfigError, match=message):
        built.search(query, k=k)
    assert len(Index.open(built.folder).search("a dog", k=2)) == 2  # nothing lost


def test_an_unreadable_query_photo_is_a_clear_error(built, tmp_path, feature_cache):
    bad = tmp_path / "query.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match="query.jpg"):
        built.search_image(bad, k=3, cache=feature_cache)
    with pytest.raises(DataError, match="no such photo"):
        built.search_image(tmp_path / "missing.jpg", k=3, cache=feature_cache)


def test_another_model_is_refused(built, flickr_records, tmp_path):
    captions = [c for r in flickr_records for c in r.captions]
    other = make_photo_model(tmp_path / "other-model", captions, seed=1)
    with pytest.raises(ModelMismatchError, match="other weights"):
        Index.open(built.folder, model=other)


def test_a_missing_or_corrupt_store_shard_is_named(built):
    shard = sorted((built.folder / STORE_FOLDER).glob("shard-*.npy"))[0]
    saved = shard.read_bytes()
    shard.write_bytes(saved[: len(saved) // 2])
    with pytest.raises(DataError, match=shard.name):
        Index.open(built.folder)
    shard.unlink()
    with pytest.raises(DataError, match=shard.name):
        Index.open(built.folder)
    shard.write_bytes(saved)
    assert len(Index.open(built.folder)) == NUM_PHOTOS  # nothing else was touched


def test_not_an_index_and_a_corrupt_manifest_are_named(built, tmp_path):
    with pytest.raises(DataError, match="not an index"):
        Index.open(tmp_path)
    (built.folder / MANIFEST_FILE).write_text("{ not json", encoding="utf-8")
    with pytest.raises(DataError, match=MANIFEST_FILE):
        Index.open(built.folder)


def test_build_refuses_a_folder_that_is_not_empty(photo_model, photos, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(DataError, match="not an empty folder"):
        Index.build(photo_model, photos, out, progress=False)
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"


def test_info_reports_what_the_index_holds(built):
    info = built.info()
    assert info["photos"] == NUM_PHOTOS and info["captions"] == 5 * NUM_PHOTOS
    assert info["first_stage"] == "flat"
    assert json.loads(json.dumps(info))  # printable as JSON


def test_search_many_equals_one_search_per_query(built):
    queries = ["a dog runs through the grass", "two people", "a girl in a pink dress"]
    together = built.search_many(queries, k=4, shortlist=6)
    assert [[h.id for h in hits] for hits in together] == [
        [h.id for h in built.search(q, k=4, shortlist=6)] for q in queries
    ]
    with pytest.raises(ConfigError, match="unknown"):
        built.search_many(["a dog", "zzqx qqzv"], k=2)


def test_explain_is_the_attention_the_score_pools(built):
    item = built.store.ids()[2]
    seen = built.explain("a dog runs", item)
    assert seen.words[0] == "<start>" and seen.words[-1] == "<end>"
    assert seen.weights.shape == (len(seen.words), built.store.num_regions)
    np.testing.assert_allclose(seen.weights.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(seen.boxes, built.store.boxes([item])[0])
    exhaustive = {h.id: h.score for h in built.search("a dog runs", k=NUM_PHOTOS, exhaustive=True)}
    assert seen.score == pytest.approx(exhaustive[item], rel=1e-5)


def test_encoded_region_vectors_are_added_as_they_are(built, tmp_path):
    model = built.model
    copy = Index.create(tmp_path / "encoded.index", model)
    ids = built.store.ids()[:5]
    regions = np.asarray(built.store.vectors(ids), dtype=np.float32)  # (5, R, D): already encoded
    paths = [built.store.item(i)["path"] for i in ids]
    hashes = [built.store.item(i)["sha256"] for i in ids]
    added = copy.add_features(regions, built.store.boxes(ids), paths, hashes, encoded=True)
    assert len(added) == 5
    np.testing.assert_array_equal(np.asarray(copy.store.vectors(added)), np.asarray(built.store.vectors(ids)))
    with pytest.raises(DataError, match="encoded region vectors"):
        copy.add_features(regions[..., :3], None, ["x.jpg"] * 5, ["0" * 64] * 5, encoded=True)
    reopened = Index.open(tmp_path / "encoded.index")
    assert len(reopened) == 5 and reopened.repaired == 0
