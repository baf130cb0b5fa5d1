"""The pieces of Stacked Cross Attention as pure tensor functions (paper section 3.1, 3.2).

`attend` is the paper's attention step for one batch of (query, context) pairs: raw cosine
scores, a normalisation over the query axis (`raw_feature_norm`), a softmax with inverse
temperature `smooth` (the paper's lambda_1) over the context axis, and the weighted sum of the
context. `relevance` and `pool` turn the attended vectors into one image-sentence score.
Every function takes masks so that padded words never influence a score: the original code
had no masks and relied on slicing each caption to its length inside a Python loop.

These functions take the options as plain keywords, the readable form of the maths; the scoring
paths take them checked and bundled as `scan.similarity.options.AttentionOptions`.

Shapes: `N` images, `M` captions, `R` regions, `W` words, `D` embedding dims.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scan.errors import ConfigError
from scan.similarity.options import NORMS, POOLINGS

EPS = 1e-8  # the original code's epsilon for norms and cosine denominators


def normalize_raw_scores(
    scores: torch.Tensor, *, norm: str, dim: int, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Normalise raw region-word scores over the query axis `dim`.

    Args:
        scores: raw dot products, any shape.
        norm: a key of `options.NORMS`; `clipped_*` apply LeakyReLU(0.1) first, as the
            authors' code did (the paper says "clipped at zero").
        dim: the query axis (words for t2i, regions for i2t).
        mask: broadcastable to `scores`, True where the query item is real. Masked items are
            left out of the norm's sum and come out as zero.
    """
    if norm in ("clipped_l2norm", "clipped_l1norm", "clipped"):
        scores = F.leaky_relu(scores, 0.1)
    if mask is not None:
        if norm == "softmax":
            return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=dim).masked_fill(~mask, 0.0)
        scores = scores.masked_fill(~mask, 0.0)
    if norm in ("l2norm", "clipped_l2norm"):
        # The clamp only matters for an all-zero slice (e.g. a padded word's column in i2t), where
        # sqrt's gradient at 0 would be inf * 0 = NaN; the value there is 0 either way.
        return scores / (scores.pow(2).sum(dim=dim, keepdim=True).clamp(min=1e-30).sqrt() + EPS)
    if norm in ("l1norm", "clipped_l1norm"):
        # The released code called an undefined `l1norm_d` here; this is the L1 analogue of l2norm.
        return scores / (scores.abs().sum(dim=dim, keepdim=True) + EPS)
    if norm == "softmax":
        return torch.softmax(scores, dim=dim)
    if norm in ("clipped", "no_norm"):
        return scores
    raise ConfigError(f"raw_feature_norm: {norm!r} is not a raw-feature norm; choose one of {list(NORMS)}")


def attend(
    query: torch.Tensor,
    context: torch.Tensor,
    *,
    query_mask: torch.Tensor | None = None,
    context_mask: torch.Tensor | None = None,
    norm: str = "clipped_l2norm",
    smooth: float = 9.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attend each query item over the context items (one batch of pairs).

    Args:
        query: `(B, Q, D)` unit vectors (words for t2i, regions for i2t).
        context: `(B, C, D)` unit vectors.
        query_mask: `(B, Q)` True at real query items.
        context_mask: `(B, C)` True at real context items.
        norm: normalisation of raw scores over the query axis.
        smooth: lambda_1, the inverse temperature of the softmax over the context axis.

    Returns:
        attended: `(B, Q, D)` one attended context vector per query item.
        weights: `(B, Q, C)` the attention weights (rows sum to 1 over real context items).
    """
    raw = torch.bmm(context, query.transpose(1, 2))  # (B, C, Q)
    q_mask = None if query_mask is None else query_mask[:, None, :]  # (B, 1, Q)
    normed = normalize_raw_scores(raw, norm=norm, dim=2, mask=q_mask)  # (B, C, Q)
    logits = smooth * normed.transpose(1, 2)  # (B, Q, C)
    if context_mask is not None:
        logits = logits.masked_fill(~context_mask[:, None, :], float("-inf"))
    weights = torch.softmax(logits, dim=2)  # (B, Q, C)
    attended = torch.bmm(weights, context)  # (B, Q, D)
    return attended, weights


def cosine(x: torch.Tensor, y: torch.Tensor, *, dim: int = -1) -> torch.Tensor:
    """Cosine similarity with the original code's clamp of the norm product at `EPS`."""
    return (x * y).sum(dim) / (x.norm(dim=dim) * y.norm(dim=dim)).clamp(min=EPS)


def pool(
    relevance: torch.Tensor,
    *,
    agg: str,
    lambda_lse: float = 6.0,
    mask: torch.Tensor | None = None,
    dim: int = -1,
) -> torch.Tensor:
    """Pool per-item relevances into one score (paper eq. 10 and 11).

    `LogSumExp` is `log(sum(exp(lambda_lse * R))) / lambda_lse`, computed with the max shift
    (the original code exponentiated directly and could overflow for large lambda_lse).
    """
    if mask is None:
        mask = torch.ones_like(relevance, dtype=torch.bool)
    if agg == "LogSumExp":
        return torch.logsumexp((lambda_lse * relevance).masked_fill(~mask, float("-inf")), dim=dim) / lambda_lse
    if agg == "Max":
        return relevance.masked_fill(~mask, float("-inf")).amax(dim=dim)
    total = relevance.masked_fill(~mask, 0.0).sum(dim=dim)
    if agg == "Sum":
        return total
    if agg == "Mean":
        return total / mask.sum(dim=dim).clamp(min=1).to(relevance.dtype)
    raise ConfigError(f"agg: {agg!r} is not a pooling; choose one of {list(POOLINGS)}")
