"""Word specificity (mean pairwise Jensen-Shannon divergence in bits) against a plain loop, its
bounds (identical rows 0, disjoint one-hot rows 1), symmetry, and the mean over captions."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from scan.viz.specificity import STOP_WORDS, mean_word_specificity, pairwise_js_bits, word_specificity


def js_loop(p: list[float], q: list[float]) -> float:
    """JS divergence in bits, term by term: half of each side's KL to the midpoint, 0 log 0 = 0."""
    sp, sq = sum(p), sum(q)
    p, q = [x / sp for x in p], [x / sq for x in q]
    total = 0.0
    for a, b in zip(p, q, strict=True):
        mid = (a + b) / 2
        if a > 0:
            total += 0.5 * a * math.log2(a / mid)
        if b > 0:
            total += 0.5 * b * math.log2(b / mid)
    return total


def specificity_loop(rows: np.ndarray) -> float:
    pairs = [(i, j) for i in range(len(rows)) for j in range(i + 1, len(rows))]
    return sum(js_loop(list(rows[i]), list(rows[j])) for i, j in pairs) / len(pairs)


def _softmax_rows(rng: np.random.Generator, words: int, regions: int, *, temperature: float) -> np.ndarray:
    logits = rng.normal(size=(words, regions)) * temperature
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)  # (W, R)


@pytest.mark.parametrize("seed", range(6))
def test_matches_the_loop_on_random_attention(seed):
    rng = np.random.default_rng(seed)
    words, regions = int(rng.integers(2, 12)), int(rng.integers(2, 40))
    rows = _softmax_rows(rng, words, regions, temperature=float(rng.uniform(0.1, 6)))
    rows[0, rng.integers(regions)] = 0.0  # a zero weight exercises 0 log 0
    assert word_specificity(rows) == pytest.approx(specificity_loop(rows), abs=1e-12)
    js = pairwise_js_bits(rows)
    assert js.shape == (words, words)
    np.testing.assert_allclose(js, js.T, atol=0)  # symmetric
    np.testing.assert_allclose(np.diag(js), 0, atol=1e-12)
    assert np.all((js >= 0) & (js <= 1))
    for i in range(words):
        for j in range(words):
            assert js[i, j] == pytest.approx(js_loop(list(rows[i]), list(rows[j])), abs=1e-12)


def test_agrees_with_scipy_where_installed():
    distance = pytest.importorskip("scipy.spatial.distance")
    rows = _softmax_rows(np.random.default_rng(7), 5, 36, temperature=2.0)
    js = pairwise_js_bits(rows)
    for i in range(5):
        for j in range(5):
            # scipy's jensenshannon is the distance, the square root of the divergence
            assert js[i, j] == pytest.approx(distance.jensenshannon(rows[i], rows[j], base=2) ** 2, abs=1e-10)


def test_bounds_identical_rows_zero_disjoint_rows_one():
    rng = np.random.default_rng(3)
    row = _softmax_rows(rng, 1, 36, temperature=3.0)
    assert word_specificity(np.repeat(row, 7, axis=0)) == pytest.approx(0.0, abs=1e-12)
    assert word_specificity(np.full((5, 36), 1 / 36)) == pytest.approx(0.0, abs=1e-12)  # uniform attention
    assert word_specificity(np.eye(4, 36)) == pytest.approx(1.0)  # one-hot on different regions
    halves = np.zeros((2, 10))
    halves[0, :5], halves[1, 5:] = 0.2, 0.2  # disjoint supports, not one-hot: still 1
    assert word_specificity(halves) == pytest.approx(1.0)
    assert 0.0 < word_specificity(_softmax_rows(rng, 6, 36, temperature=3.0)) < 1.0


def test_symmetric_in_word_order_and_scale_free():
    rng = np.random.default_rng(4)
    rows = _softmax_rows(rng, 6, 20, temperature=2.0)
    value = word_specificity(rows)
    assert word_specificity(rows[rng.permutation(6)]) == pytest.approx(value, abs=1e-12)
    assert word_specificity(rows * rng.uniform(0.5, 3.0, size=(6, 1))) == pytest.approx(value, abs=1e-12)
    assert word_specificity(rows[:, rng.permutation(20)]) == pytest.approx(value, abs=1e-12)  # region order too


def test_sharper_distinct_attention_is_more_specific():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(8, 36))
    values = [word_specificity(np.exp(t * logits) / np.exp(t * logits).sum(1, keepdims=True)) for t in (0.1, 1, 10)]
    assert values[0] < values[1] < values[2]


def test_mean_over_captions_and_validation():
    rng = np.random.default_rng(6)
    captions = [_softmax_rows(rng, w, r, temperature=2.0) for w, r in ((3, 36), (9, 36), (5, 12))]
    expected = np.mean([specificity_loop(c) for c in captions])
    with_single = [*captions, _softmax_rows(rng, 1, 36, temperature=2.0)]  # one word: no pairs, left out
    assert mean_word_specificity(with_single) == pytest.approx(expected, abs=1e-12)
    assert mean_word_specificity(iter(captions)) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        word_specificity(np.ones((1, 5)))
    with pytest.raises(ValueError, match="at least 2"):
        mean_word_specificity([np.ones((1, 5))])
    with pytest.raises(ValueError, match="non-negative"):
        word_specificity(np.array([[0.5, 0.5], [1.2, -0.2]]))
    with pytest.raises(ValueError, match="positive mass"):
        word_specificity(np.array([[0.5, 0.5], [0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"\(W, R\)"):
        word_specificity(np.ones(5))


def test_torch_tensors_and_stop_words():
    torch = pytest.importorskip("torch")
    rows = _softmax_rows(np.random.default_rng(8), 4, 10, temperature=2.0)
    assert word_specificity(torch.from_numpy(rows)) == pytest.approx(word_specificity(rows))
    assert {"the", "a", "of", "and", "."} <= STOP_WORDS and "dog" not in STOP_WORDS


def test_does_not_import_matplotlib():
    code = "import sys, scan.viz.specificity; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
