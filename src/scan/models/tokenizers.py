"""Caption tokenizers behind one small interface, so the data pipeline ignores which is used.

The GRU encoder reads ids from the SCAN vocabulary (built from the training captions, saved in
the released JSON format); the pretrained MiniLM encoder reads WordPiece ids from its own
tokenizer. Both expose `encode(text) -> list[int]`, `unk_id`, `__len__`, `save(path)` and
`to_json()` so a checkpoint folder carries what it needs to read new captions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from scan.config import Config
from scan.data.vocab import (
    Vocabulary,
    build_vocabulary,
    load_vocabulary,
    save_vocabulary,
    vocabulary_json,
)


class VocabularyTokenizer:
    """Word ids from a SCAN vocabulary, wrapped as `<start> w1 ... wn <end>`."""

    def __init__(self, vocab: Vocabulary):
        self.vocab = vocab
        self.unk_id = vocab.index("<unk>")
        self.pad_id = 0

    def encode(self, text: str, *, wrap: bool = True) -> list[int]:
        return self.vocab.encode(text, wrap=wrap)

    def __len__(self) -> int:
        return len(self.vocab)

    def save(self, path: str | Path) -> None:
        save_vocabulary(self.vocab, path)

    def to_json(self) -> str:
        return vocabulary_json(self.vocab)


def build_tokenizer(config: Config, *, train_captions: Sequence[str], vocab_file: str = ""):
    """The tokenizer for `config.model.text_encoder`; a GRU vocabulary is loaded or built from train."""
    if config.model.text_encoder == "minilm":
        from scan.models.pretrained_text import MiniLMTokenizer

        return MiniLMTokenizer()
    if vocab_file and Path(vocab_file).exists():
        return VocabularyTokenizer(load_vocabulary(vocab_file))
    return VocabularyTokenizer(build_vocabulary(train_captions, threshold=config.data.vocab_threshold))
