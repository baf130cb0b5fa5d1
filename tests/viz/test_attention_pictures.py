"""The readable attention pictures: per-word stretched heat, each word's top boxes tagged with their
weights, the picture's word specificity printed, and files small enough to page through (JPEG or
PNG by suffix, within a byte budget) on a real photo with a ten-word caption."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

from scan.viz import attention as viz_attention  # noqa: E402
from scan.viz.attention import (  # noqa: E402
    draw_region_attention,
    draw_word_attention,
    encode_picture,
    word_panels,
)
from scan.viz.specificity import word_specificity  # noqa: E402

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "flickr8k-800" / "images"
PHOTO = "1003163366_44323f5815.jpg"  # 500 x 410: a man on a bench, a dog below it
WORDS = [
    "<start>",
    "a",
    "man",
    "sits",
    "on",
    "a",
    "bench",
    "while",
    "his",
    "dog",
    "lies",
    "below",
    "<end>",
]  # 11 words drawn
BUDGET = 500_000


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    """A copy of a real photo in tmp_path (never written into the repository)."""
    if not (REAL / PHOTO).is_file():
        pytest.skip("shared/data/flickr8k-800 absent")
    return Path(shutil.copy(REAL / PHOTO, tmp_path / PHOTO))


def _bottom_up_like(rng: np.random.Generator, regions: int = 36, size: tuple[int, int] = (410, 500)) -> np.ndarray:
    """Random boxes inside the photo, overlapping heavily as bottom-up detections do: ``(R, 4)``."""
    height, width = size
    corner = rng.uniform([0, 0], [0.7 * width, 0.7 * height], size=(regions, 2))
    extent = rng.uniform([30, 30], [width / 1.5, height / 1.5], size=(regions, 2))
    return np.concatenate([corner, np.minimum(corner + extent, [width, height])], axis=1)


def _soft_attention(rng: np.random.Generator, words: int, regions: int = 36) -> np.ndarray:
    logits = rng.normal(0.0, 1.5, size=(words, regions))
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)  # (W, R)


def _capture_figure(monkeypatch) -> list[Any]:
    """Record the figure each drawing saves (then save it as usual)."""
    figures: list[Any] = []
    real_save = viz_attention.save_figure

    def recording(fig, out_path, **kwargs):
        figures.append(fig)
        return real_save(fig, out_path, **kwargs)

    monkeypatch.setattr(viz_attention, "save_figure", recording)
    return figures


# -- size -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_ten_word_picture_of_a_real_photo_is_under_500_kb(photo, tmp_path, suffix):
    rng = np.random.default_rng(0)
    weights = _soft_attention(rng, len(WORDS))
    out = draw_word_attention(
        photo,
        _bottom_up_like(rng),
        WORDS,
        weights,
        tmp_path / "out" / f"words{suffix}",
        caption="A man sits on a bench while his dog lies below .",
        score=0.61,
    )
    size = out.stat().st_size
    assert 20_000 < size < BUDGET  # a real picture, and a small one
    with Image.open(out) as im:
        assert im.format == ("JPEG" if suffix == ".jpg" else "PNG")
        width, height = im.size
        pixels = np.asarray(im.convert("RGB"))
    if suffix == ".jpg":
        # 12 panels (photo + 11 words) in rows of 4 at 400 px: JPEG fits without shrinking
        assert width == 1600 and 1000 <= height <= 1400
    else:
        assert 1000 <= width <= 1600  # a PNG of photos may be reduced to fit, not much
    assert pixels.std() > 20
    assert [p.name for p in out.parent.iterdir()] == [f"words{suffix}"]  # no temp file left behind


def test_region_picture_is_small_too(photo, tmp_path):
    rng = np.random.default_rng(1)
    weights = _soft_attention(rng, len(WORDS)).T  # (R, W)
    for name in ("regions.png", "regions.jpg"):
        out = draw_region_attention(photo, _bottom_up_like(rng), WORDS, weights, tmp_path / name, caption="x")
        assert out.stat().st_size < BUDGET
        with Image.open(out) as im:
            assert im.format == ("PNG" if name.endswith("png") else "JPEG") and im.size[0] >= 900


def test_encode_picture_budget():
    rng = np.random.default_rng(2)
    noise = rng.integers(0, 256, size=(600, 800, 3), dtype=np.uint8)  # incompressible: worst case
    lossless = encode_picture(noise, fmt="png")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(lossless))), noise)  # no budget: exact
    for fmt in ("png", "jpeg"):
        data = encode_picture(noise, fmt=fmt, max_bytes=200_000)
        assert len(data) <= 200_000
        with Image.open(io.BytesIO(data)) as im:
            assert (
                im.format == fmt.upper() and im.size[0] < 800 and im.size[0] / im.size[1] == pytest.approx(4 / 3, 0.01)
            )
    flat = np.full((600, 800, 3), 128, dtype=np.uint8)
    with Image.open(io.BytesIO(encode_picture(flat, fmt="jpeg", max_bytes=200_000))) as im:
        assert im.size == (800, 600)  # within budget: untouched
    with pytest.raises(ValueError):
        encode_picture(flat, fmt="gif")  # type: ignore[arg-type]


# -- what the picture shows -------------------------------------------------------------------------


def test_word_scale_stretches_each_word_over_the_full_range():
    image = np.full((60, 80, 3), 200, dtype=np.uint8)
    boxes = np.array([[0, 0, 80, 60], [10, 5, 80, 60], [20, 10, 70, 55]], dtype=np.float32)  # overlapping
    nearly_uniform = np.array([[0.34, 0.33, 0.33], [0.30, 0.30, 0.40]])
    for panel in word_panels(image, boxes, nearly_uniform, edge=0, floor=0.25):
        assert panel.min() == 50 and panel.max() == 200  # floor to full, however flat the weights
    shared = word_panels(image, boxes, nearly_uniform, edge=0, floor=0.25, scale="shared")
    assert min(p.min() for p in shared) > 50  # one scale from zero: low contrast, as before
    flat = word_panels(image, [[0, 0, 80, 60]], [[1.0], [0.0]], edge=0)
    np.testing.assert_array_equal(flat[0], image)  # attention spread over the whole photo: all lit
    assert flat[1].max() == 50  # no attention at all: all dark


def _panel_tags(ax: Any) -> list[str]:
    return [t.get_text() for t in ax.texts if re.fullmatch(r"\d\.\d\d", t.get_text())]


def test_each_word_tags_its_top_boxes_with_their_weights(photo, tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    weights = _soft_attention(rng, len(WORDS))
    figures = _capture_figure(monkeypatch)
    draw_word_attention(photo, _bottom_up_like(rng), WORDS, weights, tmp_path / "w.jpg", caption="A man .")
    (fig,) = figures
    panels = [ax for ax in fig.axes if ax.get_title() not in ("", "image")]
    drawn = weights[1:-1]  # <start> and <end> skipped
    assert [ax.get_title() for ax in panels] == WORDS[1:-1]
    for ax, row in zip(panels, drawn, strict=True):
        top = np.sort(row)[::-1][:3]
        assert _panel_tags(ax) == [f"{w:.2f}" for w in top]  # strongest first
        assert len(ax.patches) == 3
        widths = sorted((p.get_linewidth() for p in ax.patches), reverse=True)
        assert widths[0] > widths[1] > widths[2]  # the strongest box is the boldest
        tags = {t.get_text(): t for t in ax.texts}
        strongest = tags[f"{top[0]:.2f}"]
        assert strongest.get_fontweight() == "bold" and strongest.get_fontsize() > min(
            t.get_fontsize() for t in ax.texts
        )
    notes = [t.get_text() for t in fig.texts if "word specificity" in t.get_text()]
    assert len(notes) == 1 and f"{word_specificity(drawn):.3f}" in notes[0]


def test_top_boxes_and_specificity_can_be_turned_off(photo, tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    figures = _capture_figure(monkeypatch)
    weights = _soft_attention(rng, 3)
    boxes = _bottom_up_like(rng)
    draw_word_attention(
        photo, boxes, ["man", "dog", "bench"], weights, tmp_path / "a.png", top_boxes=0, show_specificity=False
    )
    draw_word_attention(photo, boxes, ["man", "dog", "bench"], weights, tmp_path / "b.png", top_boxes=5)
    off, five = figures
    assert all(not ax.patches and not _panel_tags(ax) for ax in off.axes)
    assert not any("specificity" in t.get_text() for t in off.texts)
    assert [len(ax.patches) for ax in five.axes if ax.get_title() in ("man", "dog", "bench")] == [5, 5, 5]
    figures.clear()
    draw_word_attention(photo, boxes, ["dog"], weights[:1], tmp_path / "c.png")  # one word: nothing to compare
    assert not any("specificity" in t.get_text() for t in figures[0].texts)


def test_portrait_photo_gets_narrower_panels_not_taller_ones(photo, tmp_path):
    with Image.open(photo) as im:
        im.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "portrait.jpg")  # 410 x 500
    rng = np.random.default_rng(5)
    boxes = _bottom_up_like(rng, size=(500, 410))
    words = WORDS[1:9]  # 8 words: photo + 8 panels = 3 rows of 4 (the last one short)
    landscape = draw_word_attention(photo, _bottom_up_like(rng), words, _soft_attention(rng, 8), tmp_path / "l.jpg")
    portrait = draw_word_attention(tmp_path / "portrait.jpg", boxes, words, _soft_attention(rng, 8), tmp_path / "p.jpg")
    with Image.open(landscape) as a, Image.open(portrait) as b:
        assert b.size[0] < a.size[0] and abs(b.size[1] - a.size[1]) < 0.1 * a.size[1]  # rows equally tall
        assert b.size[1] < 3 * (340 + 60) + 150  # panels at most 340 px tall, plus titles
