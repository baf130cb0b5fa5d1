from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from scan.errors import DataError, FolderBusyError, ScanError
from scan.search import RegionStore, StoreError
from scan.search import store as store_module

R, D = 4, 8


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def batch(names: list[str], seed: int = 0) -> tuple[np.ndarray, list[str], list[str]]:
    vectors = np.random.default_rng(seed).standard_normal((len(names), R, D)).astype(np.float32)  # (n, R, D)
    return vectors, [f"photos/{n}.jpg" for n in names], [sha(n) for n in names]


def new_store(folder: Path) -> RegionStore:
    return RegionStore.create(folder, num_regions=R, dim=D, model_fingerprint="scan-test-v1")


def test_round_trip_keeps_vectors_and_ids(tmp_path):
    store = new_store(tmp_path / "index")
    v1, p1, h1 = batch(["a", "b", "c"], seed=1)
    v2, p2, h2 = batch(["d", "e"], seed=2)
    boxes = np.random.default_rng(3).random((2, R, 4)).astype(np.float32)
    ids1 = store.append(v1, p1, h1)
    ids2 = store.append(v2, p2, h2, boxes=boxes)
    assert ids1 == [0, 1, 2] and ids2 == [3, 4]

    reopened = RegionStore.open(tmp_path / "index")
    assert reopened.ids() == [0, 1, 2, 3, 4] and len(reopened) == 5
    assert reopened.model_fingerprint == "scan-test-v1"
    assert (reopened.num_regions, reopened.dim) == (R, D)
    got = reopened.vectors([4, 0, 2])
    assert got.dtype == np.float16 and got.shape == (3, R, D)
    expected = np.concatenate([v2[1:2], v1[0:1], v1[2:3]]).astype(np.float16)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(reopened.boxes([3, 4]), boxes)
    with pytest.raises(StoreError, match="without boxes"):
        reopened.boxes([0])
    item = reopened.item(3)
    assert item == {"id": 3, "path": "photos/d.jpg", "sha256": sha("d"), "shard": 1, "row": 0, "removed": False}
    assert reopened.has_hash(sha("a")) and not reopened.has_hash(sha("z"))
    assert reopened.bytes_on_disk() >= 5 * R * D * 2
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert [s["file"] for s in manifest["shards"]] == ["shard-00000.npy", "shard-00001.npy"]
    assert reopened.vectors([]).shape == (0, R, D)


def test_vectors_read_from_memory_maps_not_whole_shards(tmp_path):
    store = new_store(tmp_path / "index")
    store.append(*batch(["a", "b", "c"]))
    reopened = RegionStore.open(tmp_path / "index")
    assert all(isinstance(s.vectors, np.memmap) and isinstance(s.items, np.memmap) for s in reopened._shards)
    got = reopened.vectors([1])
    assert not isinstance(got, np.memmap) and got.shape == (1, R, D)


def test_items_already_present_by_hash_are_skipped(tmp_path):
    store = new_store(tmp_path / "index")
    assert store.append(*batch(["a", "b"])) == [0, 1]
    vectors, paths, hashes = batch(["b", "c", "c"], seed=5)
    assert store.append(vectors, paths, hashes) == [2]  # b is present, the second c repeats the first
    assert store.item(2)["path"] == "photos/c.jpg"
    np.testing.assert_array_equal(store.vectors([2]), vectors[1:2].astype(np.float16))
    before = sorted(p.name for p in (tmp_path / "index").iterdir())
    assert store.append(*batch(["a"])) == []  # nothing new: no shard written
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == before


def test_removed_items_stay_removed_after_reopening(tmp_path):
    store = new_store(tmp_path / "index")
    store.append(*batch(["a", "b", "c"]))
    store.remove([1])
    reopened = RegionStore.open(tmp_path / "index")
    assert reopened.ids() == [0, 2] and len(reopened) == 2
    assert reopened.item(1)["removed"] is True
    assert not reopened.has_hash(sha("b"))
    with pytest.raises(StoreError, match="removed"):
        reopened.vectors([1])
    with pytest.raises(StoreError, match="no item with id 9"):
        reopened.remove([9])
    assert reopened.append(*batch(["b"])) == [3]  # a removed item's content may come back, with a new id


def test_create_refuses_an_existing_store_or_a_non_empty_folder(tmp_path):
    new_store(tmp_path / "index")
    with pytest.raises(StoreError, match="already exists"):
        new_store(tmp_path / "index")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not empty"):
        new_store(tmp_path / "other")


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_a_missing_or_truncated_shard_is_named(tmp_path, damage):
    store = new_store(tmp_path / "index")
    store.append(*batch(["a", "b"]))
    store.append(*batch(["c"]))
    shard = tmp_path / "index" / "shard-00001.npy"
    if damage == "delete":
        shard.unlink()
    else:
        shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(DataError, match="shard-00001.npy"):
        RegionStore.open(tmp_path / "index")


def test_a_shard_of_another_shape_is_named(tmp_path):
    store = new_store(tmp_path / "index")
    store.append(*batch(["a", "b"]))
    np.save(tmp_path / "index" / "shard-00000.npy", np.zeros((2, R, D + 1), np.float16))
    with pytest.raises(DataError, match=r"shard-00000.npy.*manifest records"):
        RegionStore.open(tmp_path / "index")


@pytest.mark.parametrize("text", ["{not json", "[]", '{"format": "something-else"}', ""])
def test_a_corrupt_manifest_is_named(tmp_path, text):
    new_store(tmp_path / "index")
    (tmp_path / "index" / "manifest.json").write_text(text)
    with pytest.raises(DataError, match="manifest.json"):
        RegionStore.open(tmp_path / "index")


def test_a_missing_manifest_is_named(tmp_path):
    with pytest.raises(DataError, match="manifest.json"):
        RegionStore.open(tmp_path)


def test_a_kill_before_the_manifest_is_replaced_leaves_the_previous_store(tmp_path, monkeypatch):
    folder = tmp_path / "index"
    store = new_store(folder)
    first, paths, hashes = batch(["a", "b"])
    store.append(first, paths, hashes)

    real_write = store_module.write_text_atomic

    def killed(path, text):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(store_module, "write_text_atomic", killed)
    with pytest.raises(KeyboardInterrupt):
        store.append(*batch(["c", "d"]))
    assert (folder / "shard-00001.npy").exists()  # the shard was written before the kill
    (folder / ".shard-00002.npy.tmp-12345").write_bytes(b"half")  # what a harder kill would leave
    (folder / ".manifest.json.abcd.tmp").write_text("{")
    assert store.ids() == [0, 1]  # the object still holds the previous manifest

    reopened = RegionStore.open(folder)
    assert reopened.ids() == [0, 1]
    np.testing.assert_array_equal(reopened.vectors([0, 1]), first.astype(np.float16))

    monkeypatch.setattr(store_module, "write_text_atomic", real_write)
    assert reopened.append(*batch(["c", "d"], seed=7)) == [2, 3]
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        ".lock",
        "manifest.json",
        "shard-00000.items.npy",
        "shard-00000.npy",
        "shard-00001.items.npy",
        "shard-00001.npy",
    ]
    assert RegionStore.open(folder).ids() == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda v, p, h: (v[:, :, :-1], p, h), "vectors"),
        (lambda v, p, h: (v[:, :-1], p, h), "vectors"),
        (lambda v, p, h: (v[0], p, h), "vectors"),
        (lambda v, p, h: (v[:0], p[:0], h[:0]), "vectors"),
        (lambda v, p, h: (np.where(v > 1, np.nan, v), p, h), "vectors"),
        (lambda v, p, h: (v * 1e6, p, h), "vectors"),
        (lambda v, p, h: (v, p[:-1], h), "paths"),
        (lambda v, p, h: (v, ["/abs/a.jpg", *p[1:]], h), "paths"),
        (lambda v, p, h: (v, p, [*h, "extra"]), "hashes"),
        (lambda v, p, h: (v, p, ["", *h[1:]]), "hashes"),
    ],
)
def test_bad_inputs_are_refused_naming_the_field(tmp_path, change, field):
    store = new_store(tmp_path / "index")
    with pytest.raises(ScanError, match=f"field '{field}'"):
        store.append(*change(*batch(["a", "b", "c"])))
    assert store.ids() == [] and RegionStore.open(tmp_path / "index").ids() == []


def test_boxes_of_the_wrong_shape_are_refused(tmp_path):
    store = new_store(tmp_path / "index")
    with pytest.raises(StoreError, match="field 'boxes'"):
        store.append(*batch(["a"]), boxes=np.zeros((1, R, 3), np.float32))


def test_another_process_holding_the_lock_makes_updates_wait_their_turn(tmp_path, locked_elsewhere):
    store = new_store(tmp_path / "index")
    with locked_elsewhere(tmp_path / "index", "scan index"):
        with pytest.raises(FolderBusyError, match="scan index, pid"):
            store.append(*batch(["a"]))
        with pytest.raises(FolderBusyError):
            store.remove([])
    assert store.append(*batch(["a"])) == [0]  # the lock went with its holder


# ---------------------------------------------------------------------------------- format v2: scale


def test_the_manifest_lists_shards_not_items_and_appends_leave_old_shards_alone(tmp_path):
    folder = tmp_path / "index"
    store = new_store(folder)
    store.append(*batch([f"a{i}" for i in range(50)]))
    size_after_one = (folder / "manifest.json").stat().st_size
    first_files = {p.name: p.read_bytes() for p in folder.iterdir() if p.name.startswith("shard-00000")}
    store.append(*batch([f"b{i}" for i in range(500)], seed=1))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["version"] == store_module.VERSION and "items" not in manifest
    assert [(s["first_id"], s["rows"]) for s in manifest["shards"]] == [(0, 50), (50, 500)]
    assert (folder / "manifest.json").stat().st_size < 2 * size_after_one  # grows by a shard, not by 500 rows
    assert {name: (folder / name).read_bytes() for name in first_files} == first_files
    reopened = RegionStore.open(folder)
    assert len(reopened) == 550 and reopened.item(549)["path"] == "photos/b499.jpg"
    assert reopened.item(50) == {
        "id": 50,
        "path": "photos/b0.jpg",
        "sha256": sha("b0"),
        "shard": 1,
        "row": 0,
        "removed": False,
    }


def test_hashes_are_read_only_when_asked_for(tmp_path):
    store = new_store(tmp_path / "index")
    store.append(*batch(["a", "b"]))
    reopened = RegionStore.open(tmp_path / "index")
    assert reopened._hashes is None  # opening (and searching) never reads them
    reopened.vectors([0, 1])
    reopened.item(1)
    assert reopened._hashes is None
    assert reopened.has_hash(sha("b")) and reopened._hashes is not None
    assert reopened.append(*batch(["b", "c"])) == [2]  # the collected hashes grow with the append
    assert reopened.has_hash(sha("c"))
    reopened.remove([1])
    assert not reopened.has_hash(sha("b")) and reopened.has_hash(sha("a"))


def test_unicode_paths_and_long_hashes_round_trip(tmp_path):
    store = new_store(tmp_path / "index")
    vectors = np.zeros((2, R, D), np.float32)
    store.append(vectors, ["fotos/Ærø 北京.jpg", "x.jpg"], ["h" * 100, "k"])
    reopened = RegionStore.open(tmp_path / "index")
    assert reopened.item(0)["path"] == "fotos/Ærø 北京.jpg" and reopened.item(1)["sha256"] == "k"
    assert reopened.has_hash("h" * 100) and not reopened.has_hash("h")


def test_removal_writes_a_new_bitmap_and_the_old_one_goes_at_the_next_update(tmp_path, monkeypatch):
    folder = tmp_path / "index"
    store = new_store(folder)
    store.append(*batch(["a", "b", "c"]))
    store.append(*batch(["d", "e"]))
    store.remove([1])
    assert (folder / "shard-00000.removed-1.npy").exists()
    store.remove([0, 1, 4])
    assert RegionStore.open(folder).ids() == [2, 3]
    assert (folder / "shard-00000.removed-2.npy").exists() and (folder / "shard-00001.removed-1.npy").exists()

    real_write = store_module.write_text_atomic
    monkeypatch.setattr(store_module, "write_text_atomic", lambda path, text: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        store.remove([2])  # killed before the manifest: the removal did not happen
    assert RegionStore.open(folder).ids() == [2, 3]
    monkeypatch.setattr(store_module, "write_text_atomic", real_write)
    store.remove([3])
    names = sorted(p.name for p in folder.iterdir() if "removed" in p.name)
    # the killed removal's bitmap went before this one; the one this removal superseded goes at the next update
    assert names == ["shard-00000.removed-2.npy", "shard-00001.removed-1.npy", "shard-00001.removed-2.npy"]
    store.append(*batch(["f"]))
    names = sorted(p.name for p in folder.iterdir() if "removed" in p.name)
    assert names == ["shard-00000.removed-2.npy", "shard-00001.removed-2.npy"]
    assert RegionStore.open(folder).ids() == [2, 5]


@pytest.mark.parametrize(("name", "damage"), [("shard-00001.items.npy", "delete"), ("shard-00001.items.npy", "cut")])
def test_a_missing_or_truncated_item_table_is_named(tmp_path, name, damage):
    store = new_store(tmp_path / "index")
    store.append(*batch(["a", "b"]))
    store.append(*batch(["c"]))
    path = tmp_path / "index" / name
    if damage == "delete":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(StoreError, match=r"shard-00001\.items\.npy"):
        RegionStore.open(tmp_path / "index")


def test_a_damaged_removal_bitmap_is_named(tmp_path):
    store = new_store(tmp_path / "index")
    store.append(*batch(["a", "b", "c"]))
    store.remove([1])
    np.save(tmp_path / "index" / "shard-00000.removed-1.npy", np.ones(3, dtype=bool))
    with pytest.raises(StoreError, match=r"shard-00000\.removed-1\.npy.*marks 3 items removed"):
        RegionStore.open(tmp_path / "index")


def test_a_store_of_the_first_format_is_refused_with_its_version(tmp_path):
    store = new_store(tmp_path / "index")
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    (tmp_path / "index" / "manifest.json").write_text(json.dumps({**manifest, "version": 1}))
    with pytest.raises(StoreError, match=r"manifest\.json: unsupported version 1, expected 2"):
        RegionStore.open(store.folder)


# ---------------------------------------------------------------------------------- product quantisation

PQ_R, PQ_D, PQ_M = 4, 16, 4
PQ_ITEMS = -(-store_module.PQ_MIN_TRAIN // PQ_R)  # just enough to train


def clustered(count: int, seed: int, names: str = "p") -> tuple[np.ndarray, list[str], list[str]]:
    """Region vectors near 16 shared centres: the structure a quantiser learns, as real features have."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).standard_normal((16, PQ_D)).astype(np.float32)  # (16, D), every call
    vectors = centres[rng.integers(0, 16, (count, PQ_R))] + 0.05 * rng.standard_normal((count, PQ_R, PQ_D))
    labels = [f"{names}{i}" for i in range(count)]
    return vectors.astype(np.float32), [f"photos/{n}.jpg" for n in labels], [sha(n) for n in labels]


def pq_store(folder: Path) -> RegionStore:
    return RegionStore.create(
        folder, num_regions=PQ_R, dim=PQ_D, model_fingerprint="scan-test-v1", codec="pq", pq_subquantizers=PQ_M
    )


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got.astype(np.float32) - want) / np.linalg.norm(want))


def test_pq_round_trip_is_close_and_survives_reopening(tmp_path):
    faiss = pytest.importorskip("faiss")
    folder = tmp_path / "index"
    store = pq_store(folder)
    vectors, paths, hashes = clustered(PQ_ITEMS, seed=1)
    assert store.append(vectors, paths, hashes) == list(range(PQ_ITEMS))
    got = store.vectors(range(PQ_ITEMS))
    assert got.dtype == np.float16 and got.shape == (PQ_ITEMS, PQ_R, PQ_D)
    assert relative_error(got, vectors) < 0.05
    shard = np.load(folder / "shard-00000.npy")
    assert shard.dtype == np.uint8 and shard.shape == (PQ_ITEMS, PQ_R, PQ_M)  # M bytes per region
    centroids = np.load(folder / "quantizer.npy")
    pq = faiss.ProductQuantizer(PQ_D, PQ_M, 8)
    faiss.copy_array_to_vector(centroids.ravel(), pq.centroids)
    np.testing.assert_allclose(
        got[:5].astype(np.float32), pq.decode(shard[:5].reshape(-1, PQ_M)).reshape(5, PQ_R, PQ_D), atol=1e-2
    )

    reopened = RegionStore.open(folder)
    assert reopened.codec == "pq"
    np.testing.assert_array_equal(reopened.vectors([3, 0]), got[[3, 0]])
    assert reopened.bytes_on_disk() < PQ_ITEMS * PQ_R * PQ_D * 2  # smaller than float16


def test_pq_appends_after_reopening_use_the_same_quantizer(tmp_path):
    pytest.importorskip("faiss")
    folder = tmp_path / "index"
    vectors, paths, hashes = clustered(PQ_ITEMS, seed=1)
    pq_store(folder).append(vectors, paths, hashes)
    quantizer = (folder / "quantizer.npy").read_bytes()
    reopened = RegionStore.open(folder)
    more, more_paths, more_hashes = clustered(10, seed=2, names="q")  # far too few to train: not needed
    ids = reopened.append(np.concatenate([vectors[:3], more]), [*paths[:3], *more_paths], [*hashes[:3], *more_hashes])
    assert ids == list(range(PQ_ITEMS, PQ_ITEMS + 10))  # the first three are there already
    assert (folder / "quantizer.npy").read_bytes() == quantizer
    assert relative_error(reopened.vectors(ids), more) < 0.05
    again = RegionStore.open(folder)
    again.append(vectors[:3] + 0, ["x/0.jpg", "x/1.jpg", "x/2.jpg"], ["n0", "n1", "n2"])  # same vectors, new items
    np.testing.assert_array_equal(np.load(folder / "shard-00002.npy"), np.load(folder / "shard-00000.npy")[:3])
    again.remove([0, PQ_ITEMS])
    assert RegionStore.open(folder).ids()[:2] == [1, 2] and PQ_ITEMS not in RegionStore.open(folder).ids()
    with pytest.raises(StoreError, match="removed"):
        RegionStore.open(folder).vectors([0])


def test_pq_needs_enough_vectors_to_train(tmp_path):
    pytest.importorskip("faiss")
    store = pq_store(tmp_path / "index")
    needed = store_module.PQ_MIN_TRAIN
    with pytest.raises(StoreError, match=rf"field 'vectors'.*at least {needed} region vectors \({PQ_ITEMS} items"):
        store.append(*clustered(100, seed=1))
    assert RegionStore.open(tmp_path / "index").ids() == []
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == [".lock", "manifest.json"]


def test_a_corrupt_or_missing_quantizer_is_named(tmp_path):
    pytest.importorskip("faiss")
    folder = tmp_path / "index"
    pq_store(folder).append(*clustered(PQ_ITEMS, seed=1))
    path = folder / "quantizer.npy"
    raw = bytearray(path.read_bytes())
    raw[-7] ^= 0xFF  # one flipped byte in a centroid
    path.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match=r"quantizer\.npy: corrupt quantizer"):
        RegionStore.open(folder)
    path.unlink()
    with pytest.raises(StoreError, match=r"quantizer\.npy: quantizer file is missing"):
        RegionStore.open(folder)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"codec": "pq", "pq_subquantizers": 5}, "field 'pq_subquantizers': must be a positive divisor of D = 16"),
        ({"codec": "zip"}, "field 'codec'"),
        ({"pq_subquantizers": 4}, "field 'pq_subquantizers': applies to codec \"pq\" only"),
    ],
)
def test_bad_codec_options_are_refused(tmp_path, options, message):
    with pytest.raises(StoreError, match=message):
        RegionStore.create(tmp_path / "index", num_regions=PQ_R, dim=PQ_D, model_fingerprint="fp", **options)


def test_pq_defaults_to_sub_vectors_of_eight(tmp_path):
    store = RegionStore.create(tmp_path / "index", num_regions=2, dim=256, model_fingerprint="fp", codec="pq")
    assert store._manifest["pq"]["subquantizers"] == 32
