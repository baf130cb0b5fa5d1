"""Retrieval metrics over an image-caption score matrix (SCAN paper, Section 4 "Experiments").

Given a score matrix ``S`` of shape ``(N, M)`` (``N`` images, ``M`` captions; higher = more
similar) and the image each caption belongs to, this module computes the ranks and the numbers the
paper reports: image-to-text (i2t, "sentence retrieval": for each image, the rank of its best-ranked
ground-truth caption among all ``M`` captions) and text-to-image (t2i, "image retrieval": for each
caption, the rank of its one image among all ``N`` images), R@1/5/10 in percent, median and mean
rank (1-based), and ``rsum``, the sum of the six recalls used for model selection. Everything is
vectorised and chunked over image rows, so COCO 5K (5000 x 25000) needs no Python loop over
captions and a bounded amount of temporary memory. Inputs may be numpy arrays or torch tensors.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

__all__ = [
    "METRIC_KEYS",
    "RECALL_KS",
    "as_score_array",
    "check_caption_image",
    "default_caption_image",
    "i2t_ranks",
    "retrieval_metrics",
    "t2i_ranks",
]

RECALL_KS: tuple[int, ...] = (1, 5, 10)
"""Cut-offs of the recalls the paper reports."""

METRIC_KEYS: tuple[str, ...] = (
    "i2t_r1",
    "i2t_r5",
    "i2t_r10",
    "i2t_medr",
    "i2t_meanr",
    "t2i_r1",
    "t2i_r5",
    "t2i_r10",
    "t2i_medr",
    "t2i_meanr",
    "rsum",
)
"""Keys of :func:`retrieval_metrics`, in the order tables print them."""

# Elements of the (rows, M) boolean temporary per chunk: 16M elements = 16 MB of booleans, so
# COCO 5K (M = 25000) is scored 671 image rows at a time.
_CHUNK_ELEMENTS = 1 << 24


def _is_torch_tensor(x: Any) -> bool:
    # Look torch up in sys.modules instead of importing it: if torch was never imported, `x`
    # cannot be a tensor, and the metrics stay importable (and fast to import) without it.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def as_score_array(scores: Any) -> np.ndarray:
    """Convert a score matrix (numpy array, torch tensor, nested list) to a 2-D numpy float array.

    float32 and float64 inputs keep their dtype; everything else (float16, bfloat16, integers)
    becomes float64. Ranks only compare scores, and every comparison between two float32 values
    has the same answer after exact promotion to float64, so keeping float32 changes no metric
    while halving the memory of a COCO 5K matrix (0.5 GB instead of 1 GB).

    Raises:
        ValueError: if the input is not 2-D.
    """
    if _is_torch_tensor(scores):
        torch = sys.modules["torch"]
        t = scores.detach().cpu()
        arr = (t if t.dtype in (torch.float32, torch.float64) else t.double()).numpy()
    else:
        arr = np.asarray(scores)
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    if arr.ndim != 2:
        raise ValueError(f"scores must be a 2-D (images, captions) matrix, got shape {arr.shape}")
    return arr


def default_caption_image(num_images: int, num_captions: int) -> np.ndarray:
    """Caption-to-image map of the standard layout: caption ``k`` belongs to image ``k // c``.

    The released features list ``c`` (5 for Flickr30K and COCO) captions per image in image order,
    so the map is implied by the two sizes; asking for it explicitly makes the assumption visible.

    Returns:
        ``(M,)`` int64 array of image indices.

    Raises:
        ValueError: if ``num_captions`` is not a positive multiple of ``num_images``.
    """
    if num_images <= 0 or num_captions <= 0 or num_captions % num_images != 0:
        raise ValueError(
            f"cannot infer which image each caption belongs to: {num_captions} captions is not a "
            f"positive multiple of {num_images} images; pass caption_image explicitly"
        )
    return np.arange(num_captions, dtype=np.int64) // (num_captions // num_images)


def check_caption_image(
    caption_image: Any, *, num_images: int, num_captions: int, every_image: bool = True
) -> np.ndarray:
    """Validate a caption-to-image map (``None`` = the standard layout); returns ``(M,)`` int64.

    With ``every_image`` (needed for i2t), every image must have at least one caption: its i2t
    rank is otherwise undefined, and refusing beats a silent worst rank from a ground-truth score
    of ``-inf``. t2i alone allows caption-less images: they are simply extra distractors.

    Raises:
        ValueError: on a wrong shape or dtype, an out-of-range index or a caption-less image.
    """
    if caption_image is None:
        return default_caption_image(num_images, num_captions)
    if _is_torch_tensor(caption_image):
        caption_image = caption_image.detach().cpu().numpy()
    ci = np.asarray(caption_image)
    if ci.ndim != 1 or ci.shape[0] != num_captions:
        raise ValueError(
            f"caption_image must have shape ({num_captions},) (one image index per caption), got {ci.shape}"
        )
    if ci.size and not np.issubdtype(ci.dtype, np.integer):
        raise ValueError(f"caption_image must hold integer image indices, got dtype {ci.dtype}")
    ci = ci.astype(np.int64, copy=False)
    if ci.size and (ci.min() < 0 or ci.max() >= num_images):
        raise ValueError(f"caption_image values must lie in [0, {num_images}), got [{ci.min()}, {ci.max()}]")
    counts = np.bincount(ci, minlength=num_images)  # (N,)
    if every_image and (counts == 0).any():
        missing = np.flatnonzero(counts == 0)
        raise ValueError(
            f"{missing.size} image(s) have no caption (first: {missing[:5].tolist()}); i2t rank is undefined for them"
        )
    return ci


def _prepare(scores: Any, caption_image: Any, *, every_image: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Convert and validate ``(scores, caption_image)`` once for the rank functions."""
    s = as_score_array(scores)  # (N, M)
    n, m = s.shape
    if n == 0 or m == 0:
        raise ValueError(f"scores must be non-empty, got shape {s.shape}")
    # A NaN compares False with everything, so it would silently rank as if it lost every tie
    # (optimistic for a NaN ground truth): refuse it rather than report a wrong number.
    if np.isnan(s).any():
        raise ValueError("scores contain NaN; ranks would be meaningless")
    ci = check_caption_image(caption_image, num_images=n, num_captions=m, every_image=every_image)
    return s, ci


def _rows_per_chunk(num_captions: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        return chunk_size
    return max(1, _CHUNK_ELEMENTS // max(1, num_captions))


def _i2t_ranks(s: np.ndarray, ci: np.ndarray, chunk_size: int | None) -> np.ndarray:
    n, m = s.shape
    gt = s[ci, np.arange(m)]  # (M,) score of each caption with its own image
    # Best ground-truth score per image, in O(M) rather than masking the (N, M) matrix.
    best = np.full(n, -np.inf, dtype=s.dtype)  # (N,)
    np.maximum.at(best, ci, gt)
    # The image's own captions that reach `best` (at least the best one itself) are subtracted
    # from the row count below: other ground truths never push an image's rank down.
    own_at_best = np.bincount(ci[gt >= best[ci]], minlength=n)  # (N,)
    ge = np.empty(n, dtype=np.int64)  # (N,) captions scoring >= best, ground truths included
    step = _rows_per_chunk(m, chunk_size)
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        ge[r0:r1] = np.count_nonzero(s[r0:r1] >= best[r0:r1, None], axis=1)  # (rows, M) -> (rows,)
    return 1 + ge - own_at_best


def _t2i_ranks(s: np.ndarray, ci: np.ndarray, chunk_size: int | None) -> np.ndarray:
    n, m = s.shape
    gt = s[ci, np.arange(m)]  # (M,)
    # Counting images with score >= gt includes the caption's own image exactly once, so the
    # count already is the 1-based pessimistic rank.
    ranks = np.zeros(m, dtype=np.int64)  # (M,)
    step = _rows_per_chunk(m, chunk_size)
    for r0 in range(0, n, step):
        ranks += np.count_nonzero(s[r0 : r0 + step] >= gt[None, :], axis=0)  # (rows, M) -> (M,)
    return ranks


def i2t_ranks(scores: Any, caption_image: Any = None, *, chunk_size: int | None = None) -> np.ndarray:
    """1-based rank, for each image, of its best-ranked ground-truth caption among all captions.

    Ties count against the ground truth: rank = 1 + the number of *other images'* captions whose
    score is ``>=`` the image's best ground-truth score. A degenerate model that gives every pair
    the same score must not get 100% recall (which breaking ties in favour of the ground truth,
    or by index when the ground truth comes first, would give it); counted pessimistically it gets
    the worst rank, never better than chance. The image's other ground-truth captions are not
    competitors and never push its rank down.

    Args:
        scores: ``(N, M)`` similarity of every image to every caption.
        caption_image: ``(M,)`` image index of each caption; ``None`` for the standard layout
            (:func:`default_caption_image`).
        chunk_size: image rows compared at a time (memory bound); default keeps the temporary at
            about 16M elements.

    Returns:
        ``(N,)`` int64 ranks in ``[1, M]``.
    """
    s, ci = _prepare(scores, caption_image)
    return _i2t_ranks(s, ci, chunk_size)


def t2i_ranks(scores: Any, caption_image: Any = None, *, chunk_size: int | None = None) -> np.ndarray:
    """1-based rank, for each caption, of its own image among all images.

    Ties count against the ground truth: rank = 1 + the number of other images whose score for
    the caption is ``>=`` its own image's score, so a constant score matrix gets the worst rank
    ``N`` rather than a perfect one (see :func:`i2t_ranks`). Images without captions are
    allowed here (extra distractors).

    Args:
        scores: ``(N, M)`` similarity of every image to every caption.
        caption_image: ``(M,)`` image index of each caption; ``None`` for the standard layout.
        chunk_size: image rows compared at a time (memory bound).

    Returns:
        ``(M,)`` int64 ranks in ``[1, N]``.
    """
    s, ci = _prepare(scores, caption_image, every_image=False)
    return _t2i_ranks(s, ci, chunk_size)


def _summarise(ranks: np.ndarray, prefix: str) -> dict[str, float]:
    out = {f"{prefix}_r{k}": float(100.0 * np.mean(ranks <= k)) for k in RECALL_KS}
    # floor(median): the released SCAN/VSE++ code reports floor(median(0-based ranks)) + 1, which
    # is floor(median(1-based ranks)); keeping it makes our medr comparable with published tables.
    out[f"{prefix}_medr"] = float(np.floor(np.median(ranks)))
    out[f"{prefix}_meanr"] = float(np.mean(ranks))
    return out


def retrieval_metrics(scores: Any, caption_image: Any = None, *, chunk_size: int | None = None) -> dict[str, float]:
    """All reported numbers for one score matrix: R@1/5/10, medr, meanr both ways, and rsum.

    Recalls are percentages; ranks are 1-based with ties counted against the ground truth (see
    :func:`i2t_ranks`); ``medr`` is ``floor(median)`` as in the released code; ``rsum`` is the
    sum of the six recalls (the model-selection criterion, at most 600).

    Args:
        scores: ``(N, M)`` similarity of every image to every caption.
        caption_image: ``(M,)`` image index of each caption; ``None`` for the standard layout.
        chunk_size: image rows compared at a time (memory bound).

    Returns:
        Dict with the keys of :data:`METRIC_KEYS`, in that order, as Python floats.
    """
    s, ci = _prepare(scores, caption_image)
    metrics = {
        **_summarise(_i2t_ranks(s, ci, chunk_size), "i2t"),
        **_summarise(_t2i_ranks(s, ci, chunk_size), "t2i"),
    }
    metrics["rsum"] = float(sum(metrics[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in RECALL_KS))
    return {k: metrics[k] for k in METRIC_KEYS}
