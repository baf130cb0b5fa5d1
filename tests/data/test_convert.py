"""`scan convert`: float16 features at half the size, equal to a cast, streamed and atomic."""

from __future__ import annotations

import numpy as np
import pytest

from scan.cli.main import main
from scan.data.convert import convert_features
from scan.data.precomp import PrecompSplit
from scan.errors import DataError


def test_float16_halves_the_features_and_equals_a_cast(synthetic_data, tmp_path, capsys):
    assert main(["convert", str(synthetic_data), "--dtype", "float16", "--out", str(tmp_path / "f16")]) == 0
    for split in ("train", "dev", "test"):
        before = np.load(synthetic_data / f"{split}_ims.npy")
        after = np.load(tmp_path / "f16" / f"{split}_ims.npy")
        assert after.dtype == np.float16 and np.array_equal(after, before.astype(np.float16))
        assert (tmp_path / "f16" / f"{split}_ims.npy").stat().st_size < 0.51 * (
            synthetic_data / f"{split}_ims.npy"
        ).stat().st_size
        assert (tmp_path / "f16" / f"{split}_caps.txt").read_bytes() == (
            synthetic_data / f"{split}_caps.txt"
        ).read_bytes()
    split = PrecompSplit.open(tmp_path / "f16", "dev")  # the reader takes float16 as it is
    assert split.image_features(0).dtype == np.float32


def test_blocks_cover_every_row_and_in_place_replaces_the_file(tmp_path, monkeypatch):
    import scan.data.convert as convert

    monkeypatch.setattr(convert, "BLOCK_BYTES", 1000)  # many small blocks, a partial last one
    features = np.random.default_rng(0).standard_normal((37, 3, 8)).astype(np.float32)
    np.save(tmp_path / "train_ims.npy", features)
    convert_features(tmp_path, None, "float16", progress=False)
    assert np.array_equal(np.load(tmp_path / "train_ims.npy"), features.astype(np.float16))
    assert [p.name for p in tmp_path.iterdir()] == ["train_ims.npy"]  # no temporary left


def test_a_value_float16_cannot_hold_is_named_and_nothing_is_replaced(tmp_path):
    features = np.zeros((5, 2, 4), dtype=np.float32)
    features[3, 1, 2] = 1e6
    np.save(tmp_path / "train_ims.npy", features)
    with pytest.raises(DataError, match=r"train_ims.npy.*row 3 holds a value"):
        convert_features(tmp_path, None, "float16", progress=False)
    assert np.load(tmp_path / "train_ims.npy").dtype == np.float32
    assert [p.name for p in tmp_path.iterdir()] == ["train_ims.npy"]


def test_out_or_in_place_must_be_said(synthetic_data, capsys):
    assert main(["convert", str(synthetic_data), "--dtype", "float16"]) == 2
    assert "--in-place" in capsys.readouterr().err
