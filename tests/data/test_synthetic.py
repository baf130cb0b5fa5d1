"""The synthetic data set: layout, determinism, and captions that describe their image."""

from __future__ import annotations

import filecmp
from pathlib import Path

import numpy as np
import pytest

from scan.data.precomp import PrecompSplit
from scan.data.synthetic import COLOURS, OBJECTS, write_synthetic_precomp
from scan.data.tokenize import tokenize
from scan.data.vocab import UNK_ID, load_vocabulary

SIZES = {"num_train": 30, "num_dev": 6, "num_test": 8}
FILES = [
    *sorted(
        f"{split}_{suffix}"
        for split in ("train", "dev", "test")
        for suffix in ("ims.npy", "caps.txt", "boxes.npy", "ids.txt")
    ),
    "vocab.json",
]


def _objects_of(caption: str) -> set[str]:
    return set(tokenize(caption)) & set(OBJECTS)


def test_layout_loads_with_precomp_split(tmp_path: Path) -> None:
    write_synthetic_precomp(tmp_path, **SIZES, regions=5, feature_dim=12)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)
    vocab = load_vocabulary(tmp_path / "vocab.json")
    for split_name, size in zip(("train", "dev", "test"), SIZES.values(), strict=False):
        split = PrecompSplit.open(tmp_path, split_name)
        assert (split.num_images, split.num_captions) == (size, 5 * size)
        assert (split.num_regions, split.feature_dim) == (5, 12)
        assert split.captions_per_image == 5 and not split.repeated
        assert split.features.dtype == np.float32
        assert split.image_ids == [f"synthetic_{split_name}_{i:05d}" for i in range(size)]
        boxes = np.asarray(split.boxes)  # (N, R, 4)
        assert boxes.shape == (size, 5, 4)
        assert (boxes[..., 2:] > boxes[..., :2]).all() and (boxes >= 0).all()
        assert np.isfinite(np.asarray(split.features)).all()
        # threshold 1 on train: every train word is known, and dev/test share its words
        rate = vocab.unknown_rate(split.captions)
        assert rate == 0.0 if split_name == "train" else rate < 0.05
    train = PrecompSplit.open(tmp_path, "train")
    assert all(UNK_ID not in vocab.encode(c) for c in train.captions)


def test_captions_of_an_image_share_its_objects(tmp_path: Path) -> None:
    write_synthetic_precomp(tmp_path, **SIZES, concepts=10, concepts_per_image=3)
    split = PrecompSplit.open(tmp_path, "train")
    object_sets = []
    for i in range(split.num_images):
        captions = split.captions[5 * i : 5 * i + 5]
        objects = [_objects_of(c) for c in captions]
        assert all(o == objects[0] for o in objects), captions  # same objects, 5 times
        assert len(objects[0]) == 3 and objects[0] <= set(OBJECTS[:10])
        assert len(set(captions)) > 1  # but worded differently
        object_sets.append(frozenset(objects[0]))
    assert len(set(object_sets)) > split.num_images // 2  # images differ from each other
    words = {w for c in split.captions for w in tokenize(c)}
    assert words & set(COLOURS)  # colours are mentioned some of the time


def test_regions_carry_the_objects(tmp_path: Path) -> None:
    """Images that share an object have a pair of close regions, images that share none do not,
    so the matching is learnable from region features. Distractor regions are left out here
    (regions == objects per image) because two images' distractors may coincide."""
    write_synthetic_precomp(tmp_path, num_train=60, num_dev=1, num_test=1, concepts=6,
                            concepts_per_image=2, regions=2, noise=0.3)  # fmt: skip
    split = PrecompSplit.open(tmp_path, "train")
    objects = [_objects_of(split.captions[5 * i]) for i in range(split.num_images)]
    features = np.asarray(split.features)  # (N, R, F)
    shared, disjoint = [], []
    for a in range(split.num_images):
        for b in range(a + 1, split.num_images):
            gaps = np.linalg.norm(features[a][:, None] - features[b][None], axis=-1)  # (R, R)
            (shared if objects[a] & objects[b] else disjoint).append(gaps.min())
    assert len(shared) > 100 and len(disjoint) > 100
    assert np.percentile(shared, 90) < np.percentile(disjoint, 10)


def test_same_seed_same_files_and_splits_are_independent(tmp_path: Path) -> None:
    write_synthetic_precomp(tmp_path / "a", **SIZES, seed=3)
    write_synthetic_precomp(tmp_path / "b", **SIZES, seed=3)
    write_synthetic_precomp(tmp_path / "c", **SIZES, seed=4)
    write_synthetic_precomp(tmp_path / "d", **{**SIZES, "num_train": 12}, seed=3)
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", FILES,
                                               shallow=False)  # fmt: skip
    assert match == FILES and not mismatch and not errors
    for name in ("test_ims.npy", "test_caps.txt", "train_caps.txt"):
        assert not filecmp.cmp(tmp_path / "a" / name, tmp_path / "c" / name, shallow=False)
    for name in ("test_ims.npy", "test_caps.txt", "dev_ims.npy"):  # train size does not matter
        assert filecmp.cmp(tmp_path / "a" / name, tmp_path / "d" / name, shallow=False)


def test_rejects_impossible_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="concepts must be"):
        write_synthetic_precomp(tmp_path, concepts=len(OBJECTS) + 1)
    with pytest.raises(ValueError, match="concepts_per_image"):
        write_synthetic_precomp(tmp_path, regions=2, concepts_per_image=3)
    with pytest.raises(ValueError, match="at least one image"):
        write_synthetic_precomp(tmp_path, num_dev=0)
