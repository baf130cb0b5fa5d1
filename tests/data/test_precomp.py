"""PrecompSplit: the layouts it accepts, its index maps, and every error it reports."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from scan.data.precomp import PrecompSplit, read_lines
from scan.errors import DataError

N, R, F = 4, 3, 6  # images, regions, feature dims


def _features(rows: int, dtype: type = np.float32) -> np.ndarray:
    """Row r is filled with r + region / 10, so a read shows which row it came from."""
    values = np.arange(rows)[:, None, None] + np.arange(R)[None, :, None] / 10.0
    return np.broadcast_to(values, (rows, R, F)).astype(dtype)  # (rows, R, F)


def _write(
    folder: Path,
    *,
    split: str = "test",
    features: np.ndarray | None = None,
    captions: list[str] | None = None,
    text: str | None = None,
) -> Path:
    """Write a split; by default N images with 5 captions each, trailing newline included."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{split}_ims.npy", _features(N) if features is None else features)
    if text is None:
        captions = captions or [f"image {k // 5} caption {k % 5}" for k in range(5 * N)]
        text = "\n".join(captions) + "\n"
    (folder / f"{split}_caps.txt").write_text(text, encoding="utf-8")
    return folder


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_open_standard_layout(tmp_path: Path, dtype: type) -> None:
    split = PrecompSplit.open(_write(tmp_path, features=_features(N, dtype)), "test")
    assert (split.num_images, split.num_captions, split.num_regions, split.feature_dim) == (
        N, 5 * N, R, F,
    )  # fmt: skip
    assert split.captions_per_image == 5 and not split.repeated
    assert isinstance(split.features, np.memmap)  # mapped, not read
    assert split.features.dtype == dtype
    assert split.boxes is None and split.image_ids is None
    assert split.captions[7] == "image 1 caption 2"
    assert [split.image_of_caption(k) for k in (0, 4, 5, 19)] == [0, 0, 1, 3]
    assert split.feature_row_of_caption(7) == 1
    np.testing.assert_array_equal(split.image_of_each_caption(), np.repeat(np.arange(N), 5))
    regions = split.image_features(2)
    assert regions.dtype == np.float32 and regions.shape == (R, F)
    np.testing.assert_allclose(regions, _features(N)[2], atol=1e-3)
    regions[:] = -1  # a copy: the memmap is read-only and untouched
    assert split.image_features(2)[0, 0] == 2.0
    with pytest.raises(IndexError):
        split.image_features(N)
    with pytest.raises(IndexError):
        split.image_of_caption(5 * N)
    assert "4 images" in repr(split)


def test_repeated_per_caption_layout(tmp_path: Path) -> None:
    repeated = np.repeat(_features(N), 5, axis=0)  # (5N, R, F), row k for caption k
    split = PrecompSplit.open(_write(tmp_path, features=repeated), "test")
    assert split.repeated and split.captions_per_image == 5
    assert split.num_images == N and split.num_captions == 5 * N
    assert split.image_of_caption(13) == 2
    assert split.feature_row_of_caption(13) == 13
    assert split.feature_row_of_image(2) == 10  # unique images are rows 0, 5, 10, ...
    np.testing.assert_array_equal(split.image_features(3), _features(N)[3])
    boxes = np.arange(5 * N * R * 4, dtype=np.float32).reshape(5 * N, R, 4)  # repeated too
    np.save(tmp_path / "test_boxes.npy", boxes)
    np.testing.assert_array_equal(PrecompSplit.open(tmp_path, "test").image_boxes(2), boxes[10])


def test_explicit_captions_per_image(tmp_path: Path) -> None:
    _write(tmp_path, features=_features(N), captions=[f"caption {k}" for k in range(N)])
    with pytest.raises(DataError, match="captions_per_image=1"):
        PrecompSplit.open(tmp_path, "test")  # 4 == 4 rows looks repeated, but 4 % 5 != 0
    split = PrecompSplit.open(tmp_path, "test", captions_per_image=1)
    assert not split.repeated and split.num_images == N and split.image_of_caption(3) == 3
    with pytest.raises(DataError, match="does not fit 3 captions per image"):
        PrecompSplit.open(tmp_path, "test", captions_per_image=3)
    two = _write(tmp_path / "two", features=_features(N), captions=[f"c {k}" for k in range(2 * N)])
    assert PrecompSplit.open(two, "test", captions_per_image=2).captions_per_image == 2


def test_only_five_captions_per_image_are_inferred(tmp_path: Path) -> None:
    # 7 captions per image is a multiple, but far more likely a wrong captions file than a layout.
    _write(tmp_path, captions=[f"c {k}" for k in range(7 * N)])
    message = _error(tmp_path)
    assert f"{N} feature rows" in message and f"{7 * N} captions" in message
    assert f"expected {5 * N}" in message and "captions_per_image=7" in message
    assert PrecompSplit.open(tmp_path, "test", captions_per_image=7).num_images == N


def test_captions_file_endings(tmp_path: Path) -> None:
    captions = [f"caption {k}" for k in range(5 * N)]
    no_newline = PrecompSplit.open(
        _write(tmp_path / "a", text="\n".join(captions)), "test"
    )  # last line without newline
    windows = PrecompSplit.open(_write(tmp_path / "b", text="\r\n".join(captions) + "\r\n"), "test")
    assert no_newline.captions == windows.captions == captions


def test_boxes_and_ids(tmp_path: Path) -> None:
    folder = _write(tmp_path)
    boxes = np.random.default_rng(0).uniform(0, 100, (N, R, 4)).astype(np.float32)
    np.save(folder / "test_boxes.npy", boxes)
    (folder / "test_ids.txt").write_text("\n".join(f"img{i}.jpg" for i in range(N)))
    split = PrecompSplit.open(folder, "test")
    assert split.image_ids == [f"img{i}.jpg" for i in range(N)]
    np.testing.assert_array_equal(split.image_boxes(1), boxes[1])
    # One id per caption is reduced to one per image.
    (folder / "test_ids.txt").write_text("".join(f"img{k // 5}.jpg\n" for k in range(5 * N)))
    assert PrecompSplit.open(folder, "test").image_ids == [f"img{i}.jpg" for i in range(N)]


def test_pickles_without_copying_features(tmp_path: Path) -> None:
    folder = _write(tmp_path)
    np.save(folder / "test_boxes.npy", np.zeros((N, R, 4), np.float32))
    split = PrecompSplit.open(folder, "test")
    payload = pickle.dumps(split)
    assert len(payload) < split.features.nbytes + 2000  # paths, not arrays
    clone = pickle.loads(payload)
    assert isinstance(clone.features, np.memmap) and clone.boxes is not None
    np.testing.assert_array_equal(clone.image_features(3), split.image_features(3))


def test_read_lines_ignores_only_one_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_text("a\nb\n")
    assert read_lines(path) == ["a", "b"]
    path.write_text("a\nb\n\n")
    with pytest.raises(DataError, match=r"x\.txt:3: empty line"):
        read_lines(path)


# Errors: each names the file and the problem.


def _error(tmp_path: Path, **open_kwargs: object) -> str:
    with pytest.raises(DataError) as caught:
        PrecompSplit.open(tmp_path, "test", **open_kwargs)
    return str(caught.value)


def test_missing_files_list_the_folder(tmp_path: Path) -> None:
    _write(tmp_path, split="dev")
    message = _error(tmp_path)
    assert "test_ims.npy" in message and "missing file" in message
    assert "dev_caps.txt" in message and "splits with features: dev" in message
    (tmp_path / "test_caps.txt").write_text("x\n")
    np.save(tmp_path / "test_ims.npy", _features(1))
    (tmp_path / "test_caps.txt").unlink()
    assert "test_caps.txt: missing file" in _error(tmp_path)
    assert "does not exist" in _error(tmp_path / "nowhere")


def test_caption_count_not_a_multiple(tmp_path: Path) -> None:
    _write(tmp_path, captions=[f"c {k}" for k in range(5 * N + 1)])
    message = _error(tmp_path)
    assert "test_caps.txt" in message
    assert f"{N} feature rows" in message and f"{5 * N + 1} captions" in message
    assert "multiple" in message


def test_features_not_rank_3(tmp_path: Path) -> None:
    _write(tmp_path, features=np.zeros((N, F), np.float32))
    message = _error(tmp_path)
    assert "test_ims.npy" in message and "rank-3" in message and f"({N}, {F})" in message


@pytest.mark.parametrize("dtype", [np.float64, np.int32])
def test_unsupported_dtype(tmp_path: Path, dtype: type) -> None:
    _write(tmp_path, features=_features(N).astype(dtype))
    message = _error(tmp_path)
    assert "test_ims.npy" in message and f"unsupported feature dtype {np.dtype(dtype)}" in message


def test_not_an_npy_file(tmp_path: Path) -> None:
    _write(tmp_path)
    (tmp_path / "test_ims.npy").write_bytes(b"not numpy")
    message = _error(tmp_path)
    assert "test_ims.npy" in message and "not a readable .npy" in message


def test_boxes_shape_mismatch(tmp_path: Path) -> None:
    np.save(_write(tmp_path) / "test_boxes.npy", np.zeros((N, R + 1, 4), np.float32))
    message = _error(tmp_path)
    assert "test_boxes.npy" in message and f"({N}, {R + 1}, 4)" in message
    assert f"expected ({N}, {R}, 4)" in message
    repeated = np.repeat(_features(N), 5, axis=0)  # (5N, R, F)
    _write(tmp_path, features=repeated)
    assert f"expected ({5 * N} or {N}, {R}, 4)" in _error(tmp_path)


def test_ids_count_mismatch(tmp_path: Path) -> None:
    (_write(tmp_path) / "test_ids.txt").write_text("a\nb\n")
    message = _error(tmp_path)
    assert "test_ids.txt" in message and f"has 2 ids, expected {N}" in message
    (tmp_path / "test_ids.txt").write_text("".join(f"img{k}\n" for k in range(5 * N)))
    message = _error(tmp_path)  # one per caption, but the 5 of an image differ
    assert "test_ids.txt:2" in message and "'img1' differs from 'img0'" in message


def test_empty_caption_line_gives_line_number(tmp_path: Path) -> None:
    captions = [f"c {k}" for k in range(5 * N)]
    captions[6] = "   "
    _write(tmp_path, captions=captions)
    message = _error(tmp_path)
    assert "test_caps.txt:7: empty caption line" in message


def test_bad_utf8_and_empty_file(tmp_path: Path) -> None:
    _write(tmp_path)
    (tmp_path / "test_caps.txt").write_bytes(b"fine\nbad \xff byte\n")
    assert "test_caps.txt:2: not valid UTF-8" in _error(tmp_path)
    (tmp_path / "test_caps.txt").write_bytes(b"")
    assert "test_caps.txt: file is empty" in _error(tmp_path)


def test_non_finite_features_name_file_and_row(tmp_path: Path) -> None:
    features = _features(N)
    features[2, 1, 3] = np.nan
    features[3, 0, 0] = np.inf
    split = PrecompSplit.open(_write(tmp_path, features=features), "test")
    split.image_features(1)  # fine rows still read
    for image, where in ((2, "region 1, dim 3"), (3, "region 0, dim 0")):
        with pytest.raises(DataError) as caught:
            split.image_features(image)
        message = str(caught.value)
        assert "test_ims.npy" in message and f"row {image}" in message and where in message
