"""The SCAN model holds its attention options as one checked `AttentionOptions` and scores with it."""

from __future__ import annotations

import pytest
import torch

from scan.config import ModelConfig
from scan.errors import ConfigError
from scan.models.scan import SCAN, GlobalEmbedding, attention_options, build_model
from scan.similarity import dispatch
from scan.similarity.options import AttentionOptions


def small_config(**changes) -> ModelConfig:
    return ModelConfig(image_dim=8, embed_dim=16, word_dim=8, vocab_size=20, **changes)


def test_attention_options_from_the_config_fields():
    config = small_config(direction="i2t", raw_feature_norm="softmax", lambda_softmax=4.0, agg="Mean", lambda_lse=5.0)
    expected = AttentionOptions(direction="i2t", norm="softmax", smooth=4.0, agg="Mean", lambda_lse=5.0)
    assert attention_options(config) == expected
    model = build_model(config)
    assert isinstance(model, SCAN) and model.attention == expected
    assert not hasattr(model, "attention_options")  # the old dict property is gone


@pytest.mark.parametrize(
    "field,value,named",
    [
        ("direction", "both", "model.direction"),
        ("raw_feature_norm", "l3norm", "model.raw_feature_norm"),
        ("lambda_softmax", 0.0, "model.lambda_softmax"),
        ("agg", "Summ", "model.agg"),
        ("lambda_lse", -1.0, "model.lambda_lse"),
    ],
)
def test_a_bad_option_fails_when_the_model_is_built(field, value, named):
    with pytest.raises(ConfigError, match=named):
        build_model(small_config(**{field: value}))


def test_unknown_architecture_is_a_config_error():
    with pytest.raises(ConfigError, match="model.architecture"):
        build_model(small_config(architecture="clip"))


def test_model_passes_its_options_to_dispatch(monkeypatch):
    model = build_model(small_config(direction="i2t", agg="Max", lambda_softmax=4.0)).eval()
    model.scoring_backend, model.scoring_precision = "torch", "fp32"
    seen = []
    real_batch, real_matrix = dispatch.batch_scores, dispatch.score_matrix

    def batch_scores(images, captions, mask, options, **kwargs):
        seen.append(("batch", options, kwargs))
        return real_batch(images, captions, mask, options, **kwargs)

    def score_matrix(images, captions, lengths, options, **kwargs):
        seen.append(("matrix", options, kwargs))
        return real_matrix(images, captions, lengths, options, **kwargs)

    monkeypatch.setattr(dispatch, "batch_scores", batch_scores)
    monkeypatch.setattr(dispatch, "score_matrix", score_matrix)
    features = torch.randn(3, 5, 8)  # (B, R, F)
    tokens = torch.randint(4, 20, (3, 6))  # (B, W)
    lengths = torch.tensor([6, 4, 2])
    with torch.no_grad():
        batch = model(features, tokens, lengths)  # (B, B)
        images = model.encode_image(features)
        captions, _ = model.encode_text(tokens, lengths)
        matrix = model.score_matrix(images, captions, lengths)
    assert [kind for kind, _, _ in seen] == ["batch", "matrix"]
    assert all(options is model.attention for _, options, _ in seen)
    assert seen[0][2] == dict(backend="torch", precision="fp32", smooth=None)  # lambda_1 is not learned
    assert seen[1][2] == dict(backend="torch", precision="fp32")
    torch.testing.assert_close(matrix, batch, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_attention_weights_follow_the_options(direction):
    model = build_model(small_config(direction=direction)).eval()
    weights = model.attention_weights(torch.randn(5, 8), torch.tensor([1, 7, 9, 2]))
    assert weights.shape == ((4, 5) if direction == "t2i" else (5, 4))
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[0]))


def test_global_embedding_builds_with_the_same_options():
    model = build_model(small_config(architecture="vse"))
    assert isinstance(model, GlobalEmbedding) and model.attention == attention_options(small_config())
