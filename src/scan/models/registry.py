"""The text encoders a model can use, by the name `model.text_encoder` gives them.

Each entry says how to build the encoder from a `ModelConfig` and the tokenizer that feeds it,
so the model (`scan.models.scan.build_text_encoder`), the data pipeline
(`scan.models.tokenizers.build_tokenizer`) and config validation all read one table: a new
encoder is added here, in one place.

This module imports nothing heavy: `scan.config` reads `TEXT_ENCODERS` to validate a config at
load time, and the builders import their encoder's module (torch, transformers) when called.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from scan.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from scan.config import Config, ModelConfig
    from scan.models.tokenizers import Tokenizer

__all__ = ["TEXT_ENCODERS", "TextEncoderSpec", "text_encoder"]


@dataclass(frozen=True)
class TextEncoderSpec:
    """One text encoder: how to build it and the tokenizer whose ids it reads.

    Attributes:
        name: The value of `model.text_encoder` that selects it.
        description: One line for listings and error messages.
        build_encoder: `ModelConfig -> nn.Module` mapping `(M, W)` ids and `(M,)` lengths to
            `(M, W, D)` unit word vectors and an `(M, W)` mask.
        build_tokenizer: `(Config, *, train_captions, vocab_file) -> Tokenizer`. It takes the
            whole `Config` because a vocabulary's word threshold is a data setting
            (`data.vocab_threshold`).
        needs_vocabulary: Whether the tokenizer reads a vocabulary made from the training
            captions (so a trained model folder must carry its `vocab.json`), rather than a
            pretrained one that ships with its package.
    """

    name: str
    description: str
    build_encoder: Callable[[ModelConfig], nn.Module]
    build_tokenizer: Callable[..., Tokenizer]
    needs_vocabulary: bool


def _gru_encoder(config: ModelConfig) -> nn.Module:
    from scan.models.text_encoder import GRUTextEncoder

    if config.vocab_size <= 0:
        raise ConfigError("model.vocab_size: must be set (from the vocabulary) for the GRU text encoder, got 0")
    return GRUTextEncoder(
        vocab_size=config.vocab_size,
        word_dim=config.word_dim,
        embed_dim=config.embed_dim,
        num_layers=config.num_layers,
        bidirectional=config.bidirectional,
    )


def _gru_tokenizer(
    config: Config, *, train_captions: Sequence[str] | None = None, vocab_file: str | Path | None = None
) -> Tokenizer:
    from scan.models.tokenizers import vocabulary_tokenizer

    return vocabulary_tokenizer(config, train_captions=train_captions, vocab_file=vocab_file)


def _minilm_encoder(config: ModelConfig) -> nn.Module:
    from scan.models.pretrained_text import MiniLMTextEncoder

    return MiniLMTextEncoder(embed_dim=config.embed_dim, freeze=config.freeze_text)


def _minilm_tokenizer(
    config: Config, *, train_captions: Sequence[str] | None = None, vocab_file: str | Path | None = None
) -> Tokenizer:
    # The WordPiece vocabulary ships with the weights package; a model folder's vocab.json only
    # records which package version it was (see MiniLMTokenizer.to_json), so both inputs are unused.
    from scan.models.pretrained_text import MiniLMTokenizer

    return MiniLMTokenizer()


TEXT_ENCODERS: dict[str, TextEncoderSpec] = {
    spec.name: spec
    for spec in (
        TextEncoderSpec(
            name="gru",
            description="word embeddings and a bi-GRU trained from scratch, on a vocabulary of the training captions (paper section 3.4)",
            build_encoder=_gru_encoder,
            build_tokenizer=_gru_tokenizer,
            needs_vocabulary=True,
        ),
        TextEncoderSpec(
            name="minilm",
            description="pretrained all-MiniLM-L6-v2 WordPiece tokens, projected to the joint space (pip install 'scan[text]')",
            build_encoder=_minilm_encoder,
            build_tokenizer=_minilm_tokenizer,
            needs_vocabulary=False,
        ),
    )
}


def text_encoder(name: str) -> TextEncoderSpec:
    """The spec registered under `name`.

    Raises:
        ConfigError: No encoder has that name; the message lists the known ones.
    """
    try:
        return TEXT_ENCODERS[name]
    except KeyError:
        raise ConfigError(
            f"model.text_encoder: {name!r} is not a text encoder; choose one of {sorted(TEXT_ENCODERS)}"
        ) from None
