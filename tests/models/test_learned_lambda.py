"""A learned attention temperature (`model.learn_lambda`): lambda_1 trained in log space.

The batch scores' gradient with respect to `log_lambda` against finite differences and the slow
reference (float64, padded captions, both directions); a model without it exactly as before; a
few optimizer steps that move lambda_1, which evaluation and drawing then use; the Triton
kernels, which have no gradient for lambda_1, skipped by `auto` and refused when forced; and a
trained checkpoint that carries its learned lambda_1 through `load_model`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import SYNTHETIC_CONFIG, TINY

# The Triton kernels run on a CPU under the interpreter, which must be asked for before triton is
# first imported (as tests/similarity/test_triton.py does).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "similarity"))

from reference_scan import reference_scores

import scan.models.scan as scan_module
from scan import checkpoint as ckpt
from scan.config import ModelConfig
from scan.errors import BackendError
from scan.losses import triplet_loss
from scan.models.scan import SCAN, build_model
from scan.similarity import dispatch
from scan.similarity import torch as torch_path
from scan.similarity import triton as triton_path
from scan.similarity.options import AttentionOptions


def small_config(**changes) -> ModelConfig:
    return ModelConfig(image_dim=8, embed_dim=16, word_dim=8, vocab_size=20, **changes)


def random_inputs(seed: int, *, n=3, m=4, r=5, w=7, d=6, min_length=1):
    """Unit vectors in float64; ragged captions whose padding holds garbage on purpose."""
    g = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(n, r, d, generator=g, dtype=torch.float64), dim=-1)
    captions = F.normalize(torch.randn(m, w, d, generator=g, dtype=torch.float64), dim=-1)
    lengths = torch.randint(min_length, w + 1, (m,), generator=g)
    lengths[0] = w
    mask = torch.arange(w)[None] < lengths[:, None]
    captions = torch.where(mask[..., None], captions, torch.randn_like(captions) * 5)
    return images, captions, lengths, mask


def random_batch(seed: int, *, batch=6, regions=5, words=6):
    """Region features `(B, R, F)`, token ids `(B, W)` and lengths `(B,)` for `small_config`."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, regions, 8, generator=g)
    tokens = torch.randint(4, 20, (batch, words), generator=g)
    lengths = torch.randint(2, words + 1, (batch,), generator=g)
    lengths[0] = words
    return features, tokens, lengths


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-12)).item()


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
@pytest.mark.parametrize("norm,agg", [("clipped_l2norm", "LogSumExp"), ("softmax", "Mean")])
def test_gradient_in_log_lambda_matches_finite_differences_and_reference(direction, norm, agg):
    """float64 batch scores with lambda_1 = exp(log_lambda) as a tensor: autograd agrees with
    finite differences, and forward and backward agree with the reference loop at that lambda."""
    images, captions, lengths, mask = random_inputs(len(norm) * 7 + len(agg) + (direction == "i2t"))
    # The options' own lambda_1 (9) is overridden: the scores must be those at exp(log_lambda) = 5.5.
    opts = AttentionOptions(direction=direction, norm=norm, smooth=9.0, agg=agg, lambda_lse=6.0)
    weights = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def objective(log_lambda: torch.Tensor) -> torch.Tensor:
        return (dispatch.batch_scores(images, captions, mask, opts, smooth=log_lambda.exp()) * weights).sum()

    log_lambda = torch.tensor(math.log(5.5), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(objective, (log_lambda,), eps=1e-6, atol=1e-8, rtol=1e-6)

    ours = dispatch.batch_scores(images, captions, mask, opts, smooth=log_lambda.exp())  # (N, M)
    (ours_grad,) = torch.autograd.grad((ours * weights).sum(), log_lambda)
    ref_log_lambda = log_lambda.detach().clone().requires_grad_()
    ref = reference_scores(
        images, captions, lengths, direction=direction, norm=norm, smooth=ref_log_lambda.exp(), agg=agg, lambda_lse=6.0
    )  # the reference loop, differentiated through its tensor lambda
    (ref_grad,) = torch.autograd.grad((ref * weights).sum(), ref_log_lambda)
    assert rel_err(ours, ref) < 1e-9
    assert abs(ours_grad.item()) > 1e-6  # a real signal, not two zeros agreeing
    assert rel_err(ours_grad, ref_grad) < 1e-7
    # The tensor computes exactly what the float would: the override changes nothing but its type.
    at_float = dispatch.batch_scores(images, captions, mask, dataclasses.replace(opts, smooth=5.5))
    assert torch.equal(ours.detach(), at_float)


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_model_gradient_reaches_log_lambda(direction):
    """`SCAN.similarity` (what the loss trains) differentiates through the learned lambda_1."""
    torch.manual_seed(0)
    model = build_model(small_config(direction=direction, learn_lambda=True, lambda_softmax=4.0))
    model.scoring_backend = "torch"
    assert model.log_lambda is not None and model.log_lambda.requires_grad
    features, tokens, lengths = random_batch(1)
    with torch.no_grad():
        images = model.encode_image(features)  # (B, R, D)
        captions, mask = model.encode_text(tokens, lengths)  # (B, W, D), (B, W)
    scores = model.similarity(images, captions, mask)  # (B, B)
    scores.sum().backward()
    ref_log_lambda = model.log_lambda.detach().double().requires_grad_()
    ref = reference_scores(
        images.double(), captions.double(), lengths, direction=direction, norm="clipped_l2norm",
        smooth=ref_log_lambda.exp(), agg="LogSumExp", lambda_lse=6.0,
    )  # fmt: skip
    ref.sum().backward()
    assert model.log_lambda.grad is not None and torch.isfinite(model.log_lambda.grad)
    assert rel_err(scores.detach(), ref.detach()) < 1e-5
    assert rel_err(model.log_lambda.grad, ref_log_lambda.grad) < 1e-4


def test_without_learn_lambda_nothing_changes():
    torch.manual_seed(0)
    plain = build_model(small_config())
    torch.manual_seed(0)
    learned = build_model(small_config(learn_lambda=True))
    # No parameter, no state-dict key: checkpoints written before the option load strictly.
    assert plain.log_lambda is None and "log_lambda" not in plain.state_dict()
    assert set(learned.state_dict()) == set(plain.state_dict()) | {"log_lambda"}
    # The parameter draws no random numbers: the encoders start exactly as without it.
    for name, value in plain.state_dict().items():
        assert torch.equal(value, learned.state_dict()[name]), name
    plain.load_state_dict({k: v for k, v in learned.state_dict().items() if k != "log_lambda"}, strict=True)
    with pytest.raises(RuntimeError, match="log_lambda"):
        learned.load_state_dict(plain.state_dict(), strict=True)
    # The options are the config's own object, and the scores those of the fixed-lambda path.
    assert plain.attention is plain.attention  # one object, not a copy per access
    assert plain.attention == plain.config.attention()
    plain.scoring_backend = learned.scoring_backend = "torch"
    features, tokens, lengths = random_batch(2)
    with torch.no_grad():
        images = plain.encode_image(features)
        captions, mask = plain.encode_text(tokens, lengths)
        fixed = dispatch.batch_scores(images, captions, mask, plain.config.attention(), backend="torch")
        assert torch.equal(plain(features, tokens, lengths), fixed)
        # Learning starts from lambda_softmax: the same scores, up to exp(log(9)) in float32.
        assert learned.attention.smooth == pytest.approx(9.0, rel=1e-6)
        torch.testing.assert_close(learned(features, tokens, lengths), fixed, rtol=1e-5, atol=1e-6)


def test_the_global_embedding_baseline_has_no_lambda_to_learn():
    model = build_model(small_config(architecture="vse", learn_lambda=True))
    assert model.log_lambda is None and "log_lambda" not in model.state_dict()


def test_a_few_steps_learn_lambda_and_everything_then_uses_it(monkeypatch):
    torch.manual_seed(0)
    config = small_config(learn_lambda=True, lambda_softmax=4.0, agg="Mean")
    model = build_model(config)
    model.scoring_backend = "torch"
    assert model.log_lambda is not None
    features, tokens, lengths = random_batch(3, batch=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(6):
        loss = triplet_loss(model(features, tokens, lengths))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    learned = math.exp(model.log_lambda.item())
    assert abs(math.log(learned / 4.0)) > 0.01  # lambda_1 moved
    # `attention` reports the learned value, everything else as configured.
    assert model.attention.smooth == float(model.log_lambda.detach().exp())
    assert dataclasses.replace(model.attention, smooth=4.0) == config.attention()

    model.eval()
    with torch.no_grad():
        images = model.encode_image(features)
        captions, _ = model.encode_text(tokens, lengths)
        batch = model(features, tokens, lengths)
    # Evaluation scores with the learned lambda_1: the training scores, not those at 4.
    matrix = model.score_matrix(images, captions, lengths)
    torch.testing.assert_close(matrix, batch, rtol=1e-5, atol=1e-6)
    at_start = dispatch.score_matrix(images, captions, lengths, config.attention(), backend="torch")
    assert not torch.allclose(matrix, at_start, rtol=1e-5, atol=1e-6)

    # Drawing too: the attention weights come from `attend` at the learned lambda_1.
    seen = []
    real_attend = scan_module.attend

    def attend(*args, **kwargs):
        seen.append(kwargs["smooth"])
        return real_attend(*args, **kwargs)

    monkeypatch.setattr(scan_module, "attend", attend)
    model.attention_weights(features[0], tokens[0, : int(lengths[0])])
    assert seen == [model.attention.smooth]


def test_auto_trains_a_learned_lambda_on_the_torch_path(monkeypatch):
    """On a GPU with Triton, `auto` scores a batch whose lambda_1 needs a gradient with PyTorch; the
    same model under no_grad (validation) still gets the kernels, at the learned value."""
    monkeypatch.setattr(dispatch, "available_backends", lambda device: ["triton", "torch"])
    calls = []
    real_pairwise = torch_path.pairwise_scores

    def pairwise_scores(*args, **kwargs):
        calls.append("torch")
        return real_pairwise(*args, **kwargs)

    def triton_batch_scores(images, captions, mask, options, *, precision, smooth):
        calls.append(("triton", precision, smooth is not None and smooth.requires_grad))
        return torch.zeros(images.shape[0], captions.shape[0])

    monkeypatch.setattr(torch_path, "pairwise_scores", pairwise_scores)
    monkeypatch.setattr(triton_path, "batch_scores", triton_batch_scores)
    model = build_model(small_config(learn_lambda=True))
    assert model.scoring_backend == "auto"
    features, tokens, lengths = random_batch(4)
    model(features, tokens, lengths).sum().backward()
    assert calls == ["torch"] and model.log_lambda is not None and model.log_lambda.grad is not None
    with torch.no_grad():
        model(features, tokens, lengths)
    assert calls[1:] == [("triton", "bf16", False)]
    assert dispatch.resolve_backend("auto", "cuda", model.attention, learned_smooth=True) == "torch"
    assert dispatch.resolve_backend("auto", "cuda", model.attention) == "triton"


def test_forced_triton_refuses_a_learned_lambda(monkeypatch):
    model = build_model(small_config(learn_lambda=True))
    model.scoring_backend = "triton"
    features, tokens, lengths = random_batch(5)
    expected = "does not implement a learned lambda_softmax (model.learn_lambda)"
    # Refused whether or not triton could run here: it would never train lambda_1.
    for device in ("cpu", "cuda"):
        with pytest.raises(BackendError, match=re.escape(expected) + r".*use backend='torch'"):
            dispatch.resolve_backend("triton", device, model.attention, learned_smooth=True)
    with pytest.raises(BackendError, match=re.escape(expected)):
        model(features, tokens, lengths)


@pytest.mark.triton
def test_triton_kernels_refuse_a_lambda_that_needs_a_gradient():
    """The kernels' own entry point refuses too; a lambda_1 without a gradient scores as its float."""
    pytest.importorskip("triton")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    images, captions, _lengths, mask = random_inputs(9, n=2, m=3, r=4, w=8, d=16, min_length=5)
    images, captions, mask = images.float().to(device), captions.float().to(device), mask.to(device)
    opts = AttentionOptions(direction="t2i", smooth=9.0, agg="Mean")
    log_lambda = torch.tensor(math.log(5.0), device=device, requires_grad=True)
    with pytest.raises(BackendError, match="learned lambda_softmax"):
        dispatch.batch_scores(images, captions, mask, opts, backend="triton", smooth=log_lambda.exp())
    with pytest.raises(BackendError, match="learned lambda_softmax"):
        triton_path.batch_scores(images, captions, mask, opts, precision="fp32", smooth=log_lambda.exp())
    with torch.no_grad():
        ours = triton_path.batch_scores(images, captions, mask, opts, precision="fp32", smooth=log_lambda.exp())
        at_float = dispatch.batch_scores(
            images, captions, mask, dataclasses.replace(opts, smooth=float(log_lambda.exp())), backend="torch"
        )
    assert rel_err(ours.cpu(), at_float.cpu()) < 1e-4


@pytest.fixture(scope="module")
def learned_run(synthetic_data, tmp_path_factory) -> Path:
    """A tiny run trained with `model.learn_lambda=true` (a few steps): its best checkpoint."""
    from scan.config import load_config
    from scan.train import recipe

    run_dir = tmp_path_factory.mktemp("learned-lambda-run")
    overrides = [f"data.path={synthetic_data}", f"train.run_dir={run_dir}", *TINY, "model.learn_lambda=true"]
    recipe.train(recipe.setup(load_config(SYNTHETIC_CONFIG, overrides)))
    return run_dir


def test_a_checkpoint_carries_the_learned_lambda(learned_run):
    from scan.models.loading import load_model, resolve_model_folder

    folder = resolve_model_folder(learned_run)
    saved = load_file(str(folder / ckpt.MODEL_FILE))["log_lambda"]
    trained = load_model(folder)
    model = trained.model
    assert isinstance(model, SCAN) and trained.config.model.learn_lambda
    assert model.log_lambda is not None and torch.equal(model.log_lambda.detach(), saved)
    assert saved.item() != pytest.approx(math.log(trained.config.model.lambda_softmax), abs=1e-6)  # it trained
    assert model.attention.smooth == float(saved.exp())


def test_the_recipe_trains_lambda_at_its_own_learning_rate_scale():
    """Adam moves a weight by about the learning rate per step: lambda_1 gets a larger one."""
    from scan.train.recipe import LEARNED_LAMBDA_LR_SCALE, _parameter_groups

    learned = build_model(ModelConfig(image_dim=8, embed_dim=8, word_dim=8, vocab_size=20, learn_lambda=True))
    groups = _parameter_groups(learned)
    assert [g["lr_scale"] for g in groups] == [1.0, LEARNED_LAMBDA_LR_SCALE] and LEARNED_LAMBDA_LR_SCALE > 1
    assert groups[1]["params"] == [learned.log_lambda]
    every = {id(p) for p in learned.parameters() if p.requires_grad}
    assert {id(p) for g in groups for p in g["params"]} == every and len(groups[0]["params"]) == len(every) - 1
    fixed = build_model(ModelConfig(image_dim=8, embed_dim=8, word_dim=8, vocab_size=20))
    assert len(_parameter_groups(fixed)) == 1  # without it, one group as before


def test_lambda_moves_further_than_the_base_rate_allows(learned_run):
    """lambda_1 moved further than Adam could carry it at the weights' learning rate.

    One Adam step moves a parameter by at most lr * (1 - beta1) / sqrt(1 - beta2), 3.16 lr at
    the defaults, whatever the gradient; over the run's steps at the base rate that bounds the
    distance, and only the larger rate of lambda_1's own group can go beyond it.
    """
    from scan.models.loading import load_model, resolve_model_folder

    trained = load_model(resolve_model_folder(learned_run))
    moved = abs(float(trained.model.log_lambda.detach()) - math.log(trained.config.model.lambda_softmax))
    steps, lr = trained.config.train.max_steps, trained.config.train.lr
    assert moved > steps * lr * (1 - 0.9) / math.sqrt(1 - 0.999)
