"""Tests for scan.evaluate.metrics: vectorised ranks against the plain loops of tests/reference.py."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import reference

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import original_port
from scan.evaluate.metrics import (
    METRIC_KEYS,
    default_caption_image,
    i2t_ranks,
    retrieval_metrics,
    t2i_ranks,
)


def ref_i2t_ranks(scores: np.ndarray, caption_image: np.ndarray) -> np.ndarray:
    return np.array(reference.i2t_ranks(scores.tolist(), caption_image.tolist()))


def ref_t2i_ranks(scores: np.ndarray, caption_image: np.ndarray) -> np.ndarray:
    return np.array(reference.t2i_ranks(scores.tolist(), caption_image.tolist()))


def ref_metrics(scores: np.ndarray, caption_image: np.ndarray) -> dict[str, float]:
    return reference.metrics(scores.tolist(), caption_image.tolist())


def random_caption_image(rng: np.random.Generator, n: int, m: int) -> np.ndarray:
    """Shuffled map where every image has at least one caption and counts vary."""
    ci = np.concatenate([np.arange(n), rng.integers(0, n, size=m - n)])
    return rng.permutation(ci)


# ----------------------------------------------------------------------------------------------
# Brute force vs vectorised.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ties", [False, True], ids=["continuous", "integer-ties"])
@pytest.mark.parametrize("layout", ["default", "random"])
def test_ranks_match_reference(seed: int, ties: bool, layout: str) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 25))
    if layout == "default":
        m = n * int(rng.integers(1, 6))
        ci = default_caption_image(n, m)
        ci_arg = None
    else:
        m = n + int(rng.integers(0, 60))
        ci = random_caption_image(rng, n, m)
        ci_arg = ci
    # Integer scores from a tiny range make ties the common case, not the exception.
    scores = rng.integers(0, 4, size=(n, m)).astype(float) if ties else rng.normal(size=(n, m))
    np.testing.assert_array_equal(i2t_ranks(scores, ci_arg), ref_i2t_ranks(scores, ci))
    np.testing.assert_array_equal(t2i_ranks(scores, ci_arg), ref_t2i_ranks(scores, ci))
    got = retrieval_metrics(scores, ci_arg)
    want = ref_metrics(scores, ci)
    assert list(got) == list(METRIC_KEYS)
    for key in METRIC_KEYS:
        assert got[key] == pytest.approx(want[key], abs=1e-9), key


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 1000])
def test_chunking_does_not_change_ranks(chunk_size: int) -> None:
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 3, size=(20, 100)).astype(float)
    ci = random_caption_image(rng, 20, 100)
    np.testing.assert_array_equal(i2t_ranks(scores, ci, chunk_size=chunk_size), ref_i2t_ranks(scores, ci))
    np.testing.assert_array_equal(t2i_ranks(scores, ci, chunk_size=chunk_size), ref_t2i_ranks(scores, ci))


def test_torch_and_float32_inputs_match_numpy() -> None:
    rng = np.random.default_rng(2)
    scores = rng.integers(-2, 3, size=(10, 50)).astype(np.float32)
    ci = random_caption_image(rng, 10, 50)
    want = retrieval_metrics(scores.astype(np.float64), ci)
    assert retrieval_metrics(scores, ci) == want
    assert retrieval_metrics(torch.from_numpy(scores), torch.from_numpy(ci)) == want
    assert retrieval_metrics(torch.from_numpy(scores).to(torch.bfloat16), ci) == want
    assert retrieval_metrics(scores.astype(np.int64), ci) == want
    ranks = i2t_ranks(torch.from_numpy(scores).requires_grad_(), ci)
    np.testing.assert_array_equal(ranks, ref_i2t_ranks(scores, ci))


def test_large_matrix_is_vectorised_and_correct_on_a_sample() -> None:
    # 500 x 2500 in a fraction of a second; check a few rows/columns against the reference.
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 50, size=(500, 2500)).astype(np.float32)
    ci = default_caption_image(500, 2500)
    r_i2t, r_t2i = i2t_ranks(scores, ci), t2i_ranks(scores, ci)
    for i in (0, 123, 499):
        best = scores[i, ci == i].max()
        assert r_i2t[i] == 1 + np.sum(scores[i, ci != i] >= best)
    for j in (0, 1234, 2499):
        own = scores[ci[j], j]
        assert r_t2i[j] == 1 + np.sum(np.delete(scores[:, j], ci[j]) >= own)


# ----------------------------------------------------------------------------------------------
# Known answers.
# ----------------------------------------------------------------------------------------------


def test_default_caption_image() -> None:
    np.testing.assert_array_equal(default_caption_image(3, 15), np.repeat(np.arange(3), 5))
    np.testing.assert_array_equal(default_caption_image(4, 4), np.arange(4))
    with pytest.raises(ValueError, match="multiple"):
        default_caption_image(3, 14)
    with pytest.raises(ValueError):
        default_caption_image(0, 5)
    with pytest.raises(ValueError, match="multiple"):
        retrieval_metrics(np.zeros((3, 14)))


def test_perfect_diagonal_gives_r1_100() -> None:
    n, per = 50, 5
    ci = default_caption_image(n, n * per)
    scores = np.zeros((n, n * per))
    scores[ci, np.arange(n * per)] = 1.0  # every caption scores 1 with its own image only
    m = retrieval_metrics(scores)
    for d in ("i2t", "t2i"):
        assert m[f"{d}_r1"] == m[f"{d}_r5"] == m[f"{d}_r10"] == 100.0
        assert m[f"{d}_medr"] == m[f"{d}_meanr"] == 1.0
    assert m["rsum"] == 600.0


def test_constant_scores_are_not_rewarded() -> None:
    # A model that scores everything equally must not get a perfect (optimistic) score: with ties
    # counted against the ground truth it gets the worst possible rank, never above chance.
    n, per = 100, 5
    m_caps = n * per
    m = retrieval_metrics(np.full((n, m_caps), 0.3))
    assert m["i2t_r1"] == m["i2t_r5"] == m["i2t_r10"] == 0.0
    assert m["t2i_r1"] == m["t2i_r5"] == m["t2i_r10"] == 0.0
    assert m["i2t_medr"] == m["i2t_meanr"] == 1 + (m_caps - per)  # behind every other caption
    assert m["t2i_medr"] == m["t2i_meanr"] == n  # behind every other image
    assert m["t2i_r10"] <= 100.0 * 10 / n  # chance level of R@10 over n images
    assert m["rsum"] == 0.0


def test_five_captions_per_image_bookkeeping() -> None:
    # 3 images x 5 captions; image 0's captions are 0..4. Distractors are other images' captions.
    n, per = 3, 5
    scores = np.full((n, n * per), -1.0)
    # Image 0: own captions 10, 9, 8, 7, 6; one distractor at 8.5 -> best gt (10) is rank 1,
    # the other ground truths (9, 8, ...) are not counted as competitors.
    scores[0, 0:5] = [10, 9, 8, 7, 6]
    scores[0, 7] = 8.5
    # Image 1: own captions 5..9 score 5 (best) and lower; distractors at 6, 6 and 5 (a tie).
    scores[1, 5:10] = [1, 5, 2, 3, 4]
    scores[1, [0, 12]] = 6.0
    scores[1, 14] = 5.0
    # Image 2: best own caption (index 13) is beaten by exactly 10 distractors.
    scores[2, 10:15] = [0, 0, 0, 3, 0]
    scores[2, 0:10] = 4.0
    ranks = i2t_ranks(scores)
    np.testing.assert_array_equal(ranks, [1, 4, 11])
    m = retrieval_metrics(scores)
    assert m["i2t_r1"] == pytest.approx(100 / 3)
    assert m["i2t_r5"] == pytest.approx(200 / 3)
    assert m["i2t_r10"] == pytest.approx(200 / 3)
    assert m["i2t_medr"] == 4.0
    assert m["i2t_meanr"] == pytest.approx(16 / 3)
    want_t2i = ref_t2i_ranks(scores, default_caption_image(n, n * per))
    np.testing.assert_array_equal(t2i_ranks(scores), want_t2i)


def test_t2i_ties_count_against_ground_truth() -> None:
    scores = np.array([[1.0, 0.0], [1.0, 2.0], [0.5, 2.0]])  # 3 images, 2 captions
    ci = np.array([0, 1])
    # Caption 0: its image 0 ties with image 1 -> rank 2. Caption 1: image 1 ties image 2 -> 2.
    np.testing.assert_array_equal(t2i_ranks(scores, ci), [2, 2])
    # Image 2 has no caption: a plain distractor for t2i, but its i2t rank is undefined.
    with pytest.raises(ValueError, match="no caption"):
        i2t_ranks(scores, ci)
    with pytest.raises(ValueError, match="no caption"):
        retrieval_metrics(scores, ci)


def test_infinite_scores_are_ranked_pessimistically() -> None:
    scores = np.array([[np.inf, np.inf], [-np.inf, -np.inf]])
    np.testing.assert_array_equal(i2t_ranks(scores, np.array([0, 1])), [2, 2])
    np.testing.assert_array_equal(t2i_ranks(scores, np.array([0, 1])), [1, 2])


# ----------------------------------------------------------------------------------------------
# Validation.
# ----------------------------------------------------------------------------------------------


def test_invalid_inputs_raise() -> None:
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.array([[np.nan, 1.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="2-D"):
        retrieval_metrics(np.zeros(5))
    with pytest.raises(ValueError, match="shape"):
        i2t_ranks(np.zeros((2, 4)), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        t2i_ranks(np.zeros((2, 4)), np.array([0, 1, 2, 1]))
    with pytest.raises(ValueError, match="integer"):
        t2i_ranks(np.zeros((2, 2)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="chunk_size"):
        t2i_ranks(np.zeros((2, 2)), chunk_size=0)


# ----------------------------------------------------------------------------------------------
# Ties: ours against the authors' argsort order.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_ranks_equal_the_originals_without_ties_and_are_never_better_with_them(seed: int) -> None:
    """The authors rank by `numpy.argsort`, which breaks a tie by position; we rank the truth last.

    Without ties the two agree exactly (and so do all the metrics); with them ours is the
    pessimistic one, item by item (README, "Departures from the original code").
    """
    rng = np.random.default_rng(seed)
    n = 12
    continuous = rng.normal(size=(n, 5 * n))
    (r1, r5, r10, medr, meanr), original = original_port.i2t(continuous)
    np.testing.assert_array_equal(i2t_ranks(continuous), original + 1)
    ours = retrieval_metrics(continuous)
    got = (ours["i2t_r1"], ours["i2t_r5"], ours["i2t_r10"], ours["i2t_medr"], ours["i2t_meanr"])
    assert got == pytest.approx((r1, r5, r10, medr, meanr), abs=1e-9)
    (r1, r5, r10, medr, meanr), original = original_port.t2i(continuous)
    np.testing.assert_array_equal(t2i_ranks(continuous), original + 1)
    got = (ours["t2i_r1"], ours["t2i_r5"], ours["t2i_r10"], ours["t2i_medr"], ours["t2i_meanr"])
    assert got == pytest.approx((r1, r5, r10, medr, meanr), abs=1e-9)

    tied = rng.integers(0, 3, size=(n, 5 * n)).astype(float)
    assert (i2t_ranks(tied) >= original_port.i2t(tied)[1] + 1).all()
    assert (t2i_ranks(tied) >= original_port.t2i(tied)[1] + 1).all()
    assert (i2t_ranks(tied) > original_port.i2t(tied)[1] + 1).any()  # ties did occur, and mattered
