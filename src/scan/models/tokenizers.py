"""Caption tokenizers behind one small interface, so the data pipeline ignores which is used.

The GRU encoder reads ids from the SCAN vocabulary (built from the training captions, saved in
the released JSON format); the pretrained MiniLM encoder reads WordPiece ids from its own
tokenizer. Both satisfy the `Tokenizer` protocol, so a checkpoint folder carries what it needs to
read new captions and drawing code can label each id. Which tokenizer a model uses is decided by
its text encoder's entry in `scan.models.registry`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from scan.config import Config
from scan.data.vocab import (
    Vocabulary,
    build_vocabulary,
    load_vocabulary,
    save_vocabulary,
    vocabulary_json,
)
from scan.errors import ConfigError, DataError
from scan.models.registry import text_encoder

__all__ = ["Tokenizer", "VocabularyTokenizer", "build_tokenizer", "vocabulary_tokenizer"]


@runtime_checkable
class Tokenizer(Protocol):
    """What the data pipeline, checkpoints and drawing need from a tokenizer.

    Attributes:
        unk_id: The id of words the tokenizer does not know.
        pad_id: The id batches are padded with (0 for both tokenizers: the collate assumes it).
    """

    unk_id: int
    pad_id: int

    def encode(self, text: str, *, wrap: bool = True) -> list[int]:
        """The ids of `text`, wrapped in the start and end tokens when `wrap`."""
        ...

    def tokens(self, ids: Sequence[int]) -> list[str]:
        """The string to show for each id (special tokens included), e.g. to label attention."""
        ...

    def __len__(self) -> int:
        """The number of ids (the size of the text encoder's embedding table)."""
        ...

    def save(self, path: str | Path) -> None:
        """Write `to_json()` to `path`, so a model folder can rebuild this tokenizer."""
        ...

    def to_json(self) -> str:
        """What a checkpoint records about this tokenizer."""
        ...


class VocabularyTokenizer:
    """Word ids from a SCAN vocabulary, wrapped as `<start> w1 ... wn <end>`."""

    def __init__(self, vocab: Vocabulary):
        self.vocab = vocab
        self.unk_id = vocab.index("<unk>")
        self.pad_id = 0

    def encode(self, text: str, *, wrap: bool = True) -> list[int]:
        return self.vocab.encode(text, wrap=wrap)

    def tokens(self, ids: Sequence[int]) -> list[str]:
        """The vocabulary's word for each id (`<start>`, `<end>`, `<unk>` included)."""
        return self.vocab.decode(ids)

    def __len__(self) -> int:
        return len(self.vocab)

    def save(self, path: str | Path) -> None:
        save_vocabulary(self.vocab, path)

    def to_json(self) -> str:
        return vocabulary_json(self.vocab)


def vocabulary_tokenizer(
    config: Config, *, train_captions: Sequence[str] | None = None, vocab_file: str | Path | None = None
) -> VocabularyTokenizer:
    """A vocabulary tokenizer: loaded from `vocab_file`, or else built from `train_captions`.

    A missing vocabulary is an error, never an empty one: a model scored through a vocabulary
    it was not trained with (or through the four special tokens alone) gives meaningless scores
    without any other sign of failure.

    Args:
        config: The run's config (`data.vocab_threshold` sets which words a built vocabulary keeps).
        train_captions: The training captions to build a vocabulary from when no file is given.
        vocab_file: A vocabulary JSON; an empty string or None means none is given.

    Raises:
        DataError: `vocab_file` is given but does not exist, or is malformed.
        ConfigError: Neither a vocabulary file nor any training captions are given.
    """
    if vocab_file is not None and str(vocab_file) != "":
        path = Path(vocab_file)
        if not path.is_file():
            raise DataError(
                "no such vocabulary file; the GRU text encoder must read words through the vocabulary "
                "it was trained with (set data.vocab, or use a model folder that has its vocab.json)",
                path=path,
            )
        return VocabularyTokenizer(load_vocabulary(path))
    if train_captions is None or len(train_captions) == 0:
        raise ConfigError(
            "data.vocab: the GRU text encoder needs a vocabulary, and there is neither a vocabulary file "
            "nor any training captions to build one from"
        )
    return VocabularyTokenizer(build_vocabulary(train_captions, threshold=config.data.vocab_threshold))


def build_tokenizer(
    config: Config, *, train_captions: Sequence[str] | None = None, vocab_file: str | Path | None = None
) -> Tokenizer:
    """The tokenizer of `config.model.text_encoder`, as its registry entry builds it.

    For the GRU encoder the vocabulary is loaded from `vocab_file` when one is given (and must
    exist), else built from `train_captions`; the MiniLM tokenizer ships with its weights and
    reads neither.

    Raises:
        ConfigError: An unknown text encoder, or a GRU encoder with neither a vocabulary file nor
            training captions.
        DataError: A GRU encoder whose `vocab_file` is missing or malformed.
    """
    spec = text_encoder(config.model.text_encoder)
    return spec.build_tokenizer(config, train_captions=train_captions, vocab_file=vocab_file)
