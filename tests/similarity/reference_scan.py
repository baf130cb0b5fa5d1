"""A slow, obviously-correct Stacked Cross Attention, written straight from docs/spec.md.

One Python loop per caption and per image, the attended vectors formed explicitly, every
caption sliced to its real length (the way the authors' loop did it), plain formulas for every
norm and pooling. Tests compare every fast path of the package against this.
"""

from __future__ import annotations

import torch

EPS = 1e-8


def _normalise(scores: torch.Tensor, norm: str) -> torch.Tensor:
    """scores: (context, query); normalise each row over the query axis (dim 1)."""
    if norm.startswith("clipped"):
        scores = torch.where(scores > 0, scores, 0.1 * scores)  # LeakyReLU(0.1)
    if norm in ("l2norm", "clipped_l2norm"):
        return scores / (torch.sqrt((scores**2).sum(1, keepdim=True)) + EPS)
    if norm in ("l1norm", "clipped_l1norm"):
        return scores / (scores.abs().sum(1, keepdim=True) + EPS)
    if norm == "softmax":
        e = torch.exp(scores - scores.max(1, keepdim=True).values)
        return e / e.sum(1, keepdim=True)
    assert norm in ("clipped", "no_norm"), norm
    return scores


def _attend_one(query: torch.Tensor, context: torch.Tensor, norm: str, smooth: float) -> torch.Tensor:
    """query (Q, D), context (C, D) -> attended (Q, D)."""
    s = context @ query.T  # (C, Q)
    s = _normalise(s, norm)
    attended = []
    for q in range(query.shape[0]):
        logits = smooth * s[:, q]
        w = torch.exp(logits - logits.max())
        w = w / w.sum()
        attended.append((w[:, None] * context).sum(0))
    return torch.stack(attended)


def _cos(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x * y).sum(-1) / torch.clamp(x.norm(dim=-1) * y.norm(dim=-1), min=EPS)


def _pool(r: torch.Tensor, agg: str, lambda_lse: float) -> torch.Tensor:
    if agg == "LogSumExp":
        m = r.max()
        return (m * lambda_lse + torch.log(torch.exp(lambda_lse * (r - m)).sum())) / lambda_lse
    if agg == "Mean":
        return r.mean()
    if agg == "Max":
        return r.max()
    assert agg == "Sum", agg
    return r.sum()


def reference_scores(
    images: torch.Tensor,
    captions: torch.Tensor,
    lengths,
    *,
    direction: str,
    norm: str,
    smooth: float,
    agg: str,
    lambda_lse: float,
) -> torch.Tensor:
    """images (N, R, D), captions (M, W, D) padded, lengths (M,) -> scores (N, M)."""
    rows = []
    for n in range(images.shape[0]):
        row = []
        for m in range(captions.shape[0]):
            words = captions[m, : int(lengths[m])]  # (W_m, D): padding sliced away
            regions = images[n]  # (R, D)
            if direction == "t2i":
                attended = _attend_one(words, regions, norm, smooth)
                relevance = _cos(words, attended)
            else:
                attended = _attend_one(regions, words, norm, smooth)
                relevance = _cos(regions, attended)
            row.append(_pool(relevance, agg, lambda_lse))
        rows.append(torch.stack(row))
    return torch.stack(rows)


def reference(images: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor, opts) -> torch.Tensor:
    """`reference_scores` with the options of an `AttentionOptions`-like object (read, not imported)."""
    return reference_scores(
        images, captions, lengths,
        direction=opts.direction, norm=opts.norm, smooth=opts.smooth, agg=opts.agg, lambda_lse=opts.lambda_lse,
    )  # fmt: skip
