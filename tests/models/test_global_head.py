"""The global head: pooled, projected unit vectors from SCAN's encodings, and how models carry it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scan import checkpoint as ckpt
from scan.config import ModelConfig
from scan.losses import triplet_loss
from scan.models.global_head import GlobalHead
from scan.models.loading import has_global_head
from scan.models.scan import SCAN, GlobalEmbedding, build_model


def small_config(**changes) -> ModelConfig:
    return ModelConfig(image_dim=8, embed_dim=16, word_dim=8, vocab_size=20, **changes)


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(4, 5, 8, generator=generator)  # (B, R, F)
    tokens = torch.randint(4, 20, (4, 7), generator=generator)  # (B, W)
    lengths = torch.tensor([7, 5, 3, 1])
    return features, tokens, lengths


def scrambled_head(dim: int, seed: int) -> GlobalHead:
    """A head moved away from its identity start, so the projection is really exercised."""
    head = GlobalHead(dim)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    return head


def reference_text(head: GlobalHead, words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One caption at a time, its real words only: the obvious computation."""
    out = []
    for m in range(words.shape[0]):
        real = [words[m, w] for w in range(words.shape[1]) if mask[m, w]]
        pooled = torch.stack(real).mean(dim=0) if real else torch.zeros(words.shape[2])  # (D,)
        out.append(F.normalize(head.text_projection(pooled), dim=-1))
    return torch.stack(out)  # (M, D)


def reference_image(head: GlobalHead, regions: torch.Tensor) -> torch.Tensor:
    out = []
    for n in range(regions.shape[0]):
        pooled = sum(regions[n, r] for r in range(regions.shape[1])) / regions.shape[1]  # (D,)
        out.append(F.normalize(head.image_projection(pooled), dim=-1))
    return torch.stack(out)  # (N, D)


def test_shapes_and_unit_norm():
    head = scrambled_head(16, seed=1)
    regions = F.normalize(torch.randn(3, 6, 16), dim=-1)  # (N, R, D)
    words = F.normalize(torch.randn(5, 7, 16), dim=-1)  # (M, W, D)
    mask = torch.arange(7)[None, :] < torch.tensor([7, 4, 1, 2, 6])[:, None]  # (M, W)
    images, captions = head.image(regions), head.text(words, mask)
    assert images.shape == (3, 16) and captions.shape == (5, 16)
    torch.testing.assert_close(images.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(captions.norm(dim=-1), torch.ones(5))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pooling_matches_a_loop_and_ignores_garbage_in_padding(seed):
    generator = torch.Generator().manual_seed(seed)
    head = scrambled_head(16, seed=seed)
    lengths = torch.randint(1, 9, (6,), generator=generator)
    mask = torch.arange(9)[None, :] < lengths[:, None]  # (M, W)
    words = F.normalize(torch.randn(6, 9, 16, generator=generator), dim=-1) * mask[..., None]  # (M, W, D)
    regions = F.normalize(torch.randn(4, 5, 16, generator=generator), dim=-1)  # (N, R, D)

    expected = reference_text(head, words, mask)
    torch.testing.assert_close(head.text(words, mask), expected)
    torch.testing.assert_close(head.image(regions), reference_image(head, regions))

    garbage = torch.randn(words.shape, generator=generator) * 1e3
    garbage[..., 0] = float("nan")
    garbage[..., 1] = float("inf")
    dirty = torch.where(mask[..., None], words, garbage)  # same real words, junk in the padded slots
    torch.testing.assert_close(head.text(dirty, mask), expected)


def test_head_starts_as_the_baselines_mean_pooling():
    """Identity start: the head's vectors are exactly what the `vse` baseline pools."""
    features, tokens, lengths = batch()
    torch.manual_seed(0)
    scan = build_model(small_config()).eval()
    torch.manual_seed(0)
    baseline = build_model(small_config(architecture="vse")).eval()
    assert isinstance(baseline, GlobalEmbedding) and baseline.global_head is None
    assert scan.global_head is not None
    with torch.no_grad():
        words, mask = scan.encode_text(tokens, lengths)
        pooled_words, _ = baseline.encode_text(tokens, lengths)  # (M, 1, D)
        torch.testing.assert_close(scan.global_head.text(words, mask), pooled_words[:, 0])
        torch.testing.assert_close(
            scan.global_head.image(scan.encode_image(features)), baseline.encode_image(features)[:, 0]
        )


def test_the_config_decides_and_the_baseline_never_has_one():
    assert ModelConfig().global_head is True
    with_head, without = build_model(small_config()), build_model(small_config(global_head=False))
    assert has_global_head(with_head) and isinstance(with_head.global_head, GlobalHead)
    assert not has_global_head(without) and without.global_head is None
    assert not has_global_head(build_model(small_config(architecture="vse", global_head=True)))
    assert any(name.startswith("global_head.") for name in with_head.state_dict())
    assert not any(name.startswith("global_head.") for name in without.state_dict())


def test_forward_with_global_encodes_once_and_matches_separate_computation(monkeypatch):
    model = build_model(small_config()).eval()
    model.scoring_backend, model.scoring_precision = "torch", "fp32"
    assert isinstance(model, SCAN) and model.global_head is not None
    features, tokens, lengths = batch()
    with torch.no_grad():
        images = model.encode_image(features)  # (B, R, D)
        captions, mask = model.encode_text(tokens, lengths)  # (B, W, D), (B, W)
        expected_scan = model.similarity(images, captions, mask)  # (B, B)
        expected_global = model.global_head.image(images) @ model.global_head.text(captions, mask).T  # (B, B)

        calls = []
        for name in ("encode_image", "encode_text"):
            real = getattr(model, name)
            monkeypatch.setattr(model, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
        scores, global_scores = model.forward_with_global(features, tokens, lengths)
    assert sorted(calls) == ["encode_image", "encode_text"]  # one encoding serves both matrices
    assert global_scores is not None and global_scores.shape == (4, 4)
    torch.testing.assert_close(scores, expected_scan)
    torch.testing.assert_close(global_scores, expected_global)
    monkeypatch.undo()
    with torch.no_grad():
        torch.testing.assert_close(model(features, tokens, lengths), expected_scan)  # forward is unchanged

    headless = build_model(small_config(global_head=False)).eval()
    with torch.no_grad():
        scores, global_scores = headless.forward_with_global(features, tokens, lengths)
        torch.testing.assert_close(scores, headless(features, tokens, lengths))
    assert global_scores is None


def test_the_global_loss_trains_the_head_and_the_encoders():
    model = build_model(small_config()).train()
    assert model.global_head is not None
    _, global_scores = model.forward_with_global(*batch())
    assert global_scores is not None
    triplet_loss(global_scores, max_violation=False)["loss"].backward()
    for name, parameter in model.global_head.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert model.image_encoder.fc.weight.grad is not None and model.image_encoder.fc.weight.grad.abs().sum() > 0


def test_weights_without_a_head_do_not_load_into_a_model_with_one(tmp_path):
    headless = build_model(small_config(global_head=False))
    ckpt.save_checkpoint(tmp_path / "c", model=headless, optimizer=None, state={}, config_yaml="", vocab_json=None)
    with pytest.raises(ckpt.CheckpointError, match="global_head"):
        ckpt.load_weights(tmp_path / "c", build_model(small_config()))
