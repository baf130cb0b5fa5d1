"""The single scoring entry point: backend choice, clear errors, and every CPU path against the
float64 reference on fresh random inputs (both directions, every norm and pooling, ragged
captions, galleries that no block size divides)."""

from __future__ import annotations

import dataclasses
import itertools
import re

import pytest
import torch
import torch.nn.functional as F
from reference_scan import reference, reference_scores

from scan.errors import BackendError, ConfigError
from scan.similarity import dispatch
from scan.similarity import triton as triton_path
from scan.similarity.options import NORMS, POOLINGS, AttentionOptions

RAW_FEATURE_NORMS = tuple(NORMS)

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


def options(direction, norm="clipped_l2norm", agg="LogSumExp") -> AttentionOptions:
    return AttentionOptions(direction=direction, norm=norm, smooth=LAMBDA[direction], agg=agg, lambda_lse=6.0)


def test_cpu_has_only_the_torch_backend():
    assert dispatch.available_backends("cpu") == ["torch"]
    assert dispatch.resolve_backend("auto", "cpu") == "torch"
    expected = ["triton", "torch"] if torch.cuda.is_available() and triton_path.triton_importable() else ["torch"]
    assert dispatch.available_backends("cuda") == expected


def test_forcing_an_unavailable_backend_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    images, captions, lengths, mask = random_inputs(0)
    opts = options("t2i")
    if triton_path.triton_importable():
        with pytest.raises(BackendError, match="needs a CUDA device"):
            dispatch.score_matrix(images, captions, lengths, opts, backend="triton", device="cpu")
    monkeypatch.setattr(triton_path, "triton_importable", lambda: False)
    with pytest.raises(BackendError, match="not installed"):
        dispatch.batch_scores(images, captions, mask, opts, backend="triton")
    with pytest.raises(ConfigError, match="backend must be"):
        dispatch.score_matrix(images, captions, lengths, opts, backend="cuda")
    with pytest.raises(ConfigError, match="precision must be"):
        dispatch.score_matrix(images, captions, lengths, opts, precision="fp16")


def test_old_keyword_calls_and_dicts_are_refused():
    """The options are one typed object now: the pre-AttentionOptions call style fails loudly."""
    images, captions, lengths, mask = random_inputs(0)
    with pytest.raises(TypeError):
        dispatch.score_matrix(images, captions, lengths, direction="t2i")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="AttentionOptions"):
        dispatch.batch_scores(images, captions, mask, dict(direction="t2i"))  # type: ignore[arg-type]


def _without_triton(monkeypatch, table, name):
    """Pretend the Triton kernels lack one table entry (today they implement every one)."""
    monkeypatch.setitem(table, name, dataclasses.replace(table[name], backends=frozenset({"torch"})))


@pytest.mark.parametrize(
    "table,name,what", [(POOLINGS, "Sum", "pooling 'Sum'"), (NORMS, "softmax", "raw_feature_norm 'softmax'")]
)
def test_forced_triton_refuses_options_it_does_not_implement(monkeypatch, table, name, what):
    _without_triton(monkeypatch, table, name)
    images, captions, lengths, mask = random_inputs(0)
    opts = options("t2i", **({"agg": name} if table is POOLINGS else {"norm": name}))
    assert opts.missing_in("triton") == [what] and opts.implemented_by("torch")
    expected = f"the triton backend does not implement {what}; use backend='torch'"
    # Refused even where triton could not run anyway: the option is the more useful thing to fix.
    for device in ("cpu", "cuda"):
        with pytest.raises(BackendError, match=re.escape(expected)):
            dispatch.resolve_backend("triton", device, opts)
    with pytest.raises(BackendError, match="does not implement"):
        dispatch.score_matrix(images, captions, lengths, opts, backend="triton", device="cpu")
    with pytest.raises(BackendError, match="does not implement"):
        dispatch.batch_scores(images, captions, mask, opts, backend="triton")
    # The kernels' own entry points refuse too, before anything is compiled or launched.
    with pytest.raises(BackendError, match=re.escape(expected)):
        triton_path.score_matrix(images.float(), captions.float(), lengths, opts, precision="fp32")
    with pytest.raises(BackendError, match=re.escape(expected)):
        triton_path.batch_scores(images.float(), captions.float(), mask, opts, precision="fp32")


def test_auto_picks_torch_for_options_triton_does_not_implement(monkeypatch):
    """A GPU with Triton: `auto` takes the kernels for what they implement, torch for the rest."""
    monkeypatch.setattr(dispatch, "available_backends", lambda device: ["triton", "torch"])
    assert dispatch.resolve_backend("auto", "cuda", options("t2i", agg="Sum")) == "triton"
    _without_triton(monkeypatch, POOLINGS, "Sum")
    assert dispatch.resolve_backend("auto", "cuda", options("t2i", agg="Sum")) == "torch"
    assert dispatch.resolve_backend("auto", "cuda", options("t2i", agg="Mean")) == "triton"
    assert dispatch.resolve_backend("auto", "cuda") == "triton"  # no options: availability only
    # End to end on the CPU (where auto is torch anyway), the scores are the reference's.
    images, captions, lengths, _mask = random_inputs(3)
    opts = options("i2t", agg="Sum")
    ref = reference(images, captions, lengths, opts)
    assert rel_err(dispatch.score_matrix(images.float(), captions.float(), lengths, opts), ref) < 1e-4


@pytest.mark.parametrize("direction,norm,agg", list(itertools.product(("t2i", "i2t"), RAW_FEATURE_NORMS, POOLINGS)))
def test_score_matrix_float32_matches_reference(direction, norm, agg):
    seed = 1000 + RAW_FEATURE_NORMS.index(norm) * 8 + list(POOLINGS).index(agg) * 2 + (direction == "i2t")
    images, captions, lengths, _mask = random_inputs(seed)
    opts = options(direction, norm, agg)
    ref = reference(images, captions, lengths, opts)
    # A budget of a few pairs per block: blocks of 4 x 4 over a 5 x 7 gallery.
    ours = dispatch.score_matrix(images.float(), captions.float(), lengths, opts, memory_budget_mb=0.01)
    assert ours.dtype == torch.float32 and ours.device.type == "cpu" and not ours.requires_grad
    assert rel_err(ours, ref) < 1e-4
    whole = dispatch.score_matrix(images.float(), captions.float(), lengths, opts)
    assert rel_err(whole, ref) < 1e-4


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
@pytest.mark.parametrize("precision,tolerance", [("fp32", 1e-4), ("bf16", 1e-2)])
def test_batch_scores_forward_and_backward_match_reference(direction, precision, tolerance):
    images, captions, lengths, mask = random_inputs(77 + (direction == "i2t"), n=4, m=5)
    opts = options(direction, "clipped_l2norm", "Mean")
    rounded = (lambda x: x.to(torch.bfloat16).double()) if precision == "bf16" else (lambda x: x.float().double())
    ref_images = rounded(images).requires_grad_()
    ref_captions = rounded(captions).requires_grad_()
    ref = reference(ref_images, ref_captions, lengths, opts)
    ref.sum().backward()

    ours_images = images.float().requires_grad_()
    ours_captions = captions.float().requires_grad_()
    ours = dispatch.batch_scores(ours_images, ours_captions, mask, opts, precision=precision)
    assert ours.dtype == torch.float32 and ours.shape == (4, 5)
    ours.sum().backward()
    assert rel_err(ours, reference(images, captions, lengths, opts)) < tolerance
    assert rel_err(ours_images.grad, ref_images.grad) < tolerance
    assert rel_err(ours_captions.grad, ref_captions.grad) < tolerance
    assert ours_captions.grad[~mask].abs().max() == 0


def test_score_matrix_bf16_on_the_torch_path():
    images, captions, lengths, _mask = random_inputs(5)
    opts = options("t2i")
    ref = reference(images, captions, lengths, opts)
    ours = dispatch.score_matrix(images.float(), captions.float(), lengths, opts, backend="torch", precision="bf16")
    assert rel_err(ours, ref) < 1e-2


def test_triton_refuses_a_table_entry_without_a_kernel_code(monkeypatch):
    """Were a table to claim triton for an option the kernels have no code for, the kernels'
    `else` branch would compute `Sum` in its place: the entry points refuse it instead."""
    monkeypatch.delitem(triton_path._POOL_CODES, "Max")
    images, captions, lengths, mask = random_inputs(0)
    opts = options("t2i", agg="Max")
    assert opts.implemented_by("triton")  # the table still says so
    with pytest.raises(BackendError, match=re.escape("does not implement pooling 'Max'; use backend='torch'")):
        triton_path.score_matrix(images.float(), captions.float(), lengths, opts, precision="fp32")
    with pytest.raises(BackendError, match="pooling 'Max'"):
        triton_path.batch_scores(images.float(), captions.float(), mask, opts, precision="fp32")


def test_a_learned_smooth_is_scored_where_it_has_a_gradient(monkeypatch):
    """lambda_1 that needs a gradient (`model.learn_lambda`): `auto` skips the Triton kernels, which
    have none for it, and a forced `triton` is refused; under no_grad nothing needs one."""
    monkeypatch.setattr(dispatch, "available_backends", lambda device: ["triton", "torch"])
    opts = options("t2i")
    assert dispatch.resolve_backend("auto", "cuda", opts, learned_smooth=True) == "torch"
    assert dispatch.resolve_backend("torch", "cuda", opts, learned_smooth=True) == "torch"
    assert dispatch.resolve_backend("auto", "cuda", opts) == "triton"
    expected = "the triton backend does not implement a learned lambda_softmax"
    for device in ("cpu", "cuda"):  # refused whether or not triton could run there
        with pytest.raises(BackendError, match=re.escape(expected)):
            dispatch.resolve_backend("triton", device, opts, learned_smooth=True)
    smooth = torch.tensor(5.0, requires_grad=True)
    assert dispatch._learned(smooth) and not dispatch._learned(None) and not dispatch._learned(smooth.detach())
    with torch.no_grad():
        assert not dispatch._learned(smooth)
    images, captions, _lengths, mask = random_inputs(0)
    with pytest.raises(TypeError, match="0-dim"):
        dispatch.batch_scores(images, captions, mask, opts, smooth=5.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
@pytest.mark.parametrize("precision,tolerance", [("fp32", 1e-4), ("bf16", 1e-2)])
def test_batch_scores_gradient_in_a_tensor_smooth_matches_reference(direction, precision, tolerance):
    """Every precision of the PyTorch path carries lambda_1's gradient (float32 scalar, as a model holds it)."""
    images, captions, lengths, mask = random_inputs(91 + (direction == "i2t"), n=4, m=5)
    opts = options(direction, "clipped_l2norm", "Mean")
    rounded = (lambda x: x.to(torch.bfloat16).double()) if precision == "bf16" else (lambda x: x.float().double())
    ref_smooth = torch.tensor(6.0, dtype=torch.float64, requires_grad=True)
    ref = reference_scores(
        rounded(images), rounded(captions), lengths, direction=direction, norm="clipped_l2norm", smooth=ref_smooth,
        agg="Mean", lambda_lse=6.0,
    )  # fmt: skip
    ref.sum().backward()
    smooth = torch.tensor(6.0, requires_grad=True)
    ours = dispatch.batch_scores(images.float(), captions.float(), mask, opts, precision=precision, smooth=smooth)
    assert ours.dtype == torch.float32
    ours.sum().backward()
    assert rel_err(ours, ref) < tolerance
    assert smooth.grad is not None and rel_err(smooth.grad, ref_smooth.grad) < tolerance
