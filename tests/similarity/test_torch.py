"""The vectorised scoring path against the slow reference, forward and backward, float64."""

from __future__ import annotations

import itertools
import math
import re
import zlib

import pytest
import torch
import torch.nn.functional as F
from reference_scan import reference, reference_scores

from scan.errors import ConfigError
from scan.similarity.functional import attend, cosine, normalize_raw_scores, pool
from scan.similarity.options import NORMS, POOLINGS, AttentionOptions
from scan.similarity.torch import pairwise_scores, score_matrix

LAMBDA = {"t2i": 9.0, "i2t": 4.0}


def random_inputs(seed: int, *, n=3, m=4, r=5, w=7, d=6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(n, r, d, generator=g, dtype=dtype), dim=-1)
    captions = F.normalize(torch.randn(m, w, d, generator=g, dtype=dtype), dim=-1)
    lengths = torch.randint(1, w + 1, (m,), generator=g)
    lengths[0] = w  # at least one caption uses the full width
    mask = torch.arange(w)[None] < lengths[:, None]
    # Padding holds garbage on purpose: it must never reach a score.
    captions = torch.where(mask[..., None], captions, torch.randn_like(captions) * 5)
    return images, captions, lengths, mask


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item()


@pytest.mark.parametrize("direction,norm,agg", list(itertools.product(("t2i", "i2t"), NORMS, POOLINGS)))
def test_pairwise_matches_reference_forward_and_backward(direction, norm, agg):
    seed = zlib.crc32(f"{direction}-{norm}-{agg}".encode())  # stable across processes: a failure reproduces
    images, captions, lengths, mask = random_inputs(seed)
    opts = AttentionOptions(direction=direction, norm=norm, smooth=LAMBDA[direction], agg=agg, lambda_lse=6.0)

    ours_images = images.clone().requires_grad_()
    ours_captions = captions.clone().requires_grad_()
    ours = pairwise_scores(ours_images, ours_captions, mask, opts)
    ref_images = images.clone().requires_grad_()
    ref_captions = captions.clone().requires_grad_()
    ref = reference(ref_images, ref_captions, lengths, opts)
    assert ours.shape == (3, 4)
    assert rel_err(ours, ref) < 1e-5

    weights = torch.randn(ours.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (ours * weights).sum().backward()
    (ref * weights).sum().backward()
    assert rel_err(ours_images.grad, ref_images.grad) < 1e-5
    assert rel_err(ours_captions.grad, ref_captions.grad) < 1e-5
    # Padded word slots get no gradient at all: they never influenced a score.
    assert ours_captions.grad[~mask].abs().max() == 0


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_score_matrix_tiles_match_single_block(direction):
    images, captions, lengths, mask = random_inputs(7, n=11, m=13, w=9)
    opts = AttentionOptions(direction=direction, norm="clipped_l2norm", smooth=LAMBDA[direction], agg="LogSumExp")
    whole = pairwise_scores(images, captions, mask, opts)
    tiled = score_matrix(images, captions, lengths, opts, image_block=4, caption_block=5)
    assert tiled.dtype == torch.float32
    assert rel_err(tiled.double(), whole) < 1e-6
    budget = score_matrix(images, captions, lengths, opts, memory_budget_mb=0.01)
    assert rel_err(budget.double(), whole) < 1e-6


def test_attend_weights_are_a_distribution_over_real_context():
    images, captions, _lengths, mask = random_inputs(3, n=2, m=2)
    attended, weights = attend(images[:2], captions[:2], context_mask=mask[:2], norm="clipped_l2norm", smooth=4.0)
    assert attended.shape == (2, 5, 6) and weights.shape == (2, 5, 7)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 5, dtype=torch.float64))
    assert weights[~mask[:2][:, None, :].expand_as(weights)].abs().max() == 0


def test_logsumexp_pool_is_stable_for_large_lambda():
    r = torch.tensor([[0.9, 0.8, 0.95]], dtype=torch.float32)
    out = pool(r, agg="LogSumExp", lambda_lse=200.0)  # exp(190) overflows float32 without the shift
    assert torch.isfinite(out).all()
    assert abs(out.item() - 0.95) < 0.01


def test_cosine_matches_torch():
    x, y = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    torch.testing.assert_close(cosine(x, y), F.cosine_similarity(x, y, dim=-1))


def test_bad_options_are_named():
    """The pure functions take plain strings; a misspelt one is a ConfigError naming the option."""
    scores = torch.randn(2, 3)
    with pytest.raises(ConfigError, match="raw_feature_norm: 'l3norm'"):
        normalize_raw_scores(scores, norm="l3norm", dim=1)
    with pytest.raises(ConfigError, match="agg: 'Median'"):
        pool(scores, agg="Median")


def test_pairwise_scores_takes_the_options_object_only():
    images, captions, lengths, mask = random_inputs(0)
    with pytest.raises(TypeError, match="AttentionOptions"):
        pairwise_scores(images, captions, mask, {"direction": "t2i"})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="AttentionOptions"):
        score_matrix(images, captions, lengths, None)  # type: ignore[arg-type]


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
@pytest.mark.parametrize("norm", NORMS)
def test_zero_padded_captions_give_finite_gradients(direction, norm):
    """The text encoder pads with exact zeros; all-zero score slices must not poison gradients."""
    images, captions, _lengths, mask = random_inputs(11)
    captions = (captions * mask[..., None]).requires_grad_()
    opts = AttentionOptions(direction=direction, norm=norm, smooth=4.0, agg="LogSumExp", lambda_lse=6.0)
    scores = pairwise_scores(images, captions, mask, opts)
    scores.sum().backward()
    assert torch.isfinite(scores).all() and torch.isfinite(captions.grad).all()


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
@pytest.mark.parametrize("garbage", [math.nan, math.inf, -math.inf, 1e30])
def test_non_finite_garbage_in_the_padding_changes_nothing(direction, garbage):
    """Training (pairwise_scores) and evaluation (score_matrix) both: scores and gradients are those
    of zero padding, whatever the padded slots hold."""
    images, captions, lengths, mask = random_inputs(5, n=4, m=6, w=8)
    clean = captions.masked_fill(~mask[..., None], 0)
    dirty = captions.masked_fill(~mask[..., None], garbage)
    opts = AttentionOptions(direction=direction, norm="clipped_l2norm", smooth=LAMBDA[direction], agg="Mean")
    grads = []
    for padded in (clean, dirty):
        leaf = padded.clone().requires_grad_()
        scores = pairwise_scores(images, leaf, mask, opts)
        (scores * torch.arange(24, dtype=scores.dtype).view(4, 6)).sum().backward()
        grads.append((scores.detach(), leaf.grad))
        assert torch.isfinite(scores).all() and torch.isfinite(leaf.grad).all()
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    assert grads[1][1][~mask].abs().max() == 0
    torch.testing.assert_close(score_matrix(images, dirty, lengths, opts), score_matrix(images, clean, lengths, opts))
    assert torch.isfinite(score_matrix(images, dirty, lengths, opts, image_block=3, caption_block=2)).all()


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
@pytest.mark.parametrize("norm", ["clipped_l2norm", "softmax", "no_norm"])
def test_a_tensor_smooth_scores_as_its_float_and_has_the_reference_gradient(direction, norm):
    """lambda_1 as a 0-dim tensor (a learned temperature) overrides the options' float: the same
    scores as that float, and d(scores)/d(lambda_1) is the reference loop's."""
    images, captions, lengths, mask = random_inputs(zlib.crc32(f"smooth-{direction}-{norm}".encode()))
    opts = AttentionOptions(direction=direction, norm=norm, smooth=9.0, agg="LogSumExp", lambda_lse=6.0)
    smooth = torch.tensor(3.5, dtype=torch.float64, requires_grad=True)  # not the options' 9
    ours = pairwise_scores(images, captions, mask, opts, smooth=smooth)
    at_float = AttentionOptions(direction=direction, norm=norm, smooth=3.5, agg="LogSumExp", lambda_lse=6.0)
    assert torch.equal(ours.detach(), pairwise_scores(images, captions, mask, at_float))

    ref_smooth = smooth.detach().clone().requires_grad_()
    ref = reference_scores(
        images, captions, lengths, direction=direction, norm=norm, smooth=ref_smooth, agg="LogSumExp", lambda_lse=6.0
    )
    weights = torch.randn(ours.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    (ours * weights).sum().backward()
    (ref * weights).sum().backward()
    assert rel_err(ours.detach(), ref.detach()) < 1e-9
    assert smooth.grad is not None and abs(smooth.grad.item()) > 1e-8
    assert rel_err(smooth.grad, ref_smooth.grad) < 1e-7


def test_a_smooth_override_must_be_one_number():
    images, captions, _lengths, mask = random_inputs(0)
    opts = AttentionOptions()
    for bad, named in [(torch.ones(1), "shape (1,)"), (torch.tensor(9), "shape ()"), (9.0, "float")]:
        with pytest.raises(TypeError, match=re.escape(named)):
            pairwise_scores(images, captions, mask, opts, smooth=bad)  # type: ignore[arg-type]
