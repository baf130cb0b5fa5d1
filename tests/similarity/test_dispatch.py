"""The single scoring entry point: backend choice, clear errors, and every CPU path against the
float64 reference on fresh random inputs (both directions, every norm and pooling, ragged
captions, galleries that no block size divides)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from reference_scan import reference_scores
from scan.similarity import dispatch
from scan.similarity import triton as triton_path
from scan.similarity.functional import POOLINGS, RAW_FEATURE_NORMS

LAMBDA = {"t2i": 9.0, "i2t": 4.0}


def random_inputs(seed: int, *, n=5, m=7, r=5, w=7, d=24):
    g = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(n, r, d, generator=g, dtype=torch.float64), dim=-1)
    captions = F.normalize(torch.randn(m, w, d, generator=g, dtype=torch.float64), dim=-1)
    lengths = torch.randint(1, w + 1, (m,), generator=g)
    lengths[0] = w
    mask = torch.arange(w)[None] < lengths[:, None]
    captions = torch.where(mask[..., None], captions, torch.randn_like(captions) * 5)  # garbage padding
    return images, captions, lengths, mask


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b).abs().max() / b.abs().max().clamp(min=1e-12)).item()


def options(direction, norm="clipped_l2norm", agg="LogSumExp"):
    return dict(direction=direction, norm=norm, smooth=LAMBDA[direction], agg=agg, lambda_lse=6.0)


def test_cpu_has_only_the_torch_backend():
    assert dispatch.available_backends("cpu") == ["torch"]
    assert dispatch.resolve_backend("auto", "cpu") == "torch"
    expected = ["triton", "torch"] if torch.cuda.is_available() and triton_path.triton_importable() else ["torch"]
    assert dispatch.available_backends("cuda") == expected


def test_forcing_an_unavailable_backend_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    images, captions, lengths, mask = random_inputs(0)
    if triton_path.triton_importable():
        with pytest.raises(ValueError, match="needs a CUDA device"):
            dispatch.score_matrix(images, captions, lengths, backend="triton", device="cpu")
    monkeypatch.setattr(triton_path, "triton_importable", lambda: False)
    with pytest.raises(ValueError, match="not installed"):
        dispatch.batch_scores(images, captions, mask, backend="triton")
    with pytest.raises(ValueError, match="backend must be"):
        dispatch.score_matrix(images, captions, lengths, backend="cuda")
    with pytest.raises(ValueError, match="precision must be"):
        dispatch.score_matrix(images, captions, lengths, precision="fp16")


@pytest.mark.parametrize(
    "direction,norm,agg", list(itertools.product(("t2i", "i2t"), RAW_FEATURE_NORMS, POOLINGS))
)
def test_score_matrix_float32_matches_reference(direction, norm, agg):
    seed = 1000 + RAW_FEATURE_NORMS.index(norm) * 8 + POOLINGS.index(agg) * 2 + (direction == "i2t")
    images, captions, lengths, mask = random_inputs(seed)
    opts = options(direction, norm, agg)
    ref = reference_scores(images, captions, lengths, **opts)
    # A budget of a few pairs per block: blocks of 4 x 4 over a 5 x 7 gallery.
    ours = dispatch.score_matrix(images.float(), captions.float(), lengths, memory_budget_mb=0.01, **opts)
    assert ours.dtype == torch.float32 and ours.device.type == "cpu" and not ours.requires_grad
    assert rel_err(ours, ref) < 1e-4
    whole = dispatch.score_matrix(images.float(), captions.float(), lengths, **opts)
    assert rel_err(whole, ref) < 1e-4


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
@pytest.mark.parametrize("precision,tolerance", [("fp32", 1e-4), ("bf16", 1e-2)])
def test_batch_scores_forward_and_backward_match_reference(direction, precision, tolerance):
    images, captions, lengths, mask = random_inputs(77 + (direction == "i2t"), n=4, m=5)
    opts = options(direction, "clipped_l2norm", "Mean")
    rounded = (lambda x: x.to(torch.bfloat16).double()) if precision == "bf16" else (lambda x: x.float().double())
    ref_images = rounded(images).requires_grad_()
    ref_captions = rounded(captions).requires_grad_()
    ref = reference_scores(ref_images, ref_captions, lengths, **opts)
    ref.sum().backward()

    ours_images = images.float().requires_grad_()
    ours_captions = captions.float().requires_grad_()
    ours = dispatch.batch_scores(ours_images, ours_captions, mask, precision=precision, **opts)
    assert ours.dtype == torch.float32 and ours.shape == (4, 5)
    ours.sum().backward()
    assert rel_err(ours, reference_scores(images, captions, lengths, **opts)) < tolerance
    assert rel_err(ours_images.grad, ref_images.grad) < tolerance
    assert rel_err(ours_captions.grad, ref_captions.grad) < tolerance
    assert ours_captions.grad[~mask].abs().max() == 0


def test_score_matrix_bf16_on_the_torch_path():
    images, captions, lengths, mask = random_inputs(5)
    opts = options("t2i")
    ref = reference_scores(images, captions, lengths, **opts)
    ours = dispatch.score_matrix(images.float(), captions.float(), lengths, backend="torch", precision="bf16", **opts)
    assert rel_err(ours, ref) < 1e-2
