"""Tests for scan.evaluate.protocols (1K / COCO 1K x5 / 5K, ensembles) and scan.evaluate.report.

The COCO tests use a 500-image / 2500-caption split in 5 folds of 100 (the 5000 / 25000 split
scaled down by 10 so the suite stays fast); every expected number is known by construction.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import reference
from scan.evaluate.metrics import METRIC_KEYS, default_caption_image, retrieval_metrics
from scan.evaluate.protocols import (
    PROTOCOLS,
    ensemble_scores,
    evaluate_protocol,
    evaluate_scores,
    protocol_blocks,
)
from scan.evaluate.report import format_markdown_table, format_table, write_json

# Small splits under the paper's protocol names: the size warning is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:protocol .* is defined on a split")

NUM_FOLDS = 5
FOLD_IMAGES = 100  # images per fold (1000 in the real COCO 1K protocol)
PER_IMAGE = 5
N = NUM_FOLDS * FOLD_IMAGES
M = N * PER_IMAGE
CI = default_caption_image(N, M)


def block_diagonal_scores(correct_per_fold: list[int], *, off_block: float, seed: int = 0) -> np.ndarray:
    """Within each fold: noise in [0.1, 1); the first ``k_f`` images of fold ``f`` score 2 with
    their own captions (rank 1 both ways), the others score 0 (worst rank within the fold).
    Every entry outside the diagonal blocks is ``off_block``."""
    rng = np.random.default_rng(seed)
    scores = np.full((N, M), off_block)  # (N, M)
    for f, k in enumerate(correct_per_fold):
        rows = slice(f * FOLD_IMAGES, (f + 1) * FOLD_IMAGES)
        cols = slice(f * FOLD_IMAGES * PER_IMAGE, (f + 1) * FOLD_IMAGES * PER_IMAGE)
        scores[rows, cols] = rng.uniform(0.1, 1.0, size=(FOLD_IMAGES, FOLD_IMAGES * PER_IMAGE))
        for local in range(FOLD_IMAGES):
            i = f * FOLD_IMAGES + local
            scores[i, i == CI] = 2.0 if local < k else 0.0
    return scores


# ----------------------------------------------------------------------------------------------
# COCO 1K (5 folds) vs 5K, answers known by construction.
# ----------------------------------------------------------------------------------------------


def test_coco1k_mean_of_known_folds_ignores_cross_fold_entries() -> None:
    k = [10, 25, 40, 65, 90]  # images with a perfect match in each fold (= that fold's R@1, %)
    # Off-block entries are *higher* than every in-fold score: coco1k must never look at them.
    scores = block_diagonal_scores(k, off_block=5.0)
    out = evaluate_scores(scores, protocol="coco1k", num_folds=NUM_FOLDS)
    assert len(out["folds"]) == NUM_FOLDS
    fold_m = FOLD_IMAGES * PER_IMAGE
    for fold, kf in zip(out["folds"], k, strict=True):
        for d in ("i2t", "t2i"):
            assert fold[f"{d}_r1"] == fold[f"{d}_r5"] == fold[f"{d}_r10"] == pytest.approx(kf)
        # Wrong images sit behind every other caption / image of their fold.
        worst_i2t, worst_t2i = 1 + fold_m - PER_IMAGE, FOLD_IMAGES
        assert fold["i2t_meanr"] == pytest.approx((kf + (100 - kf) * worst_i2t) / 100)
        assert fold["t2i_meanr"] == pytest.approx((kf + (100 - kf) * worst_t2i) / 100)
        assert fold["rsum"] == pytest.approx(6 * kf)
    mean_k = sum(k) / len(k)  # 46.0
    for d in ("i2t", "t2i"):
        for r in (1, 5, 10):
            assert out[f"{d}_r{r}"] == pytest.approx(mean_k)
    assert out["rsum"] == pytest.approx(6 * mean_k)
    for key in METRIC_KEYS:
        assert out[key] == pytest.approx(np.mean([f[key] for f in out["folds"]]))


def test_cross_fold_distractors_count_in_coco5k_only() -> None:
    scores = block_diagonal_scores([FOLD_IMAGES] * NUM_FOLDS, off_block=-1.0)
    # Each image i of fold 0 gets one distractor caption from fold 1 (the first caption of image
    # i + 100) that beats its own captions (3 > 2): i2t rank 2 for those 100 images, and t2i
    # rank 2 for those 100 captions, in 5K only.
    for i in range(FOLD_IMAGES):
        scores[i, PER_IMAGE * (i + FOLD_IMAGES)] = 3.0
    one_k = evaluate_scores(scores, protocol="coco1k")
    for d in ("i2t", "t2i"):
        assert one_k[f"{d}_r1"] == 100.0
        assert one_k[f"{d}_meanr"] == 1.0
    assert one_k["rsum"] == 600.0
    five_k = evaluate_scores(scores, protocol="coco5k")
    assert "folds" not in five_k
    assert five_k["i2t_r1"] == pytest.approx(100.0 * (N - FOLD_IMAGES) / N)  # 80.0
    assert five_k["t2i_r1"] == pytest.approx(100.0 * (M - FOLD_IMAGES) / M)  # 96.0
    assert five_k["i2t_r5"] == five_k["t2i_r5"] == 100.0
    assert five_k["i2t_meanr"] == pytest.approx((N + FOLD_IMAGES) / N)  # 1.2
    assert five_k["t2i_meanr"] == pytest.approx((M + FOLD_IMAGES) / M)  # 1.04
    assert five_k["rsum"] == pytest.approx(80.0 + 96.0 + 400.0)


def test_non_contiguous_captions_are_selected_by_mask() -> None:
    k = [3, 50, 77, 100, 0]
    scores = block_diagonal_scores(k, off_block=5.0, seed=1)
    perm = np.random.default_rng(0).permutation(M)
    shuffled, ci = scores[:, perm], CI[perm]  # same pairs, captions in random order
    for protocol in ("coco1k", "coco5k"):
        want = evaluate_scores(scores, protocol=protocol)
        got = evaluate_scores(shuffled, protocol=protocol, caption_image=ci)
        for key in METRIC_KEYS:
            assert got[key] == pytest.approx(want[key]), (protocol, key)
    got = evaluate_scores(shuffled, protocol="coco1k", caption_image=ci)
    assert [f["i2t_r1"] for f in got["folds"]] == pytest.approx(k)


def test_fold_count_is_a_parameter() -> None:
    scores = block_diagonal_scores([20, 40, 60, 80, 100], off_block=5.0)
    # 10 folds of 50: the k_f correct images of each 100-image block fill its first half first,
    # so e.g. k = 60 gives folds of 50/50 (100%) and 10/50 (20%) correct.
    out = evaluate_scores(scores, protocol="coco1k", num_folds=10)
    assert len(out["folds"]) == 10
    want = [40, 0, 80, 0, 100, 20, 100, 60, 100, 100]
    assert [f["i2t_r1"] for f in out["folds"]] == pytest.approx(want)
    assert out["i2t_r1"] == pytest.approx(np.mean(want))


# ----------------------------------------------------------------------------------------------
# Whole-split protocols, lazy scoring, errors.
# ----------------------------------------------------------------------------------------------


def test_whole_split_protocols_agree_with_retrieval_metrics() -> None:
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 5, size=(40, 200)).astype(float)
    want = retrieval_metrics(scores)
    for protocol in ("1k", "all", "coco5k", "ALL"):
        assert evaluate_scores(scores, protocol=protocol) == want
    assert evaluate_scores(torch.from_numpy(scores), protocol="1k") == want
    assert set(PROTOCOLS) == {"1k", "all", "coco1k", "coco5k"}


def test_evaluate_protocol_scores_only_the_diagonal_blocks() -> None:
    scores = block_diagonal_scores([5, 15, 35, 55, 95], off_block=5.0)
    calls: list[tuple[np.ndarray, np.ndarray]] = []

    def score_fn(images: np.ndarray, captions: np.ndarray) -> torch.Tensor:
        calls.append((images.copy(), captions.copy()))
        return torch.from_numpy(scores[np.ix_(images, captions)])

    out = evaluate_protocol(score_fn, num_images=N, caption_image=CI, protocol="coco1k")
    assert len(calls) == NUM_FOLDS
    for f, (images, captions) in enumerate(calls):
        np.testing.assert_array_equal(images, np.arange(f * 100, (f + 1) * 100))
        np.testing.assert_array_equal(captions, np.arange(f * 500, (f + 1) * 500))
    assert sum(i.size * c.size for i, c in calls) == N * M // NUM_FOLDS  # 5x cheaper than 5K
    assert out == evaluate_scores(scores, protocol="coco1k")

    calls.clear()
    out5k = evaluate_protocol(score_fn, num_images=N, caption_image=CI, protocol="coco5k")
    assert len(calls) == 1 and calls[0][0].size == N and calls[0][1].size == M
    assert out5k == evaluate_scores(scores, protocol="coco5k")


def test_protocol_blocks_with_interleaved_captions() -> None:
    ci = np.array([3, 0, 2, 1, 0, 3, 1, 2])  # 4 images, 2 folds of 2
    blocks = protocol_blocks(num_images=4, caption_image=ci, protocol="coco1k", num_folds=2)
    np.testing.assert_array_equal(blocks[0][0], [0, 1])
    np.testing.assert_array_equal(blocks[0][1], [1, 3, 4, 6])
    np.testing.assert_array_equal(blocks[1][0], [2, 3])
    np.testing.assert_array_equal(blocks[1][1], [0, 2, 5, 7])


def test_protocol_errors() -> None:
    scores = np.zeros((7, 35))
    with pytest.raises(ValueError, match="not divisible"):
        evaluate_scores(scores, protocol="coco1k")
    with pytest.raises(ValueError, match="unknown protocol"):
        evaluate_scores(scores, protocol="coco2k")
    with pytest.raises(ValueError, match=r"returned shape \(2, 2\)"):
        evaluate_protocol(
            lambda i, c: np.zeros((2, 2)),
            num_images=10,
            caption_image=default_caption_image(10, 50),
            protocol="coco1k",
        )
    with pytest.raises(ValueError, match="caption_image"):
        evaluate_protocol(lambda i, c: None, num_images=5, caption_image=None, protocol="all")


# ----------------------------------------------------------------------------------------------
# Ensembles.
# ----------------------------------------------------------------------------------------------


def test_ensemble_is_elementwise_mean() -> None:
    rng = np.random.default_rng(3)
    a, b, c = (rng.normal(size=(4, 20)) for _ in range(3))
    np.testing.assert_allclose(ensemble_scores([a, b, c]), (a + b + c) / 3)
    np.testing.assert_allclose(ensemble_scores([a, torch.from_numpy(b).float()]), (a + b.astype(np.float32)) / 2)
    np.testing.assert_array_equal(ensemble_scores([a]), a)


def test_ensemble_shape_errors() -> None:
    with pytest.raises(ValueError, match=r"\(4, 20\).*\(4, 19\)"):
        ensemble_scores([np.zeros((4, 20)), np.zeros((4, 19))])
    with pytest.raises(ValueError, match="at least one"):
        ensemble_scores([])


# ----------------------------------------------------------------------------------------------
# Report.
# ----------------------------------------------------------------------------------------------

RESULTS = {
    "t2i AVG": {
        "i2t_r1": 61.8, "i2t_r5": 87.5, "i2t_r10": 93.7, "i2t_medr": 1.0, "i2t_meanr": 3.2,
        "t2i_r1": 45.8, "t2i_r5": 74.4, "t2i_r10": 83.04, "t2i_medr": 2.0, "t2i_meanr": 9.1,
        "rsum": 446.24,
    },
    "ensemble": {
        "i2t_r1": np.float64(67.4), "i2t_r5": 90.3, "i2t_r10": 95.8, "i2t_medr": 1.0,
        "i2t_meanr": 2.9, "t2i_r1": 48.6, "t2i_r5": 77.7, "t2i_r10": 85.2, "t2i_medr": 2.0,
        "t2i_meanr": 8.0, "rsum": 465.0,
    },
}  # fmt: skip


def test_format_table_contains_the_numbers() -> None:
    text = format_table(RESULTS)
    lines = text.splitlines()
    assert len(lines) == 2 + len(RESULTS)
    assert "i2t R@1" in lines[0] and "t2i R@1" in lines[0] and "rsum" in lines[0]
    assert len({len(line) for line in lines}) == 1  # aligned
    row = next(line for line in lines if line.startswith("t2i AVG"))
    for value in ("61.8", "87.5", "93.7", "1.0", "45.8", "74.4", "83.0", "2.0", "446.2"):
        assert value in row
    assert "3.2" not in row  # mean ranks are not columns
    assert "67.4" in text and "465.0" in text


def test_format_markdown_table() -> None:
    text = format_markdown_table({**RESULTS, "a|b": {"rsum": 1.25}})
    lines = text.splitlines()
    assert lines[0].startswith("| model | i2t R@1 | i2t R@5 | i2t R@10 | i2t medr | t2i R@1")
    assert lines[1].count("---") == 10
    assert len(lines) == 2 + 3
    assert lines[2] == ("| t2i AVG | 61.8 | 87.5 | 93.7 | 1.0 | 45.8 | 74.4 | 83.0 | 2.0 | 446.2 |")
    assert lines[4].startswith("| a\\|b | - |") and lines[4].endswith("| 1.2 |")
    assert all(line.count("|") - line.count("\\|") == 11 for line in lines)


def test_write_json_is_atomic_and_round_trips(tmp_path) -> None:
    path = tmp_path / "out" / "results.json"
    scores = block_diagonal_scores([1, 2, 3, 4, 5], off_block=0.0)
    folded = evaluate_scores(scores, protocol="coco1k")
    assert write_json({**RESULTS, "coco1k": folded}, path) == path
    data = json.loads(path.read_text())
    assert data["t2i AVG"]["i2t_r1"] == 61.8
    assert data["ensemble"]["i2t_r1"] == 67.4
    assert len(data["coco1k"]["folds"]) == 5
    write_json({"only": {"rsum": 1.0}}, path)  # overwrite in place
    assert json.loads(path.read_text()) == {"only": {"rsum": 1.0}}
    assert os.listdir(path.parent) == ["results.json"]  # no temp file left behind
    with pytest.raises(TypeError):
        write_json({"bad": object()}, path)
    assert json.loads(path.read_text()) == {"only": {"rsum": 1.0}}  # old file intact
    assert os.listdir(path.parent) == ["results.json"]


@pytest.mark.parametrize("seed", range(3))
def test_coco1k_equals_the_plain_loop_over_folds(seed: int) -> None:
    """Tie-heavy scores, captions of an image scattered through the split, 5 folds of 8 images."""
    rng = np.random.default_rng(seed)
    n = 40
    ci = rng.permutation(np.repeat(np.arange(n), 5))  # every image 5 captions, in no order
    scores = rng.integers(0, 4, size=(n, 5 * n)).astype(float)
    got = evaluate_scores(scores, protocol="coco1k", caption_image=ci)
    want = reference.coco1k(scores.tolist(), ci.tolist(), folds=5)
    for key in METRIC_KEYS:
        assert got[key] == pytest.approx(want[key], abs=1e-9), key
    assert len(got["folds"]) == 5
