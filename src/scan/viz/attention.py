"""Pictures of SCAN's cross attention: which regions each word attends to, and back (paper Fig. 1, 5).

SCAN's text-to-image attention (Sec. 3.2) gives every word ``t`` a softmax over the ``R`` image
regions, ``alpha_{t, r}``; the image-to-text direction (Sec. 3.1) gives every region a softmax over
the ``W`` words. The project page draws the first as one panel per word: "attended image regions
with respect to each word in the sentence. The brightness represents the attention strength." This
module makes that picture:

* :func:`attention_heatmap` turns ``R`` pixel boxes and their weights into a per-pixel brightness:
  the attention mass of the boxes covering the pixel, normalised to a maximum of 1. Boxes overlap
  heavily in bottom-up features (36 per photo), so summing is what makes the object that many
  attended boxes share come out brightest.
* :func:`brighten` applies it the project page's way: the photo darkened, the attended part lit.
* :func:`word_panels` / :func:`draw_word_attention` make the t2i figure (photo, then one panel per
  word, each stretched over its own range, with the word's top boxes outlined and their weights
  written on them); :func:`draw_region_attention` the i2t one (the most-attended regions outlined,
  each with its top words).
* :func:`save_figure` writes JPEG or PNG by the file's suffix, within a byte budget if asked
  (the attention pictures default to 500 KB; JPEG is the format that suits photo panels).

The array functions need only numpy; matplotlib and pillow (the ``[viz]`` extra) are imported by
the drawing functions. Boxes are ``(x1, y1, x2, y2)`` in pixels of the image as shown (what
``scan extract`` writes), a pixel ``(i, j)`` being covered when its centre ``(j + 0.5, i + 0.5)``
lies in ``[x1, x2) x [y1, y2)``. Nothing here imports torch: pass ``tensor.cpu().numpy()`` or any
array-like.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np

from scan.atomic import atomic_open

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "DEFAULT_SKIP",
    "attention_heatmap",
    "brighten",
    "draw_region_attention",
    "draw_word_attention",
    "encode_picture",
    "keep_words",
    "load_photo",
    "save_figure",
    "word_panels",
]

# Tokens that carry no meaning to draw: the GRU vocabulary's markers and BERT-style specials.
DEFAULT_SKIP: frozenset[str] = frozenset(
    {"<start>", "<end>", "<pad>", "<s>", "</s>", "[CLS]", "[SEP]", "[PAD]", "[MASK]"}
)

# Distinct, readable-on-photos colours for outlined regions (matplotlib's tab10, reordered).
_REGION_COLOURS = ["#ff7f0e", "#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#17becf", "#e377c2", "#bcbd22"]


# -- arrays ---------------------------------------------------------------------------------------


def _as_array(x: Any, *, name: str, dtype: type = np.float64) -> np.ndarray:
    """Any array-like (numpy, list, a CPU torch tensor) as a numpy array, checked finite."""
    if hasattr(x, "detach"):  # a torch tensor; no torch import needed
        x = x.detach().cpu().numpy()
    array: np.ndarray = np.asarray(x, dtype=dtype)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} has non-finite values")
    return array


def _coverage(lo: np.ndarray, hi: np.ndarray, size: int, edge: float) -> np.ndarray:
    """How much each of ``size`` pixels along one axis lies inside each interval ``[lo, hi)``.

    Hard (``edge == 0``): 1 where the pixel centre is inside, else 0. Soft: a linear ramp ``edge``
    pixels wide centred on each border, so a heatmap has no aliased staircase edges. Returns
    ``(R, size)``.
    """
    centres = np.arange(size, dtype=np.float64) + 0.5  # (size,)
    lo, hi = lo[:, None], hi[:, None]  # (R, 1)
    if edge <= 0:
        return ((centres >= lo) & (centres < hi)).astype(np.float64)  # (R, size)
    rise = np.clip((centres - lo) / edge + 0.5, 0.0, 1.0)
    fall = np.clip((hi - centres) / edge + 0.5, 0.0, 1.0)
    return rise * fall  # (R, size)


def attention_heatmap(
    image_size: tuple[int, int],
    boxes: Any,
    weights: Any,
    *,
    edge: float = 0.0,
    normalize: bool = True,
) -> np.ndarray:
    """Per-pixel attention mass: the summed weights of the boxes covering each pixel.

    A box's indicator is separable (rows x columns), so the sum over boxes is one contraction,
    ``heat[h, w] = sum_r w_r rows[r, h] cols[r, w]`` with ``rows (R, H)`` and ``cols (R, W)``: no
    per-box Python loop, and soft borders come for free (36 boxes on a 500x375 photo: ~2 ms).

    Args:
        image_size: ``(H, W)`` in pixels.
        boxes: ``(R, 4)`` pixel ``x1, y1, x2, y2``; parts outside the image are ignored.
        weights: ``(R,)`` non-negative attention weights, e.g. one word's softmax over regions.
        edge: width in pixels of a linear ramp across each box border (0: hard edges).
        normalize: scale so the maximum is 1 (an all-zero map stays zero). Turn off to compare
            several maps on one scale.

    Returns:
        ``(H, W)`` float32, in ``[0, 1]`` when normalised.
    """
    height, width = (int(s) for s in image_size)
    if height <= 0 or width <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    boxes = _as_array(boxes, name="boxes").reshape(-1, 4)  # (R, 4)
    weights = _as_array(weights, name="weights").reshape(-1)  # (R,)
    if len(weights) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(weights)} weights")
    if np.any(weights < 0):
        raise ValueError("attention weights must be non-negative")
    if np.any(boxes[:, 2] < boxes[:, 0]) or np.any(boxes[:, 3] < boxes[:, 1]):
        raise ValueError("boxes must be x1, y1, x2, y2 with x2 >= x1 and y2 >= y1")
    if edge < 0:
        raise ValueError(f"edge must be >= 0, got {edge}")
    rows = _coverage(boxes[:, 1], boxes[:, 3], height, edge)  # (R, H)
    cols = _coverage(boxes[:, 0], boxes[:, 2], width, edge)  # (R, W)
    # The product as numpy's own einsum loop, not BLAS: on a busy machine a multi-threaded BLAS
    # spends tens of milliseconds on this small (H, R) x (R, W) product, einsum ~2 ms single-threaded.
    weighted = (rows * weights[:, None]).astype(np.float32)  # (R, H)
    heat = np.einsum("rh,rw->hw", weighted, cols.astype(np.float32), optimize=False)  # (H, W)
    if normalize:
        peak = heat.max(initial=0.0)
        if peak > 0:
            heat = np.clip(heat / peak, 0.0, 1.0)
    return heat


def brighten(image: Any, heatmap: Any, *, floor: float = 0.25) -> np.ndarray:
    """The project page's look: ``image * (floor + (1 - floor) * heat)``.

    Unattended pixels keep ``floor`` of their brightness (so the scene stays recognisable), fully
    attended ones all of it.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        heatmap: ``(H, W)`` in ``[0, 1]`` (values outside are clipped).
        floor: brightness kept where the heat is 0, in ``[0, 1]``.

    Returns:
        ``(H, W, 3)`` uint8.
    """
    image = np.asarray(image)
    heat = np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got {image.shape}")
    if heat.shape != image.shape[:2]:
        raise ValueError(f"heatmap {heat.shape} does not match image {image.shape[:2]}")
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor must be in [0, 1], got {floor}")
    gain = floor + (1.0 - floor) * heat  # (H, W)
    out = image.astype(np.float32) * gain[:, :, None]  # (H, W, 3)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def default_edge(image_size: tuple[int, int]) -> float:
    """Border softening for drawing: 2% of the shorter side (about 7 px on a Flickr photo)."""
    return 0.02 * min(image_size)


def word_panels(
    image: Any,
    boxes: Any,
    weights: Any,
    *,
    floor: float = 0.25,
    edge: float | None = None,
    scale: Literal["word", "shared"] = "word",
) -> list[np.ndarray]:
    """One brightened copy of ``image`` per word: what :func:`draw_word_attention` shows.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        boxes: ``(R, 4)`` pixel boxes in ``image``.
        weights: ``(W, R)`` word-to-region attention (row ``t``: word ``t``'s weights).
        floor: see :func:`brighten`.
        edge: see :func:`attention_heatmap`; ``None``: :func:`default_edge`.
        scale: ``"word"`` stretches each panel's heat over the full range, its least-attended pixel
            to ``floor`` and its most-attended one to full brightness: soft attention over
            overlapping boxes varies little, and this shows where each word looks more than
            elsewhere. ``"shared"`` puts all panels on one scale (zero to the highest peak), so words
            whose weights carry less mass (e.g. weights multiplied by a per-word relevance) come
            out dimmer, as on the project page.

    Returns:
        ``W`` arrays ``(H, W, 3)`` uint8.
    """
    image = np.asarray(image)
    size = image.shape[:2]
    weights = _as_array(weights, name="weights")
    if weights.ndim != 2:
        raise ValueError(f"weights must be (W, R), got shape {weights.shape}")
    if scale not in ("word", "shared"):
        raise ValueError(f"scale must be 'word' or 'shared', got {scale!r}")
    edge = default_edge(size) if edge is None else edge
    heats = [attention_heatmap(size, boxes, w, edge=edge, normalize=False) for w in weights]  # W x (H, W)
    if scale == "shared":
        peak = max((h.max(initial=0.0) for h in heats), default=0.0)
        return [brighten(image, h / peak if peak > 0 else h, floor=floor) for h in heats]
    return [brighten(image, _stretch(h), floor=floor) for h in heats]


def _stretch(heat: np.ndarray) -> np.ndarray:
    """``heat`` mapped linearly onto ``[0, 1]``.

    A flat map singles nothing out: all lit if it has any mass (attention spread evenly over the
    photo), all dark if none.
    """
    if heat.size == 0:
        return heat
    low, high = float(heat.min()), float(heat.max())
    if high - low <= 1e-6 * high:
        return np.full_like(heat, 1.0 if high > 0 else 0.0)
    return (heat - low) / (high - low)


def keep_words(words: Sequence[str], skip: Iterable[str] = DEFAULT_SKIP) -> list[int]:
    """Indices of the words to draw: all but the special tokens in ``skip``."""
    skip = set(skip)
    return [i for i, word in enumerate(words) if word not in skip]


# -- files ----------------------------------------------------------------------------------------


def load_photo(
    path: str | Path, boxes: Any, *, max_width: int | None, max_height: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read a photo upright (EXIF orientation, as ``scan extract`` saw it) as RGB uint8.

    It is shrunk to at most ``max_width`` pixels wide and ``max_height`` tall (aspect kept), with
    ``boxes (R, 4)`` scaled to match.
    """
    from PIL import Image, ImageOps

    with Image.open(path) as opened:
        im = ImageOps.exif_transpose(opened).convert("RGB")
        width, height = im.size
        boxes = _as_array(boxes, name="boxes").reshape(-1, 4).copy()  # (R, 4)
        shrink = min(
            1.0 if max_width is None else max_width / width,
            1.0 if max_height is None else max_height / height,
        )
        if shrink < 1.0:
            new = (max(1, round(width * shrink)), max(1, round(height * shrink)))
            im = im.resize(new, Image.Resampling.LANCZOS)
            boxes *= np.array([new[0] / width, new[1] / height] * 2)
        return np.asarray(im, dtype=np.uint8), boxes


# Picture formats by file suffix; anything else is written as PNG.
_JPEG_SUFFIXES = frozenset({".jpg", ".jpeg"})
# JPEG qualities tried in turn while a picture is over its byte budget (80: no visible artefacts on
# these photo panels; below ~60 text edges start to ring).
_JPEG_QUALITIES = (80, 70, 60)


def encode_picture(picture: Any, *, fmt: Literal["png", "jpeg"], max_bytes: int | None = None) -> bytes:
    """Encode an RGB picture as PNG or JPEG bytes, within ``max_bytes`` when given.

    Over the budget, the cheap losses come first: for JPEG a lower quality (down to 60), for PNG a
    256-colour palette (photos keep their look; the file shrinks about threefold). If that is not
    enough, the picture is shrunk by the square root of the size ratio (file size goes roughly
    with the pixel count) until it fits.

    Args:
        picture: ``(H, W, 3)`` uint8 RGB, or a PIL image.
        fmt: ``"png"`` or ``"jpeg"``.
        max_bytes: the most bytes the encoded picture may take; ``None``: no limit.

    Returns:
        The encoded picture.
    """
    import io

    from PIL import Image

    if fmt not in ("png", "jpeg"):
        raise ValueError(f"fmt must be 'png' or 'jpeg', got {fmt!r}")
    if max_bytes is not None and max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    image = picture if isinstance(picture, Image.Image) else Image.fromarray(np.asarray(picture, dtype=np.uint8))
    image = image.convert("RGB")

    def encode(im: Image.Image, quality: int) -> bytes:
        buffer = io.BytesIO()
        if fmt == "jpeg":
            im.save(buffer, format="JPEG", quality=quality, optimize=True)
        else:
            im.save(buffer, format="PNG", optimize=False)
        return buffer.getvalue()

    def fits(data: bytes) -> bool:
        return max_bytes is None or len(data) <= max_bytes

    data = encode(image, _JPEG_QUALITIES[0])
    if fits(data):
        return data
    if fmt == "jpeg":
        for quality in _JPEG_QUALITIES[1:]:
            data = encode(image, quality)
            if fits(data):
                return data
    else:
        image = image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        data = encode(image, 0)
        if fits(data):
            return data
    assert max_bytes is not None  # fits() is always true without a budget
    for _ in range(8):  # each step lands near the budget; a couple of steps are the most seen
        shrink = min(0.9, 0.95 * math.sqrt(max_bytes / len(data)))
        size = (max(1, round(image.width * shrink)), max(1, round(image.height * shrink)))
        resample = Image.Resampling.NEAREST if image.mode == "P" else Image.Resampling.LANCZOS
        image = image.resize(size, resample)
        data = encode(image, _JPEG_QUALITIES[-1])
        if fits(data):
            return data
    raise ValueError(f"could not fit the picture in {max_bytes} bytes")


def save_figure(fig: Figure, out_path: str | Path, *, dpi: float, max_bytes: int | None = None) -> Path:
    """Write ``fig`` atomically: JPEG for a ``.jpg``/``.jpeg`` path, else PNG.

    A temp file in the same folder, then ``os.replace``, so a reader (a web page, a crashed run's
    leftovers) never sees half a file.

    Args:
        fig: the figure, drawn at ``dpi`` on a white background.
        out_path: where to write; its suffix picks the format.
        dpi: resolution (the picture is ``figsize * dpi`` pixels).
        max_bytes: keep the file within this many bytes (see :func:`encode_picture`); ``None``: no
            limit, and a PNG is written lossless.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    out_path = Path(out_path)
    fmt: Literal["png", "jpeg"] = "jpeg" if out_path.suffix.lower() in _JPEG_SUFFIXES else "png"
    canvas = FigureCanvasAgg(fig)
    fig.set_dpi(dpi)
    fig.patch.set_facecolor("white")
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[:, :, :3]  # (H, W, 3) uint8; the background is opaque
    data = encode_picture(rgb, fmt=fmt, max_bytes=max_bytes)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out_path, "wb") as stream:
        stream.write(data)
    return out_path


def _figure_title(caption: str | None, score: float | None, width_chars: int) -> str | None:
    parts = [caption.strip()] if caption else []
    if score is not None:
        parts.append(f"(score {score:.3f})" if parts else f"score {score:.3f}")
    return textwrap.fill(" ".join(parts), width=width_chars) if parts else None


def _rectangle(ax: Any, box: np.ndarray, *, colour: str, linewidth: float, alpha: float = 1.0) -> None:
    from matplotlib.patches import Rectangle

    x1, y1, x2, y2 = (float(v) for v in box)
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=linewidth, alpha=alpha))


def _show(ax: Any, picture: np.ndarray) -> None:
    ax.imshow(picture, interpolation="antialiased")
    ax.set_axis_off()


# -- text -> image: one panel per word -------------------------------------------------------------

_PANEL_ASPECT = 0.85  # a panel's photo is at most this tall for its width (4:3 landscape fits, portrait not)

# How each word's top boxes look, strongest first: the top one solid, thick and labelled on an
# opaque tag, later ones thinner, dashed and fainter, so the eye lands on the strongest box.
_TOP_COLOUR = "#ffd400"


class _BoxStyle(NamedTuple):
    linewidth: float
    linestyle: str | tuple[int, tuple[int, int]]
    alpha: float
    fontsize: float
    tag_alpha: float


_TOP_STYLES = [  # linewidth (points), linestyle, line alpha, tag font size (points), tag alpha
    _BoxStyle(2.8, "-", 1.0, 11.0, 0.95),
    _BoxStyle(1.8, (0, (5, 2)), 0.9, 9.5, 0.75),
    _BoxStyle(1.2, (0, (2, 2)), 0.8, 8.5, 0.55),
]


def _outline_top_boxes(
    ax: Any, boxes: np.ndarray, weights: np.ndarray, *, top: int, image_size: tuple[int, int], px_per_point: float
) -> None:
    """Outline one word's ``top`` most-attended boxes, each tagged with its weight (e.g. ``0.31``).

    Tags sit inside each box's top-left corner (just above or below a box too small to hold one);
    bottom-up boxes overlap heavily and often share a corner, so a tag that would cover an earlier
    one moves down below it.
    """
    from matplotlib import patheffects
    from matplotlib.patches import Rectangle

    height, width = image_size
    order = np.argsort(-weights, kind="stable")[: max(0, min(top, len(weights)))]  # (top,)
    placed: list[tuple[float, float, float, float]] = []  # tags drawn so far, x1, y1, x2, y2 in pixels
    for rank in reversed(range(len(order))):  # weakest first, so the strongest is drawn on top
        style = _TOP_STYLES[min(rank, len(_TOP_STYLES) - 1)]
        x1, y1, x2, y2 = (float(v) for v in boxes[order[rank]])
        x1, y1 = min(max(x1, 0.0), width - 1.0), min(max(y1, 0.0), height - 1.0)
        x2, y2 = min(max(x2, x1 + 1.0), float(width)), min(max(y2, y1 + 1.0), float(height))
        outline = [patheffects.withStroke(linewidth=style.linewidth + 1.6, foreground="black")]
        ax.add_patch(
            Rectangle(
                (x1, y1),
                x2 - x1,
                y2 - y1,
                fill=False,
                edgecolor=_TOP_COLOUR,
                linewidth=style.linewidth,
                linestyle=style.linestyle,
                alpha=style.alpha,
                path_effects=outline,
                zorder=3 + len(order) - rank,
            )
        )
    for rank in range(len(order)):  # tags strongest first: the strongest keeps its corner
        style = _TOP_STYLES[min(rank, len(_TOP_STYLES) - 1)]
        r = order[rank]
        tag_w = 4.2 * 0.62 * style.fontsize * px_per_point  # "0.31" plus padding, in pixels
        tag_h = 1.5 * style.fontsize * px_per_point
        x1, y1, x2, y2 = (float(v) for v in boxes[r])
        y = y1
        if x2 - x1 < 1.5 * tag_w or y2 - y1 < 2 * tag_h:  # inside, the tag would hide a small box: go outside
            y = y1 - tag_h - 1.0 if y1 - tag_h - 1.0 >= 0 else y2 + 1.0
        x = min(max(x1, 0.0), width - tag_w)
        y = min(max(y, 0.0), height - tag_h)
        for _ in range(len(placed) + 1):
            clash = [p for p in placed if x < p[2] and p[0] < x + tag_w and y < p[3] and p[1] < y + tag_h]
            if not clash:
                break
            y = max(p[3] for p in clash) + 1.0
            if y + tag_h > height:  # no room below: go above the clashing tags instead
                y = max(0.0, min(p[1] for p in clash) - tag_h - 1.0)
                break
        placed.append((x, y, x + tag_w, y + tag_h))
        ax.text(
            x + 0.12 * tag_h,
            y + 0.12 * tag_h,
            f"{weights[r]:.2f}",
            color="black",
            fontsize=style.fontsize,
            fontweight="bold" if rank == 0 else "normal",
            va="top",
            ha="left",
            zorder=10 + len(order) - rank,
            bbox={
                "boxstyle": "square,pad=0.15",
                "facecolor": _TOP_COLOUR,
                "edgecolor": "black",
                "linewidth": 0.6,
                "alpha": style.tag_alpha,
            },
        )


def _specificity_line(weights: np.ndarray) -> str | None:
    """The small line under the title: the drawn words' specificity, when there are two or more."""
    from scan.viz.specificity import word_specificity

    if len(weights) < 2 or np.any(weights.sum(axis=1) <= 0):
        return None
    value = word_specificity(weights)
    return (
        f"word specificity {value:.3f} bits (mean pairwise Jensen-Shannon divergence of the {len(weights)} "
        "words' attention: 0 = all alike, 1 = disjoint)"
    )


def draw_word_attention(
    image_path: str | Path,
    boxes: Any,
    words: Sequence[str],
    weights: Any,
    out_path: str | Path,
    *,
    caption: str | None = None,
    score: float | None = None,
    max_width: int | None = None,
    columns: int = 4,
    skip: Iterable[str] = DEFAULT_SKIP,
    top_boxes: int = 3,
    floor: float = 0.25,
    scale: Literal["word", "shared"] = "word",
    panel_inches: float = 3.2,
    dpi: float = 125,
    show_specificity: bool = True,
    max_bytes: int | None = 500_000,
) -> Path:
    """Draw the t2i attention figure: the photo, then one panel per word, saved as JPEG or PNG.

    Each word's panel brightens the photo by that word's attention, stretched over the full range
    per word (``scale="word"``), and outlines its ``top_boxes`` most-attended regions with their
    weights written on them, the strongest boldest. The photo is first shrunk to the panel's
    width, and the file kept within ``max_bytes``: a caption of ~10 words makes a JPEG of about
    200 KB.

    Args:
        image_path: the photo the ``boxes`` were extracted from.
        boxes: ``(R, 4)`` pixel boxes in the (EXIF-upright) photo.
        words: the ``W`` tokens, aligned with the rows of ``weights``.
        weights: ``(W, R)`` word-to-region attention.
        out_path: the picture to write (atomically; folders are created): JPEG for a
            ``.jpg``/``.jpeg`` suffix, else PNG. JPEG suits these photo panels far better.
        caption: figure title; ``score`` (the image-caption similarity) is appended when given.
        max_width: the photo is shrunk to this many pixels wide first; ``None``: to fit a panel in
            pixels (``panel_inches * dpi`` wide, 0.85 of that tall), so no detail is drawn that the
            panel cannot show.
        columns: panels per row; more wrap onto further rows.
        skip: tokens not drawn (their rows of ``weights`` are dropped).
        top_boxes: outline each word's ``top_boxes`` most-attended regions, tagged with their
            weights (0: none).
        floor, scale: see :func:`word_panels`.
        panel_inches, dpi: each panel's width in inches and the resolution (400 px panels); a
            portrait photo's panels are narrower, at most ``0.85 * panel_inches`` tall.
        show_specificity: print the drawn words' :func:`~scan.viz.specificity.word_specificity`
            under the title.
        max_bytes: the file's size limit (see :func:`encode_picture`); ``None``: none.

    Returns:
        ``out_path``.
    """
    from matplotlib.figure import Figure

    weights = _as_array(weights, name="weights")  # (W, R)
    if weights.ndim != 2 or weights.shape[0] != len(words):
        raise ValueError(f"weights must be (W={len(words)}, R), got shape {weights.shape}")
    if max_width is None:  # the photo fits a panel: panel_inches wide, 0.85 of that tall
        fit = {"max_width": round(panel_inches * dpi), "max_height": round(_PANEL_ASPECT * panel_inches * dpi)}
        image, boxes = load_photo(image_path, boxes, **fit)  # (H, W, 3), (R, 4)
    else:
        image, boxes = load_photo(image_path, boxes, max_width=max_width)
    if weights.shape[1] != len(boxes):
        raise ValueError(f"weights has {weights.shape[1]} regions but there are {len(boxes)} boxes")
    keep = keep_words(words, skip)
    words, weights = [words[i] for i in keep], weights[keep]  # (W', R)
    panels = word_panels(image, boxes, weights, floor=floor, scale=scale)

    n = 1 + len(panels)
    ncols = max(1, min(columns, n))
    nrows = math.ceil(n / ncols)
    aspect = image.shape[0] / image.shape[1]  # H / W
    # A portrait photo gets a narrower panel, not a taller one: every row as tall as a landscape one.
    panel_inches = panel_inches * min(1.0, _PANEL_ASPECT / aspect)
    title_inches = 0.42  # room for a word above each panel
    title = _figure_title(caption, score, width_chars=max(40, int(ncols * panel_inches * 7.5)))
    note = _specificity_line(weights) if show_specificity else None
    note = textwrap.fill(note, width=max(50, int(ncols * panel_inches * 12))) if note else None
    header = 0.0 if title is None else 0.3 * (title.count("\n") + 1) + 0.2
    header += 0.0 if note is None else 0.2 * (note.count("\n") + 1) + 0.05
    header += 0.05 if header else 0.0
    fig = Figure(figsize=(ncols * panel_inches, nrows * (panel_inches * aspect + title_inches) + header))
    grid = fig.add_gridspec(
        nrows,
        ncols,
        left=0.01,
        right=0.99,
        bottom=0.01,
        top=1 - header / fig.get_figheight(),
        wspace=0.04,
        hspace=title_inches / (panel_inches * aspect),
    )
    # Photo pixels per typographic point: a panel's photo spans about 0.95 of its width (margins
    # and gaps take the rest), and tags are sized in photo pixels to not cover their box.
    px_per_point = image.shape[1] / (0.95 * panel_inches * 72)
    for k in range(nrows * ncols):
        ax = fig.add_subplot(grid[k // ncols, k % ncols])
        if k == 0:
            _show(ax, image)
            ax.set_title("image", fontsize=13, color="0.45", style="italic")
        elif k < n:
            _show(ax, panels[k - 1])
            ax.set_title(words[k - 1], fontsize=15, fontweight="bold")
            if top_boxes > 0:
                _outline_top_boxes(
                    ax, boxes, weights[k - 1], top=top_boxes, image_size=image.shape[:2], px_per_point=px_per_point
                )
        else:
            ax.set_axis_off()
    top = 1 - 0.1 / fig.get_figheight()
    if title is not None:
        fig.suptitle(title, fontsize=15, y=top, va="top")
        top -= (0.3 * (title.count("\n") + 1) + 0.08) / fig.get_figheight()
    if note is not None:
        fig.text(0.5, top, note, fontsize=10, color="0.3", ha="center", va="top")
    return save_figure(fig, out_path, dpi=dpi, max_bytes=max_bytes)


# -- image -> text: the most-attended regions and their words ------------------------------------


def draw_region_attention(
    image_path: str | Path,
    boxes: Any,
    words: Sequence[str],
    weights: Any,
    out_path: str | Path,
    *,
    regions: int = 3,
    top: int = 5,
    region_scores: Any = None,
    caption: str | None = None,
    score: float | None = None,
    skip: Iterable[str] = DEFAULT_SKIP,
    max_width: int = 640,
    dpi: float = 150,
    max_bytes: int | None = 500_000,
) -> Path:
    """Draw the i2t attention figure: a few regions outlined on the photo, each with its top words.

    Args:
        image_path: the photo the ``boxes`` were extracted from.
        boxes: ``(R, 4)`` pixel boxes in the (EXIF-upright) photo.
        words: the ``W`` tokens, aligned with the columns of ``weights``.
        weights: ``(R, W)`` region-to-word attention (row ``r``: region ``r``'s softmax over words).
        out_path: the picture to write (atomically): JPEG for a ``.jpg``/``.jpeg`` suffix, else PNG.
        regions: how many regions to show.
        top: how many words to list per region.
        region_scores: ``(R,)`` how much each region matters (e.g. its relevance to its attended
            sentence vector); ``None``: each region's peak weight, i.e. how sharply it picks a word.
        caption, score: figure title, as in :func:`draw_word_attention`.
        skip: tokens left out (their columns dropped; the shown weights are not renormalised).
        max_width, dpi, max_bytes: see :func:`draw_word_attention`.

    Returns:
        ``out_path``.
    """
    from matplotlib.figure import Figure

    weights = _as_array(weights, name="weights")  # (R, W)
    if weights.ndim != 2 or weights.shape[1] != len(words):
        raise ValueError(f"weights must be (R, W={len(words)}), got shape {weights.shape}")
    image, boxes = load_photo(image_path, boxes, max_width=max_width)
    if weights.shape[0] != len(boxes):
        raise ValueError(f"weights has {weights.shape[0]} regions but there are {len(boxes)} boxes")
    keep = keep_words(words, skip)
    words, weights = [words[i] for i in keep], weights[:, keep]  # (R, W')
    if region_scores is None:
        importance = weights.max(axis=1, initial=0.0)  # (R,)
    else:
        importance = _as_array(region_scores, name="region_scores").reshape(-1)
        if len(importance) != len(boxes):
            raise ValueError(f"{len(importance)} region_scores for {len(boxes)} boxes")
    chosen = np.argsort(-importance, kind="stable")[: max(1, min(regions, len(boxes)))]
    top = max(1, min(top, len(words))) if words else 0

    aspect = image.shape[0] / image.shape[1]
    rows = len(chosen)
    row_h = 0.32 * top + 0.6  # inches per region's word list
    photo_w = float(np.clip(rows * row_h / aspect, 5.0, 8.0))  # as tall as the lists, within reason
    row_h = max(row_h, photo_w * aspect / rows)
    x_max = max(float(weights[chosen].max(initial=0.0)) * 1.3, 1e-6)  # one scale: bars comparable
    title = _figure_title(caption, score, width_chars=80)
    header = 0.0 if title is None else 0.32 * (title.count("\n") + 1) + 0.25
    fig = Figure(figsize=(photo_w + 3.6, rows * row_h + header + 0.1))
    grid = fig.add_gridspec(
        rows,
        2,
        width_ratios=[photo_w, 2.6],
        left=0.01,
        right=0.97,
        bottom=0.05 / (rows * row_h),
        top=1 - header / fig.get_figheight(),
        wspace=0.32,
        hspace=0.55,
    )
    heat = attention_heatmap(image.shape[:2], boxes[chosen], np.ones(len(chosen)), edge=default_edge(image.shape[:2]))
    photo = fig.add_subplot(grid[:, 0])
    _show(photo, brighten(image, np.minimum(heat * len(chosen), 1.0), floor=0.45))
    for rank, r in enumerate(chosen):
        colour = _REGION_COLOURS[rank % len(_REGION_COLOURS)]
        _rectangle(photo, boxes[r], colour=colour, linewidth=2.2)
        x1, y1 = float(max(boxes[r][0], 0)), float(max(boxes[r][1], 0))
        photo.text(
            x1 + 2,
            y1 + 2,
            str(rank + 1),
            color="white",
            fontsize=12,
            fontweight="bold",
            va="top",
            ha="left",
            bbox={"boxstyle": "square,pad=0.15", "facecolor": colour, "edgecolor": "none"},
        )

        ax = fig.add_subplot(grid[rank, 1])
        order = np.argsort(-weights[r], kind="stable")[:top]  # (top,)
        values = weights[r][order]
        ax.barh(np.arange(len(order)), values, color=colour, height=0.7)
        ax.set_yticks(np.arange(len(order)), [words[i] for i in order], fontsize=12)
        ax.invert_yaxis()
        ax.set_xlim(0, x_max)
        ax.set_xticks([])
        for side in ("top", "right", "bottom"):
            ax.spines[side].set_visible(False)
        for y, v in enumerate(values):
            ax.text(float(v), y, f" {v:.2f}", va="center", fontsize=10, color="0.25")
        ax.set_title(f"region {rank + 1}", fontsize=12, color=colour, fontweight="bold", loc="left")
    if title is not None:
        fig.suptitle(title, fontsize=15, y=1 - 0.12 / fig.get_figheight(), va="top")
    return save_figure(fig, out_path, dpi=dpi, max_bytes=max_bytes)
