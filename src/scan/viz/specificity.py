"""Word specificity: how differently a caption's words attend over the image regions (SCAN Sec. 3.2).

SCAN's text-to-image attention gives each word ``t`` a softmax ``alpha_t`` over the ``R`` regions.
If every word attends the same way the per-word pictures are all alike and the attention says
nothing about which word grounds where. :func:`word_specificity` puts a number on that: the mean
pairwise Jensen-Shannon divergence between the words' distributions, in bits, so it lies in
``[0, 1]``: 0 when all words attend identically (uniform attention included), 1 when every pair of
words attends to disjoint sets of regions. Which rows count is the caller's choice, e.g. the rows of
content words only (:data:`STOP_WORDS` lists the usual function words).

numpy only: it is a metric over attention maps, usable from evaluation scripts without matplotlib
or torch (pass ``tensor.cpu().numpy()``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = ["STOP_WORDS", "mean_word_specificity", "pairwise_js_bits", "word_specificity"]

# English function words that name nothing in a photo: leave them out to measure content words.
STOP_WORDS: frozenset[str] = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "of",
        "in",
        "on",
        "at",
        "to",
        "for",
        "from",
        "with",
        "by",
        "into",
        "onto",
        "over",
        "under",
        "up",
        "down",
        "out",
        "off",
        "as",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "am",
        "it",
        "its",
        "it's",
        "this",
        "that",
        "these",
        "those",
        "there",
        "here",
        "his",
        "her",
        "their",
        "them",
        "they",
        "he",
        "she",
        "him",
        "we",
        "you",
        "i",
        "my",
        "our",
        "your",
        "some",
        "while",
        "near",
        "next",
        "than",
        "then",
        "so",
        "very",
        ".",
        ",",
        ";",
        ":",
        "!",
        "?",
        "'",
        '"',
        "-",
    ]
)


def _distributions(weights: Any) -> np.ndarray:
    """``(W, R)`` non-negative rows, each rescaled to sum to 1 (softmax rows already do, up to rounding)."""
    if hasattr(weights, "detach"):  # a torch tensor; no torch import needed
        weights = weights.detach().cpu().numpy()
    rows = np.asarray(weights, dtype=np.float64)
    if rows.ndim != 2:
        raise ValueError(f"weights must be (W, R), got shape {rows.shape}")
    if not np.all(np.isfinite(rows)) or np.any(rows < 0):
        raise ValueError("weights must be finite and non-negative")
    totals = rows.sum(axis=1, keepdims=True)  # (W, 1)
    if np.any(totals <= 0):
        raise ValueError("every row of weights needs some positive mass")
    return rows / totals  # (W, R)


def pairwise_js_bits(weights: Any) -> np.ndarray:
    """The Jensen-Shannon divergence in bits between every pair of rows.

    ``JS(p, q) = (KL(p || m) + KL(q || m)) / 2`` with ``m = (p + q) / 2`` and ``0 log 0 = 0``;
    with log base 2 it is bounded by 1.

    Args:
        weights: ``(W, R)`` rows, each a distribution over the ``R`` regions.

    Returns:
        ``(W, W)`` symmetric, zero on the diagonal, in ``[0, 1]``.
    """
    p = _distributions(weights)  # (W, R)
    m = (p[:, None, :] + p[None, :, :]) / 2  # (W, W, R)
    with np.errstate(divide="ignore", invalid="ignore"):
        # p_i log2(p_i / m_ij), 0 where p_i == 0 (then m_ij may be 0 too).
        terms = np.where(p[:, None, :] > 0, p[:, None, :] * np.log2(p[:, None, :] / m), 0.0)  # (W, W, R)
    kl_to_mid = terms.sum(axis=2)  # (W, W): KL(p_i || m_ij)
    js = (kl_to_mid + kl_to_mid.T) / 2  # (W, W)
    return np.clip(js, 0.0, 1.0)  # rounding can step a hair outside [0, 1]


def word_specificity(weights: Any) -> float:
    """Mean pairwise Jensen-Shannon divergence (bits) between the words' attention distributions.

    Args:
        weights: ``(W, R)`` word-to-region attention of the words to compare, ``W >= 2``; each row
            is rescaled to sum to 1.

    Returns:
        The mean over the ``W (W - 1) / 2`` word pairs, in ``[0, 1]``: 0 when all words attend
        alike, 1 when all attend to disjoint regions.
    """
    js = pairwise_js_bits(weights)  # (W, W)
    count = len(js)
    if count < 2:
        raise ValueError(f"word specificity compares words: need at least 2 rows, got {count}")
    upper = np.triu_indices(count, k=1)
    return float(js[upper].mean())


def mean_word_specificity(weights: Iterable[Any]) -> float:
    """:func:`word_specificity` averaged over captions (each caption counts once).

    Args:
        weights: one ``(W, R)`` array per caption (``R`` may differ between them). Captions with
            fewer than two rows have no pairs to compare and are left out.

    Returns:
        The mean over the captions that have at least two rows.
    """
    values = [word_specificity(w) for w in weights if np.shape(w)[0] >= 2]
    if not values:
        raise ValueError("no caption with at least 2 rows of attention")
    return float(np.mean(values))
