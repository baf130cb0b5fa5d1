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
    assert all(isinstance(a, np.memmap) for a in reopened._arrays)
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
    assert names == [".lock", "manifest.json", "shard-00000.npy", "shard-00001.npy"]
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
