"""Region pooling and region selection: the "bottom-up" half of SCAN's image side (Sec. 3.1).

Bottom-up attention (Anderson et al. 2018) gives SCAN a fixed number of salient regions per image
(36 in the standard release), each pooled from a CNN feature map with RoIAlign. This module holds
the two pure functions that need no model:

* :func:`roi_align` — RoIAlign (He et al., Mask R-CNN) in plain torch, with the semantics of
  ``torchvision.ops.roi_align`` (bilinear sampling at ``sampling_ratio**2`` regular points per
  bin, averaged; ``aligned=True`` shifts box corners by half a pixel so a box ``[0, W]`` covers
  the map exactly). torchvision is not a dependency; it is checked against a slow loop reference.
* :func:`select_regions` — class-agnostic non-maximum suppression over detector candidates, then
  the top ``num_regions``, filled from the whole-image box and coarse grids when the detector
  finds fewer, so every image gets exactly ``num_regions`` boxes inside the image.

Boxes are ``(x1, y1, x2, y2)`` in pixels throughout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, overload

import numpy as np
import torch

__all__ = ["box_iou", "grid_boxes", "grid_size", "nms", "roi_align", "select_regions"]


def roi_align(
    feature_map: torch.Tensor,
    boxes: torch.Tensor | Sequence[torch.Tensor],
    *,
    spatial_scale: float,
    output_size: int | tuple[int, int] = (7, 7),
    sampling_ratio: int = 2,
    aligned: bool = True,
) -> torch.Tensor:
    """Pool a fixed-size grid of bilinear samples from each box.

    Args:
        feature_map: ``(C, H, W)``, or ``(B, C, H, W)`` for a batch of images.
        boxes: Pixel boxes ``(K, 4)`` for a single map; for a batch either ``(K, 5)`` rows
            ``(batch_index, x1, y1, x2, y2)`` or a list of ``B`` tensors ``(K_b, 4)``.
        spatial_scale: Feature-map cells per input pixel (``1 / stride``).
        output_size: Bins ``(s_h, s_w)`` per box.
        sampling_ratio: Regular sample points per bin along each axis (must be positive; the
            adaptive ``0`` of torchvision is not supported, since it makes the work per box vary).
        aligned: Shift box corners by -0.5 cell (pixel centres at half-integers), as torchvision's
            ``aligned=True``; ``False`` reproduces the original, misaligned RoIAlign.

    Returns:
        ``(K, C, s_h, s_w)``, boxes in input order (for a list: image 0's boxes first).

    Sample points outside ``[-1, H] x [-1, W]`` contribute 0; points inside are clamped to the
    map, matching torchvision's CPU/CUDA kernels.
    """
    if feature_map.dim() == 3:
        feature_map = feature_map.unsqueeze(0)
        if isinstance(boxes, torch.Tensor) and boxes.dim() == 2 and boxes.shape[1] == 4:
            boxes = [boxes]
    if feature_map.dim() != 4:
        raise ValueError(f"feature_map must be (C, H, W) or (B, C, H, W), got {tuple(feature_map.shape)}")
    B, C, H, W = feature_map.shape
    if isinstance(boxes, torch.Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(f"batched boxes must be (K, 5) rows (b, x1, y1, x2, y2), got {tuple(boxes.shape)}")
        batch_index = boxes[:, 0].long()
        xyxy = boxes[:, 1:]
    else:
        if len(boxes) != B:
            raise ValueError(f"got {len(boxes)} box lists for a batch of {B} feature maps")
        batch_index = torch.cat(
            [torch.full((len(b),), i, dtype=torch.long, device=feature_map.device) for i, b in enumerate(boxes)]
        )
        xyxy = torch.cat([b.reshape(-1, 4) for b in boxes]) if len(boxes) else feature_map.new_zeros(0, 4)
    sh, sw = (output_size, output_size) if isinstance(output_size, int) else output_size
    if sampling_ratio <= 0:
        raise ValueError(f"sampling_ratio must be positive, got {sampling_ratio}")
    K = xyxy.shape[0]
    if K == 0:
        return feature_map.new_zeros(0, C, sh, sw)
    if batch_index.min() < 0 or batch_index.max() >= B:
        raise ValueError(f"batch index out of range [0, {B})")

    # Weights are computed in the map's precision (float32 at least).
    compute = feature_map.dtype if feature_map.dtype in (torch.float32, torch.float64) else torch.float32
    xyxy = xyxy.to(compute) * spatial_scale - (0.5 if aligned else 0.0)  # (K, 4) in cells
    x1, y1, x2, y2 = xyxy.unbind(1)
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:  # the original RoIAlign forces boxes to at least one cell
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    # Bilinear sampling on a regular grid is separable: the weight of cell (y, x) for sample
    # (i, j) is wy_i(y) * wx_j(x), and the validity mask is a product too. So each axis becomes an
    # interpolation matrix (K, bins, cells) that already averages the bin's samples, and pooling
    # is two matrix products: out[k, c] = Ay[k] @ F[b_k, c] @ Ax[k]^T.
    ay = _axis_weights(y1, roi_h, sh, sampling_ratio, H)  # (K, sh, H)
    ax = _axis_weights(x1, roi_w, sw, sampling_ratio, W)  # (K, sw, W)
    out = feature_map.new_empty(K, C, sh, sw, dtype=compute)
    for b in torch.unique(batch_index).tolist():
        sel = (batch_index == b).nonzero().squeeze(1)  # boxes of image b
        kb = sel.numel()
        fb = feature_map[b].to(compute)  # (C, H, W)
        tmp = fb.reshape(C * H, W) @ ax[sel].reshape(kb * sw, W).T  # (C*H, Kb*sw)
        tmp = tmp.view(C, H, kb, sw)  # (C, H, Kb, sw)
        out[sel] = torch.einsum("kiy,cykj->kcij", ay[sel], tmp)  # (Kb, C, sh, sw)
    return out.to(feature_map.dtype)


def _axis_weights(start: torch.Tensor, length: torch.Tensor, bins: int, sr: int, size: int) -> torch.Tensor:
    """Interpolation matrix ``(K, bins, size)`` of one axis.

    Row ``i`` averages the ``sr`` bilinear samples of bin ``i`` along the axis, with torchvision's
    border rules (outside ``[-1, size]``: weight 0; otherwise clamped to the first/last cell).
    """
    K = start.shape[0]
    dtype = start.dtype
    t = (torch.arange(bins * sr, dtype=dtype, device=start.device) + 0.5) / (bins * sr)  # (bins*sr,)
    coord = start[:, None] + t[None, :] * length[:, None]  # (K, bins*sr)
    valid = ((coord >= -1.0) & (coord <= size)).to(dtype)
    c = coord.clamp(min=0.0)
    low = c.floor().long().clamp(max=size - 1)
    high = (low + 1).clamp(max=size - 1)
    c = torch.where(low >= size - 1, low.to(c.dtype), c)
    frac = c - low.to(c.dtype)
    weights = torch.zeros(K, bins * sr, size, dtype=dtype, device=start.device)
    weights.scatter_add_(2, low.unsqueeze(2), ((1.0 - frac) * valid).unsqueeze(2))
    weights.scatter_add_(2, high.unsqueeze(2), (frac * valid).unsqueeze(2))
    return weights.view(K, bins, sr, size).mean(dim=2)  # (K, bins, size)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every pair, ``(Ka, 4), (Kb, 4) -> (Ka, Kb)``."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0]).clip(0) * (a[:, 3] - a[:, 1]).clip(0)
    area_b = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    iw = (np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])).clip(0)
    ih = (np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])).clip(0)
    inter = iw * ih
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, *, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression; indices of the kept boxes, best score first.

    Ties in score keep the earlier box (a stable sort), so the result is deterministic.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    iou = box_iou(boxes, boxes)
    suppressed = np.zeros(len(boxes), dtype=bool)
    keep: list[int] = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(int(i))
        suppressed |= iou[i] > iou_threshold
    return np.asarray(keep, dtype=np.int64)


def grid_boxes(image_size: tuple[int, int], rows: int, cols: int | None = None) -> np.ndarray:
    """The cells of a ``rows x cols`` grid over an image of ``(height, width)``, row-major, ``(rows*cols, 4)``."""
    cols = rows if cols is None else cols
    h, w = image_size
    ys = np.linspace(0.0, h, rows + 1)
    xs = np.linspace(0.0, w, cols + 1)
    out = [(xs[c], ys[r], xs[c + 1], ys[r + 1]) for r in range(rows) for c in range(cols)]
    return np.asarray(out, dtype=np.float32).reshape(-1, 4)


@overload
def select_regions(
    boxes: np.ndarray,
    scores: np.ndarray,
    *,
    image_size: tuple[int, int],
    num_regions: int = ...,
    iou_threshold: float = ...,
    min_score: float = ...,
    min_size: float = ...,
    return_num_detected: Literal[False] = ...,
) -> np.ndarray: ...


@overload
def select_regions(
    boxes: np.ndarray,
    scores: np.ndarray,
    *,
    image_size: tuple[int, int],
    num_regions: int = ...,
    iou_threshold: float = ...,
    min_score: float = ...,
    min_size: float = ...,
    return_num_detected: Literal[True],
) -> tuple[np.ndarray, int]: ...


def select_regions(
    boxes: np.ndarray,
    scores: np.ndarray,
    *,
    image_size: tuple[int, int],
    num_regions: int = 36,
    iou_threshold: float = 0.6,
    min_score: float = 0.05,
    min_size: float = 4.0,
    return_num_detected: bool = False,
) -> np.ndarray | tuple[np.ndarray, int]:
    """Exactly ``num_regions`` boxes inside the image, detections first, then grid fill.

    Detections are clipped to the image, those scoring below ``min_score`` or narrower/shorter
    than ``min_size`` pixels are dropped, and class-agnostic NMS at ``iou_threshold`` removes
    duplicates (the detector's own NMS is per class). The best ``num_regions`` survivors are kept.
    When fewer survive, the list is filled in a fixed order from the whole-image box and the cells
    of 2x2, 3x3, 4x4, ... grids, skipping any fill box that overlaps an already chosen box by
    more than ``iou_threshold`` (and taking the skipped ones last if still short), so the filled
    regions add coverage, not copies.

    Args:
        boxes: Candidate pixel boxes ``(K, 4)``.
        scores: Their confidences ``(K,)``.
        image_size: ``(height, width)`` of the image the boxes are in.
        num_regions: ``R``, the number of boxes returned.
        iou_threshold: Overlap above which a lower-scoring box is suppressed.
        min_score: Confidence below which a detection is ignored.
        min_size: Smallest box side in pixels a detection may have.
        return_num_detected: Also return how many of the boxes are detections.

    Returns:
        ``(R, 4)`` float32 boxes with ``0 <= x1 < x2 <= width`` and ``0 <= y1 < y2 <= height``;
        with ``return_num_detected``, the pair ``(boxes, num_detected)``.
    """
    h, w = image_size
    if h <= 0 or w <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
    ok = (
        np.isfinite(boxes).all(1)
        & np.isfinite(scores)
        & (scores >= min_score)
        & (boxes[:, 2] - boxes[:, 0] >= min_size)
        & (boxes[:, 3] - boxes[:, 1] >= min_size)
    )
    boxes, scores = boxes[ok], scores[ok]
    chosen = boxes[nms(boxes, scores, iou_threshold=iou_threshold)[:num_regions]]
    num_detected = len(chosen)

    if num_detected < num_regions:
        fill: list[np.ndarray] = [np.array([[0.0, 0.0, w, h]])]
        total, n = 1, 2
        while total < 2 * num_regions + 1:  # enough candidates even when half are skipped
            fill.append(grid_boxes((h, w), n).astype(np.float64))
            total += n * n
            n += 1
        candidates = np.concatenate(fill)
        picked = list(chosen)
        skipped: list[np.ndarray] = []
        for box in candidates:
            if len(picked) == num_regions:
                break
            if picked and box_iou(box[None], np.asarray(picked)).max() > iou_threshold:
                skipped.append(box)
            else:
                picked.append(box)
        picked.extend(skipped[: num_regions - len(picked)])
        chosen = np.asarray(picked).reshape(-1, 4)
    out = chosen.astype(np.float32)
    return (out, num_detected) if return_num_detected else out


def grid_size(num_regions: int) -> int:
    """Side of the square grid with ``num_regions`` cells (36 -> 6); raises if not a square."""
    side = math.isqrt(num_regions)
    if side * side != num_regions:
        raise ValueError(f"grid mode needs a square number of regions, got {num_regions}")
    return side
