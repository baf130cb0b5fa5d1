"""The fused Triton kernels against the slow float64 reference, forward and backward.

On a machine without a GPU the kernels run under `TRITON_INTERPRET=1` (set here, before the
kernels are first compiled; `scan.similarity.triton` compiles them on first use), so the shapes
are tiny: the interpreter executes every program in Python. On a GPU the same tests run the
compiled kernels. float32 paths must agree within 1e-4, bf16 and tf32 within 1e-2; bf16
gradients are the exact gradients at the bf16-rounded embeddings, so they are checked against
the reference evaluated there.
"""

from __future__ import annotations

import itertools
import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from reference_scan import reference

from scan.similarity import dispatch
from scan.similarity import triton as tri
from scan.similarity.options import NORMS, POOLINGS, AttentionOptions

pytestmark = pytest.mark.triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LAMBDA = {"t2i": 9.0, "i2t": 4.0}
TOLERANCE = {"fp32": 1e-4, "tf32": 1e-2, "bf16": 1e-2}


def random_inputs(seed: int, *, n=3, m=5, r=6, w=8, d=32, lengths=None):
    """Unit vectors; ragged lengths in [5, w] (one width bucket) unless given; garbage in the
    padding on purpose."""
    g = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(n, r, d, generator=g, dtype=torch.float64), dim=-1)
    captions = F.normalize(torch.randn(m, w, d, generator=g, dtype=torch.float64), dim=-1)
    if lengths is None:
        lengths = torch.randint(5, w + 1, (m,), generator=g)
        lengths[0] = w
    mask = torch.arange(w)[None] < lengths[:, None]
    captions = torch.where(mask[..., None], captions, torch.randn_like(captions) * 5)
    return images, captions, lengths, mask


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double().cpu() - b).abs().max() / b.abs().max().clamp(min=1e-12)).item()


def options(direction: str, norm: str = "clipped_l2norm", agg: str = "LogSumExp") -> AttentionOptions:
    return AttentionOptions(direction=direction, norm=norm, smooth=LAMBDA[direction], agg=agg, lambda_lse=6.0)


# What the tables say the kernels implement; the tests below check the kernels against that.
TRITON_NORMS = [name for name, spec in NORMS.items() if "triton" in spec.backends]
TRITON_POOLINGS = [name for name, spec in POOLINGS.items() if "triton" in spec.backends]


def test_tables_name_exactly_the_kernel_codes():
    """An option listed for triton has a kernel code, and a kernel code is listed: neither side
    can claim what the other lacks. Codes are distinct, so no two names compute the same branch."""
    assert set(TRITON_NORMS) == set(tri._NORM_CODES)
    assert set(TRITON_POOLINGS) == set(tri._POOL_CODES)
    assert sorted(tri._NORM_CODES.values()) == list(range(len(tri._NORM_CODES)))
    assert sorted(tri._POOL_CODES.values()) == list(range(len(tri._POOL_CODES)))


@pytest.mark.parametrize("direction,norm,agg", list(itertools.product(("t2i", "i2t"), TRITON_NORMS, TRITON_POOLINGS)))
def test_training_path_matches_reference_forward_and_backward(direction, norm, agg):
    """Every direction, and every norm and pooling the tables list for triton; ragged captions in
    one length bucket."""
    seed = len(norm) * 31 + list(POOLINGS).index(agg) * 7 + (direction == "i2t")
    images, captions, lengths, mask = random_inputs(seed)
    opts = options(direction, norm, agg)
    ref_images = images.clone().requires_grad_()
    ref_captions = captions.clone().requires_grad_()
    ref = reference(ref_images, ref_captions, lengths, opts)
    weights = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    (ref * weights).sum().backward()

    ours_images = images.float().to(DEVICE).requires_grad_()
    ours_captions = captions.float().to(DEVICE).requires_grad_()
    ours = tri.batch_scores(ours_images, ours_captions, mask.to(DEVICE), opts, precision="fp32")
    (ours * weights.float().to(DEVICE)).sum().backward()

    assert ours.shape == ref.shape and ours.dtype == torch.float32
    assert rel_err(ours, ref) < 1e-4
    assert rel_err(ours_images.grad, ref_images.grad) < 1e-4
    assert rel_err(ours_captions.grad, ref_captions.grad) < 1e-4
    assert ours_captions.grad[~mask.to(DEVICE)].abs().max() == 0  # padding never gets a gradient


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
@pytest.mark.parametrize("precision", ["bf16", "tf32"])
def test_reduced_precision_forward_and_backward(direction, precision):
    images, captions, lengths, mask = random_inputs(11)
    opts = options(direction, "clipped_l2norm", "Mean")
    ref = reference(images, captions, lengths, opts)
    # bf16 rounds the embeddings: its gradient is the exact one at the rounded inputs.
    rounded = (lambda x: x.to(torch.bfloat16).double()) if precision == "bf16" else (lambda x: x.float().double())
    ref_images = rounded(images).requires_grad_()
    ref_captions = rounded(captions).requires_grad_()
    (reference(ref_images, ref_captions, lengths, opts).sum()).backward()

    ours_images = images.float().to(DEVICE).requires_grad_()
    ours_captions = captions.float().to(DEVICE).requires_grad_()
    ours = tri.batch_scores(ours_images, ours_captions, mask.to(DEVICE), opts, precision=precision)
    ours.sum().backward()
    assert rel_err(ours, ref) < TOLERANCE[precision]
    assert rel_err(ours_images.grad, ref_images.grad) < TOLERANCE[precision]
    assert rel_err(ours_captions.grad, ref_captions.grad) < TOLERANCE[precision]

    matrix = tri.score_matrix(images.float(), captions.float(), lengths, opts, precision=precision, device=DEVICE)
    assert rel_err(matrix, ref) < TOLERANCE[precision]


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_score_matrix_ragged_buckets_partial_tiles_and_chunks(direction, monkeypatch):
    """Lengths 1..8 (four width buckets), a 9 x 9 gallery that no tile divides, caption blocks in
    a partial last group, D not a multiple of the chunk, images and captions chunked by a tiny
    memory budget."""
    # 2 captions of width 8 per tile (5 tiles for 9), D = 40 in chunks of 16 (the last one partial)
    monkeypatch.setitem(tri.TILE_CONFIGS, ("fwd", "fp32"), dict(columns=16, block_d=16, num_warps=4, num_stages=2))
    monkeypatch.setattr(tri, "GROUP_CAPTION_BLOCKS", 3)
    lengths = torch.tensor([8, 1, 2, 3, 4, 5, 7, 8, 6])
    images, captions, lengths, _mask = random_inputs(5, n=9, m=9, r=7, d=40, lengths=lengths)
    opts = options(direction, "clipped_l2norm", "LogSumExp")
    ref = reference(images, captions, lengths, opts)
    whole = tri.score_matrix(images.float(), captions.float(), lengths, opts, precision="fp32", device=DEVICE)
    assert whole.shape == (9, 9) and whole.dtype == torch.float32 and whole.device.type == "cpu"
    assert rel_err(whole, ref) < 1e-4
    chunked = tri.score_matrix(
        images.float(), captions.float(), lengths, opts, precision="fp32", device=DEVICE, memory_budget_mb=0.2
    )
    assert rel_err(chunked, ref) < 1e-4


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_training_path_with_captions_in_several_length_buckets(direction):
    lengths = torch.tensor([8, 1, 3, 2, 6, 4])
    images, captions, lengths, mask = random_inputs(9, n=3, m=6, lengths=lengths)
    opts = options(direction, "clipped_l2norm", "LogSumExp")
    ref_images = images.clone().requires_grad_()
    ref_captions = captions.clone().requires_grad_()
    ref = reference(ref_images, ref_captions, lengths, opts)
    ref.sum().backward()
    ours_images = images.float().to(DEVICE).requires_grad_()
    ours_captions = captions.float().to(DEVICE).requires_grad_()
    ours = tri.batch_scores(ours_images, ours_captions, mask.to(DEVICE), opts, precision="fp32")
    ours.sum().backward()
    assert rel_err(ours, ref) < 1e-4
    assert rel_err(ours_images.grad, ref_images.grad) < 1e-4
    assert rel_err(ours_captions.grad, ref_captions.grad) < 1e-4
    assert ours_captions.grad[~mask.to(DEVICE)].abs().max() == 0


def test_rankings_agree_wherever_the_reference_margin_exceeds_the_error_bound():
    """On generic inputs: each caption's ranking of images and each image's ranking of captions
    orders every pair of candidates as the reference does whenever their reference scores differ
    by more than twice the path's error bound (so rounding cannot swap them)."""
    images, captions, lengths, _mask = random_inputs(21, n=9, m=9)
    for direction in ("t2i", "i2t"):
        opts = options(direction, "clipped_l2norm", "Mean")
        ref = reference(images, captions, lengths, opts)  # (N, M)
        for precision in ("fp32", "bf16"):
            ours = tri.score_matrix(images.float(), captions.float(), lengths, opts, precision=precision, device=DEVICE)
            bound = 2 * TOLERANCE[precision] * ref.abs().max()
            decided = 0
            for rows_ref, rows_ours in ((ref, ours.double()), (ref.T, ours.double().T)):
                gap = rows_ref[:, :, None] - rows_ref[:, None, :]  # (rows, a, b)
                ours_gap = rows_ours[:, :, None] - rows_ours[:, None, :]
                far = gap.abs() > bound
                assert torch.equal(torch.sign(gap)[far], torch.sign(ours_gap)[far])
                decided += int(far.sum())
            if precision == "fp32":
                assert decided >= 0.9 * 2 * 9 * 9 * 8  # nearly every ordered pair is decided


def planted_margin_inputs(n=6, m=6, r=6, w=8, d=32, seed=0):
    """Score(image k, caption j) ~ level_k * level_j: images and captions share one direction
    `u` at planted angles and are otherwise orthogonal, plus a little noise. Every row and column
    of the score matrix then has margins of about 2% of its largest score."""
    g = torch.Generator().manual_seed(seed)
    half = d // 2
    level_i = torch.linspace(0.3, 0.95, n, dtype=torch.float64)[torch.randperm(n, generator=g)]
    level_c = torch.linspace(0.3, 0.95, m, dtype=torch.float64)[torch.randperm(m, generator=g)]
    z_i = F.normalize(torch.randn(n, 1, half - 1, generator=g, dtype=torch.float64), dim=-1).expand(n, r, -1)
    z_c = F.normalize(torch.randn(m, 1, d - half, generator=g, dtype=torch.float64), dim=-1).expand(m, w, -1)
    images = torch.cat(
        [
            level_i[:, None, None].expand(n, r, 1),
            (1 - level_i**2).sqrt()[:, None, None] * z_i,
            torch.zeros(n, r, d - half, dtype=torch.float64),
        ],
        dim=-1,
    )  # (N, R, D)
    captions = torch.cat(
        [
            level_c[:, None, None].expand(m, w, 1),
            torch.zeros(m, w, half - 1, dtype=torch.float64),
            (1 - level_c**2).sqrt()[:, None, None] * z_c,
        ],
        dim=-1,
    )  # (M, W, D)
    images = F.normalize(images + 0.01 * torch.randn(images.shape, generator=g, dtype=torch.float64), dim=-1)
    captions = F.normalize(captions + 0.01 * torch.randn(captions.shape, generator=g, dtype=torch.float64), dim=-1)
    lengths = torch.randint(5, w + 1, (m,), generator=g)
    return images, captions, lengths


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_rankings_identical_when_margins_exceed_rounding(direction):
    images, captions, lengths = planted_margin_inputs()
    opts = options(direction, "clipped_l2norm", "Mean")
    ref = reference(images, captions, lengths, opts)
    margin = min(ref.sort(dim=0).values.diff(dim=0).min(), ref.sort(dim=1).values.diff(dim=1).min())
    for precision in ("fp32", "bf16"):
        assert margin > 2 * TOLERANCE[precision] * ref.abs().max()  # the premise
        ours = tri.score_matrix(images.float(), captions.float(), lengths, opts, precision=precision, device=DEVICE)
        assert torch.equal(ours.argsort(dim=0), ref.argsort(dim=0))  # each caption's images
        assert torch.equal(ours.argsort(dim=1), ref.argsort(dim=1))  # each image's captions


def test_dispatch_forces_triton_and_matches_torch():
    images, captions, lengths, mask = random_inputs(8)
    opts = options("i2t", "clipped_l2norm", "LogSumExp")
    fused = dispatch.score_matrix(
        images.float(), captions.float(), lengths, opts, backend="triton", precision="fp32", device=DEVICE
    )
    vectorised = dispatch.score_matrix(images.float(), captions.float(), lengths, opts, backend="torch")
    assert rel_err(fused, vectorised.double()) < 1e-4
    batch = dispatch.batch_scores(
        images.float().to(DEVICE),
        captions.float().to(DEVICE),
        mask.to(DEVICE),
        opts,
        backend="triton",
        precision="fp32",
    )
    assert rel_err(batch, vectorised.double()) < 1e-4


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_non_finite_garbage_in_the_padding_changes_nothing(direction):
    """NaN and inf in the padded slots give the scores and gradients of zeros there."""
    images, captions, _lengths, mask = random_inputs(21)
    opts = options(direction, "clipped_l2norm", "Mean")
    results = []
    for fill in (0.0, float("nan"), float("inf")):
        padded = captions.masked_fill(~mask[..., None], fill).float().to(DEVICE).requires_grad_()
        scores = tri.batch_scores(images.float().to(DEVICE), padded, mask.to(DEVICE), opts, precision="fp32")
        scores.sum().backward()
        assert torch.isfinite(scores).all() and torch.isfinite(padded.grad).all()
        results.append((scores.detach(), padded.grad))
    for scores, grad in results[1:]:
        assert torch.equal(scores, results[0][0]) and torch.equal(grad, results[0][1])
