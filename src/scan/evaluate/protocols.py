"""Evaluation protocols and score-matrix ensembles (SCAN paper, Section 4.1-4.3, Tables 1-2).

The paper reports Flickr30K on its 1000-image test split scored as one set ("1K test"), and COCO
two ways on the 5000-image ``testall`` split: "1K", the mean over 5 folds of 1000 images and their
5000 captions, and "5K", all 5000 images against all 25000 captions at once. Its best rows average
the score matrices of a t2i and an i2t model ("ensemble"). This module turns those protocols into
pure functions: :func:`evaluate_scores` on a full ``(N, M)`` score matrix, and
:func:`evaluate_protocol` on a scoring callback, so that COCO 1K scores only the 5 diagonal
``1000 x 5000`` blocks (5x cheaper than scoring 5K) and never holds the full matrix.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from scan.evaluate.metrics import (
    METRIC_KEYS,
    as_score_array,
    check_caption_image,
    retrieval_metrics,
)

__all__ = [
    "PROTOCOLS",
    "ScoreFn",
    "ensemble_scores",
    "evaluate_protocol",
    "evaluate_scores",
    "protocol_blocks",
]

PROTOCOLS: tuple[str, ...] = ("1k", "all", "coco1k", "coco5k")
"""Protocol names. ``"1k"``, ``"all"`` and ``"coco5k"`` score the whole split as one set (``"1k"``
is Flickr30K's 1K test, ``"coco5k"`` COCO 5K, ``"all"`` the clear name for any other size);
``"coco1k"`` averages the metrics over ``num_folds`` equal folds of consecutive images. The names
describe the protocol: a split of another size is still evaluated (small synthetic splits are, in
the tests), but with a warning, since its figures are not comparable with the paper's columns."""

# The split size each named protocol is defined on (the paper's Flickr30K 1K test, COCO testall).
PROTOCOL_IMAGES = {"1k": 1000, "coco1k": 5000, "coco5k": 5000}

_WHOLE = frozenset({"1k", "all", "coco5k"})
_FOLDED = frozenset({"coco1k"})

ScoreFn = Callable[[np.ndarray, np.ndarray], Any]
"""``score_fn(image_index, caption_index) -> (n, m)`` scores of those images against those
captions (numpy array or torch tensor); ``image_index`` is ``(n,)`` and ``caption_index`` ``(m,)``,
both int64."""


def _check_protocol(protocol: str) -> str:
    name = protocol.lower() if isinstance(protocol, str) else protocol
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {list(PROTOCOLS)}")
    return name


def protocol_blocks(
    *, num_images: int, caption_image: Any, protocol: str, num_folds: int = 5
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (image indices, caption indices) blocks a protocol scores, one per fold.

    Whole-split protocols give one block with everything. ``coco1k`` gives fold ``f`` = images
    ``[f*n, (f+1)*n)`` with ``n = num_images // num_folds`` and the captions that belong to those
    images according to ``caption_image``, selected by mask so the result is right even when a
    fold's captions are not contiguous (they are, in the standard layout). Captions keep their
    original order within a fold.

    Args:
        num_images: ``N``, images in the split.
        caption_image: ``(M,)`` image index of each caption.
        protocol: one of :data:`PROTOCOLS`.
        num_folds: folds of ``coco1k`` (5 in the paper).

    Returns:
        List of ``(image_index (n,), caption_index (m,))`` int64 arrays.

    Raises:
        ValueError: on an unknown protocol, or if ``coco1k``'s images do not split evenly.
    """
    name = _check_protocol(protocol)
    ci = np.asarray(caption_image, dtype=np.int64)  # (M,)
    if name in _WHOLE:
        return [(np.arange(num_images, dtype=np.int64), np.arange(ci.shape[0], dtype=np.int64))]
    if num_folds <= 0 or num_images % num_folds != 0:
        raise ValueError(
            f"protocol {name!r} needs the {num_images} images to split into {num_folds} equal "
            f"folds, but {num_images} is not divisible by {num_folds}"
        )
    n = num_images // num_folds
    blocks = []
    for f in range(num_folds):  # a handful of folds, not a loop over captions
        images = np.arange(f * n, (f + 1) * n, dtype=np.int64)  # (n,)
        captions = np.flatnonzero((ci >= f * n) & (ci < (f + 1) * n)).astype(np.int64)  # (m,)
        blocks.append((images, captions))
    return blocks


def _mean_metrics(folds: Sequence[dict[str, float]]) -> dict[str, float]:
    # Every metric, ranks included, is averaged over folds, as the released code and the paper's
    # COCO 1K column do; rsum of the mean is the mean of the rsums since rsum is linear.
    return {k: float(np.mean([fold[k] for fold in folds])) for k in METRIC_KEYS}


def evaluate_protocol(
    score_fn: ScoreFn,
    *,
    num_images: int,
    caption_image: Any,
    protocol: str,
    num_folds: int = 5,
    chunk_size: int | None = None,
) -> dict[str, Any]:
    """Evaluate a protocol by scoring only the blocks it needs, through ``score_fn``.

    For ``coco1k`` only the ``num_folds`` diagonal blocks are requested (for COCO, 5 blocks of
    ``1000 x 5000``: a fifth of the 5K matrix), so a model can be evaluated on 1K without ever
    scoring, or holding, the cross-fold pairs that the protocol ignores.

    Args:
        score_fn: ``score_fn(image_index (n,), caption_index (m,)) -> (n, m)`` scores.
        num_images: ``N``, images in the split.
        caption_image: ``(M,)`` image index of each caption (required: ``M`` is read from it).
        protocol: one of :data:`PROTOCOLS`.
        num_folds: folds of ``coco1k``.
        chunk_size: passed to :func:`~scan.evaluate.metrics.retrieval_metrics`.

    Returns:
        The metrics dict (keys :data:`~scan.evaluate.metrics.METRIC_KEYS`); for ``coco1k`` the
        mean over folds plus ``"folds"``, the list of per-fold metrics dicts.

    Raises:
        ValueError: on an unknown protocol, uneven folds, an invalid ``caption_image`` or a
            ``score_fn`` result of the wrong shape.
    """
    name = _check_protocol(protocol)
    if caption_image is None:
        raise ValueError("evaluate_protocol needs caption_image: the number of captions is read from it")
    ci = np.asarray(caption_image)  # (M,)
    num_captions = ci.shape[0] if ci.ndim else -1
    ci = check_caption_image(ci, num_images=num_images, num_captions=num_captions)
    expected = PROTOCOL_IMAGES.get(name)
    if expected is not None and num_images != expected:
        warnings.warn(
            f"protocol {name!r} is defined on a split of {expected} images, but this one has {num_images}: "
            "its figures are not comparable with the paper's (use protocol 'all' for a split of any size)",
            stacklevel=3,
        )
    results = []
    for images, captions in protocol_blocks(
        num_images=num_images, caption_image=ci, protocol=name, num_folds=num_folds
    ):
        block = as_score_array(score_fn(images, captions))  # (n, m)
        if block.shape != (images.size, captions.size):
            raise ValueError(
                f"score_fn returned shape {block.shape} for {images.size} images and "
                f"{captions.size} captions; expected {(images.size, captions.size)}"
            )
        local = ci[captions] - images[0]  # (m,) image index within the block
        results.append(retrieval_metrics(block, local, chunk_size=chunk_size))
    if name in _WHOLE:
        return results[0]
    return {**_mean_metrics(results), "folds": results}


def _index_block(scores: np.ndarray, images: np.ndarray, captions: np.ndarray) -> np.ndarray:
    """``scores[images][:, captions]``, as a view when both index runs are contiguous."""

    def as_slice(idx: np.ndarray) -> slice | np.ndarray:
        if idx.size and idx[-1] - idx[0] == idx.size - 1 and np.all(np.diff(idx) == 1):
            return slice(int(idx[0]), int(idx[-1]) + 1)
        return idx

    rows, cols = as_slice(images), as_slice(captions)
    if isinstance(rows, slice) and isinstance(cols, slice):
        return scores[rows, cols]  # view: no copy of a 5K matrix for whole-split protocols
    return scores[rows][:, cols] if isinstance(rows, slice) else scores[np.ix_(images, captions)]


def evaluate_scores(
    scores: Any,
    *,
    protocol: str,
    caption_image: Any = None,
    num_folds: int = 5,
    chunk_size: int | None = None,
) -> dict[str, Any]:
    """Evaluate a protocol on a full ``(N, M)`` score matrix.

    The same as :func:`evaluate_protocol` with ``score_fn`` indexing into ``scores``; for
    ``coco1k`` the cross-fold entries of ``scores`` are ignored, for ``coco5k`` they count.

    Args:
        scores: ``(N, M)`` similarity of every image to every caption (numpy or torch).
        protocol: one of :data:`PROTOCOLS`.
        caption_image: ``(M,)`` image index of each caption; ``None`` for the standard layout
            (caption ``k`` belongs to image ``k // (M // N)``).
        num_folds: folds of ``coco1k``.
        chunk_size: passed to :func:`~scan.evaluate.metrics.retrieval_metrics`.

    Returns:
        As :func:`evaluate_protocol`.
    """
    s = as_score_array(scores)  # (N, M)
    n, m = s.shape
    ci = check_caption_image(caption_image, num_images=n, num_captions=m)  # (M,)
    return evaluate_protocol(
        lambda images, captions: _index_block(s, images, captions),
        num_images=n,
        caption_image=ci,
        protocol=protocol,
        num_folds=num_folds,
        chunk_size=chunk_size,
    )


def ensemble_scores(score_matrices: Sequence[Any]) -> np.ndarray:
    """Elementwise mean of several models' score matrices (the paper's ensemble rows).

    Averaging scores, not ranks, is what the paper does (e.g. t2i AVG + i2t LSE); the matrices
    must be over the same images and captions in the same order, so their shapes must agree.

    Args:
        score_matrices: ``K`` matrices of shape ``(N, M)`` (numpy arrays or torch tensors).

    Returns:
        ``(N, M)`` float64 mean.

    Raises:
        ValueError: if the list is empty or the shapes differ (the message names every shape).
    """
    mats = [as_score_array(s) for s in score_matrices]
    if not mats:
        raise ValueError("ensemble_scores needs at least one score matrix")
    shapes = [m.shape for m in mats]
    if len(set(shapes)) != 1:
        raise ValueError(f"cannot ensemble score matrices of different shapes: {shapes}")
    out = np.zeros(shapes[0], dtype=np.float64)  # (N, M)
    for m in mats:
        out += m
    out /= len(mats)
    return out
