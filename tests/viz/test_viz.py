"""Attention pictures and training curves: the heatmap against a per-pixel loop, brightening bounds,
per-word panels that follow the attention, and the PNGs written (atomically) from a real photo."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

from scan.viz import attention as viz_attention  # noqa: E402
from scan.viz.attention import (  # noqa: E402
    DEFAULT_SKIP,
    attention_heatmap,
    brighten,
    draw_region_attention,
    draw_word_attention,
    keep_words,
    load_photo,
    word_panels,
)
from scan.viz.curves import (  # noqa: E402
    moving_average,
    plot_training_curves,
    read_metrics,
    split_metrics,
)

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "flickr8k-800" / "images"
PHOTO = "1003163366_44323f5815.jpg"  # 500 x 410: a man on a bench, a dog below it
needs_real = pytest.mark.skipif(not (REAL / PHOTO).is_file(), reason="shared/data/flickr8k-800 absent")

# Rough pixel boxes in PHOTO: three that do not overlap, so "the most-attended box" is unambiguous.
MAN = (150.0, 80.0, 380.0, 190.0)
DOG = (95.0, 258.0, 200.0, 388.0)
WATER = (320.0, 40.0, 500.0, 75.0)


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    """A copy of a real photo in tmp_path (never written into the repository)."""
    if not (REAL / PHOTO).is_file():
        pytest.skip("shared/data/flickr8k-800 absent")
    return Path(shutil.copy(REAL / PHOTO, tmp_path / PHOTO))


# -- heatmap against an obviously-correct loop ---------------------------------------------------


def _ramp(centre: float, lo: float, hi: float, edge: float) -> float:
    if edge == 0:
        return float(lo <= centre < hi)
    rise = min(max((centre - lo) / edge + 0.5, 0.0), 1.0)
    fall = min(max((hi - centre) / edge + 0.5, 0.0), 1.0)
    return rise * fall


def heatmap_loop(size, boxes, weights, *, edge=0.0):
    """Per pixel, per box: add the box's weight times how much the pixel centre is inside it."""
    height, width = size
    heat = np.zeros((height, width))
    for i in range(height):
        for j in range(width):
            for (x1, y1, x2, y2), w in zip(boxes, weights, strict=False):
                heat[i, j] += w * _ramp(j + 0.5, x1, x2, edge) * _ramp(i + 0.5, y1, y2, edge)
    return heat / heat.max() if heat.max() > 0 else heat


def _random_boxes(rng, n, size):
    height, width = size
    corner = rng.uniform([-4, -4], [width, height], size=(n, 2))  # some start outside the image
    extent = rng.uniform(0, [width / 1.5, height / 1.5], size=(n, 2))
    boxes = np.concatenate([corner, corner + extent], axis=1)  # (n, 4)
    boxes[0] = np.round(boxes[0])  # integer borders hit the half-open [x1, x2) rule exactly
    return boxes


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("edge", [0.0, 2.5])
def test_heatmap_matches_loop(seed, edge):
    rng = np.random.default_rng(seed)
    size = (int(rng.integers(5, 19)), int(rng.integers(5, 23)))
    boxes = _random_boxes(rng, int(rng.integers(1, 7)), size)
    weights = rng.random(len(boxes))
    got = attention_heatmap(size, boxes, weights, edge=edge)
    assert got.shape == size and got.dtype == np.float32
    np.testing.assert_allclose(got, heatmap_loop(size, boxes, weights, edge=edge), atol=1e-5)
    assert got.min() >= 0 and got.max() == pytest.approx(1.0)


def test_heatmap_raw_sums_and_edge_cases():
    boxes = np.array([[0, 0, 4, 4], [2, 2, 6, 6]], dtype=np.float32)
    raw = attention_heatmap((6, 6), boxes, [0.25, 0.5], normalize=False)
    assert raw[0, 0] == pytest.approx(0.25) and raw[3, 3] == pytest.approx(0.75) and raw[5, 5] == pytest.approx(0.5)
    assert np.all(attention_heatmap((6, 6), boxes, [0.0, 0.0]) == 0)  # nothing attended: all dark, no NaN
    assert np.all(attention_heatmap((6, 6), np.zeros((0, 4)), np.zeros(0)) == 0)
    assert attention_heatmap((6, 6), [[0, 0, 6, 6]], [3.0]).min() == 1.0  # whole-image box: all lit
    with pytest.raises(ValueError, match="non-negative"):
        attention_heatmap((6, 6), boxes, [0.5, -0.1])
    with pytest.raises(ValueError, match="boxes but"):
        attention_heatmap((6, 6), boxes, [0.5])
    with pytest.raises(ValueError, match="x2 >= x1"):
        attention_heatmap((6, 6), [[4, 0, 2, 6]], [1.0])
    with pytest.raises(ValueError, match="non-finite"):
        attention_heatmap((6, 6), boxes, [np.nan, 1.0])


def test_heatmap_is_fast_on_a_photo_sized_input():
    import time

    rng = np.random.default_rng(0)
    boxes, weights = _random_boxes(rng, 36, (375, 500)), rng.random(36)
    attention_heatmap((375, 500), boxes, weights, edge=7.5)
    start = time.perf_counter()
    for _ in range(5):
        attention_heatmap((375, 500), boxes, weights, edge=7.5)
    assert (time.perf_counter() - start) / 5 < 0.05  # ~2 ms here; a per-pixel loop takes minutes


# -- brightening ------------------------------------------------------------------------------------


def test_brighten_bounds():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(7, 9, 3), dtype=np.uint8)
    image[0, 0] = 255
    heat = rng.random((7, 9))
    heat[0, 0] = 1.0
    out = brighten(image, heat, floor=0.3)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert np.all(out <= image) and np.all(out >= np.floor(0.3 * image.astype(float)))  # darker, never below floor
    assert np.all(out[0, 0] == 255)  # fully attended white stays white (no overflow)
    np.testing.assert_array_equal(brighten(image, np.ones((7, 9))), image)
    np.testing.assert_array_equal(brighten(image, np.zeros((7, 9)), floor=0.0), 0)
    np.testing.assert_array_equal(brighten(image, np.full((7, 9), 2.0)), image)  # heat clipped to 1
    expected = np.rint(image * (0.25 + 0.75 * heat)[:, :, None]).astype(np.uint8)
    np.testing.assert_array_equal(brighten(image, heat), expected)
    with pytest.raises(ValueError):
        brighten(image, np.ones((7, 8)))
    with pytest.raises(ValueError):
        brighten(image, heat, floor=1.5)


# -- per-word panels ------------------------------------------------------------------------------


def _one_hot_ish(top: list[int], regions: int, peak: float = 0.8) -> np.ndarray:
    weights = np.full((len(top), regions), (1 - peak) / (regions - 1))
    weights[np.arange(len(top)), top] = peak
    return weights  # (W, R), rows sum to 1 like a softmax


def test_panels_brightest_inside_the_most_attended_box_on_grey():
    image = np.full((120, 160, 3), 200, dtype=np.uint8)
    boxes = np.array([[10, 10, 50, 60], [90, 20, 150, 70], [40, 80, 120, 115]], dtype=np.float32)
    panels = word_panels(image, boxes, _one_hot_ish([2, 0, 1], 3), edge=0)
    for panel, r in zip(panels, [2, 0, 1], strict=False):
        x1, y1, x2, y2 = boxes[r].astype(int)
        luminance = panel.astype(float).mean(axis=2)
        i, j = np.unravel_index(np.argmax(luminance), luminance.shape)
        assert x1 <= j < x2 and y1 <= i < y2
        assert np.all(luminance[y1:y2, x1:x2] == luminance.max())  # the whole box is the brightest
    assert not np.array_equal(panels[0], panels[1]) and not np.array_equal(panels[1], panels[2])


@needs_real
def test_panels_follow_the_attention_on_a_real_photo(photo):
    image, boxes = load_photo(photo, [MAN, DOG, WATER], max_width=None)
    assert image.shape == (410, 500, 3)
    weights = np.vstack([_one_hot_ish([0, 1, 2], 3), np.full((1, 3), 1 / 3)])  # man, dog, water, uniform
    panels = word_panels(image, boxes, weights, floor=0.25)
    assert len(panels) == 4 and all(p.shape == image.shape and p.dtype == np.uint8 for p in panels)
    lit = image.astype(float).sum(axis=2) > 30  # gains are measurable where the photo is not black
    for a in range(4):
        for b in range(a + 1, 4):
            assert (
                np.abs(panels[a].astype(int) - panels[b].astype(int)).mean() > 5
            )  # different attention, different panel
    for panel, r in zip(panels[:3], range(3), strict=False):
        gain = np.where(lit, panel.astype(float).sum(axis=2) / np.maximum(image.astype(float).sum(axis=2), 1), 0)
        x1, y1, x2, y2 = (int(v) for v in boxes[r])
        inside = np.zeros(gain.shape, dtype=bool)
        inside[y1 + 8 : y2 - 8, x1 + 8 : x2 - 8] = True  # away from the softened border
        assert gain[inside & lit].mean() > 0.95  # the attended object keeps its brightness
        i, j = np.unravel_index(np.argmax(np.where(lit, gain, -1)), gain.shape)
        assert x1 <= j < x2 and y1 <= i < y2  # the brightest spot lies in the most-attended box
        outside = np.ones(gain.shape, dtype=bool)
        for x1o, y1o, x2o, y2o in boxes.astype(int):
            outside[max(y1o - 8, 0) : y2o + 8, max(x1o - 8, 0) : x2o + 8] = False
        assert gain[outside & lit].mean() == pytest.approx(0.25, abs=0.02)  # the rest is darkened to the floor


def test_shared_scale_dims_weaker_words():
    image = np.full((40, 40, 3), 200, dtype=np.uint8)
    boxes = np.array([[0, 0, 20, 20], [20, 20, 40, 40]], dtype=np.float32)
    weights = np.array([[1.0, 0.0], [0.0, 0.5]])
    own = word_panels(image, boxes, weights, edge=0, scale="word")
    shared = word_panels(image, boxes, weights, edge=0, scale="shared")
    assert own[1].max() == 200 and shared[1].max() < own[1].max()  # same place, dimmer on a shared scale
    np.testing.assert_array_equal(own[0], shared[0])


def test_keep_words_skips_special_tokens():
    words = ["<start>", "a", "dog", "<end>", "[CLS]", "runs", "[SEP]"]
    assert keep_words(words) == [1, 2, 5]
    assert keep_words(words, skip={"a"}) == [0, 2, 3, 4, 5, 6]
    assert {"<start>", "<end>", "[CLS]", "[SEP]"} <= DEFAULT_SKIP


# -- figures --------------------------------------------------------------------------------------


@needs_real
def test_draw_word_attention_writes_a_sensible_png(photo, tmp_path, monkeypatch):
    words = ["<start>", "a", "man", "and", "his", "dog", "<end>"]
    weights = _one_hot_ish([2, 0, 0, 2, 0, 1, 2], 3)  # (7, 3)
    seen = []
    real_word_panels = viz_attention.word_panels

    def recording(image, boxes, w, **kwargs):
        seen.append(np.array(w))
        panels = real_word_panels(image, boxes, w, **kwargs)
        seen.append(panels)
        return panels

    monkeypatch.setattr(viz_attention, "word_panels", recording)
    out = draw_word_attention(
        photo,
        [MAN, DOG, WATER],
        words,
        weights,
        tmp_path / "figs" / "words.png",
        caption="A man and his dog .",
        score=0.61,
        top_boxes=1,
    )
    np.testing.assert_array_equal(seen[0], weights[1:6])  # the special tokens' rows were skipped
    assert len(seen[1]) == 5 and not np.array_equal(seen[1][1], seen[1][4])  # "man" and "dog" differ

    assert out == tmp_path / "figs" / "words.png" and out.is_file()
    with Image.open(out) as im:
        assert im.format == "PNG"
        width, height = im.size
        pixels = np.asarray(im.convert("RGB"))
    # 6 panels in rows of 4 at 400 px each: 2 rows of landscape photos, plus titles
    assert 1500 <= width <= 1700 and 0.4 * width <= height <= 0.65 * width
    assert pixels.std() > 20  # photos drawn, not a blank canvas
    assert [p.name for p in out.parent.iterdir()] == ["words.png"]  # no temp file left behind

    three = draw_word_attention(photo, [MAN, DOG, WATER], ["dog"], weights[5:6], tmp_path / "one.png")
    with Image.open(three) as im:  # photo + one word: one row of two panels, aspect kept
        assert im.size[0] < width and im.size[1] < 0.6 * im.size[0]


@needs_real
def test_draw_word_attention_overwrites_and_validates(photo, tmp_path):
    out = tmp_path / "w.png"
    out.write_bytes(b"old")
    draw_word_attention(photo, [MAN, DOG], ["man", "dog"], np.eye(2), out)
    with Image.open(out) as im:
        im.verify()
    with pytest.raises(ValueError, match="weights must be"):
        draw_word_attention(photo, [MAN, DOG], ["man", "dog", "x"], np.eye(2), tmp_path / "bad.png")
    with pytest.raises(ValueError, match="regions"):
        draw_word_attention(photo, [MAN, DOG, WATER], ["man", "dog"], np.eye(2), tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


@needs_real
def test_load_photo_shrinks_and_scales_boxes(photo):
    image, boxes = load_photo(photo, [MAN], max_width=250)
    assert image.shape == (205, 250, 3)
    np.testing.assert_allclose(boxes[0], np.array(MAN) / 2)


def test_load_photo_applies_exif_rotation(tmp_path):
    array = np.zeros((20, 40, 3), dtype=np.uint8)
    array[:, :10] = 255  # a white stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    Image.fromarray(array).save(tmp_path / "rot.jpg", exif=exif.tobytes())
    image, _ = load_photo(tmp_path / "rot.jpg", np.zeros((0, 4)), max_width=None)
    assert image.shape == (40, 20, 3)  # upright, as the extractor saw it
    assert image[:10].mean() > 200 and image[-10:].mean() < 50


@needs_real
def test_draw_region_attention(photo, tmp_path):
    words = ["<start>", "a", "man", "and", "his", "dog", "<end>"]
    weights = _one_hot_ish([2, 5, 1], 7, peak=0.6)  # (R=3, W=7): regions attend man, dog, a
    out = draw_region_attention(
        photo,
        [MAN, DOG, WATER],
        words,
        weights,
        tmp_path / "regions.png",
        regions=2,
        top=3,
        caption="A man and his dog .",
    )
    with Image.open(out) as im:
        width, height = im.size
        assert im.format == "PNG" and 900 <= width <= 2200 and 400 <= height <= 1600
    with pytest.raises(ValueError):
        draw_region_attention(photo, [MAN, DOG], words, weights, tmp_path / "bad.png")


# -- training curves --------------------------------------------------------------------------------


def _write_metrics(path: Path, *, steps: int, validate: bool, seed: int = 0, cut_short: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    lines = []
    for step in range(10, steps + 1, 10):
        lines.append(
            {
                "step": step,
                "epoch": step // 100,
                "lr": 2e-4,
                "time": step * 0.1,
                "loss": float(40 * np.exp(-step / 300) + rng.normal(0, 1.5) + 5),
            }
        )
        if validate and step % 100 == 0:
            rsum = 300 * (1 - np.exp(-step / 400))
            lines.append(
                {
                    "step": step,
                    "epoch": step // 100,
                    "split": "dev",
                    "rsum": rsum,
                    "i2t_r1": rsum / 8,
                    "t2i_r1": rsum / 10,
                }
            )
    text = "".join(json.dumps(line) + "\n" for line in lines)
    if cut_short:
        text += '{"step": 99999, "lo'  # a crash mid-write
    path.write_text(text)
    return path


def test_read_metrics_and_split(tmp_path):
    path = _write_metrics(tmp_path / "metrics.jsonl", steps=300, validate=True, cut_short=True)
    records = read_metrics(path)
    assert len(records) == 30 + 3 and records[0]["step"] == 10
    assert read_metrics(tmp_path) == records  # a run directory works too
    training, validation = split_metrics(records)
    assert [r["step"] for r in validation] == [100, 200, 300] and len(training) == 30
    assert all("loss" in r for r in training) and all("rsum" in r for r in validation)
    (tmp_path / "bad.jsonl").write_text('{"step": 1, "loss": 2}\nnot json\n{"step": 2, "loss": 1}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        read_metrics(tmp_path / "bad.jsonl")


def test_moving_average_matches_loop():
    values = np.random.default_rng(3).normal(size=23)
    for window in (1, 4, 5, 50):
        half = window // 2
        expected = (
            [values[max(i - half, 0) : i + half + 1].mean() for i in range(len(values))] if window > 1 else values
        )
        np.testing.assert_allclose(moving_average(values, window), expected)


def test_plot_training_curves(tmp_path):
    runs = {
        "baseline": _write_metrics(tmp_path / "a.jsonl", steps=1000, validate=True, seed=0),
        "lambda=4": _write_metrics(tmp_path / "b.jsonl", steps=700, validate=True, seed=1),
        "no-val": _write_metrics(tmp_path / "c.jsonl", steps=400, validate=False, seed=2),
    }
    out = plot_training_curves(runs, tmp_path / "plots" / "curves.png", title="SCAN t2i")
    with Image.open(out) as im:
        assert im.format == "PNG" and 1200 <= im.size[0] <= 2000 and 450 <= im.size[1] <= 900
        assert np.asarray(im.convert("L")).std() > 5
    only_train = plot_training_curves({"no-val": runs["no-val"]}, tmp_path / "only.png")
    assert only_train.is_file()
    (tmp_path / "empty.jsonl").write_text("")
    assert plot_training_curves({"empty": tmp_path / "empty.jsonl"}, tmp_path / "empty.png").is_file()
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["curves.png"]
    with pytest.raises(ValueError):
        plot_training_curves({}, tmp_path / "none.png")
