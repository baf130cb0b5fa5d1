"""Word vocabulary: building it from training captions, encoding captions as ids, and the JSON file.

SCAN's text encoder embeds word ids, so captions become ``<start> w1 ... wn <end>`` id sequences
(spec, "Data"). The file format is the one released with SCAN,
``{"word2idx": {...}, "idx2word": {"0": "<pad>", ...}, "idx": N}``, so the authors' vocabularies
load unchanged. The released ``f30k_precomp_vocab.json`` holds 8,480 words with the four special
tokens at the standard ids (``<pad>`` 0, ``<start>`` 1, ``<end>`` 2, ``<unk>`` 3), ``idx`` equal to
the word count and ``idx2word`` the exact inverse of ``word2idx``; it needs no special handling, and
every loaded file is held to the same rules, because padding and masking downstream assume
``<pad>`` is id 0. Unlike the original code, :func:`build_vocabulary` is meant to see training
captions only (the original also counted dev captions, leaking them into the vocabulary).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

from scan.atomic import write_text_atomic
from scan.data.text import read_utf8_text
from scan.data.tokenize import tokenize
from scan.errors import DataError

__all__ = [
    "END",
    "END_ID",
    "PAD",
    "PAD_ID",
    "SPECIAL_TOKENS",
    "START",
    "START_ID",
    "UNK",
    "UNK_ID",
    "Vocabulary",
    "build_vocabulary",
    "load_vocabulary",
    "save_vocabulary",
    "unknown_token_rate",
]

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
PAD_ID, START_ID, END_ID, UNK_ID = 0, 1, 2, 3
SPECIAL_TOKENS: tuple[str, ...] = (PAD, START, END, UNK)  # at ids 0, 1, 2, 3 in every vocabulary


class Vocabulary:
    """A fixed word <-> id mapping whose first four ids are the special tokens.

    Args:
        idx2word: The word of each id; must start with ``<pad>, <start>, <end>, <unk>`` and hold
            no word twice.

    Raises:
        DataError: If the special tokens are missing or misplaced, or a word repeats.
    """

    unk_id = UNK_ID  # so a Vocabulary is a CaptionEncoder (scan.data.collate) like any tokenizer
    pad_id = PAD_ID

    def __init__(self, idx2word: Sequence[str]) -> None:
        self.idx2word: list[str] = list(idx2word)
        _check_words(self.idx2word, source=None)
        self.word2idx: dict[str, int] = {word: i for i, word in enumerate(self.idx2word)}

    def __len__(self) -> int:
        return len(self.idx2word)

    def __contains__(self, word: object) -> bool:
        return word in self.word2idx

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.idx2word == other.idx2word

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} words)"

    def index(self, word: str) -> int:
        """The id of ``word``, or ``UNK_ID`` for a word the vocabulary does not hold."""
        return self.word2idx.get(word, UNK_ID)

    def encode(self, text_or_tokens: str | Sequence[str], *, wrap: bool = True) -> list[int]:
        """Turn a caption into ids.

        Args:
            text_or_tokens: A raw caption, tokenised with :func:`scan.data.tokenize.tokenize`, or
                tokens that are already split (used as they are).
            wrap: Add ``<start>`` and ``<end>``, as the text encoder was trained with them.

        Returns:
            The ids, unknown words mapped to ``UNK_ID``.
        """
        tokens = tokenize(text_or_tokens) if isinstance(text_or_tokens, str) else text_or_tokens
        ids = [self.word2idx.get(token, UNK_ID) for token in tokens]
        return [START_ID, *ids, END_ID] if wrap else ids

    def decode(self, ids: Iterable[int]) -> list[str]:
        """The words of ``ids``, special tokens included (for showing what the model saw).

        Raises:
            IndexError: If an id is negative or not below ``len(self)``.
        """
        words = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.idx2word):
                raise IndexError(f"word id {i} is outside the vocabulary of {len(self)} words")
            words.append(self.idx2word[i])
        return words

    def unknown_rate(self, captions: Iterable[str | Sequence[str]]) -> float:
        """The fraction of caption tokens that are not in the vocabulary.

        A quick check that a vocabulary and a tokenizer fit a data set: a high rate means the
        captions were tokenised differently from the vocabulary's source, not just rare words.

        Args:
            captions: Raw captions, or token lists; ``<start>``/``<end>`` are not counted.

        Returns:
            Unknown tokens over all tokens, 0.0 when there are no tokens.
        """
        total = unknown = 0
        for caption in captions:
            tokens = tokenize(caption) if isinstance(caption, str) else caption
            total += len(tokens)
            unknown += sum(token not in self.word2idx for token in tokens)
        return unknown / total if total else 0.0


def unknown_token_rate(
    token_ids: Sequence[Sequence[int]],
    unk_id: int,
    *,
    special_ids: Collection[int] = (PAD_ID, START_ID, END_ID),
) -> float:
    """The fraction of word tokens that are unknown, over already-encoded captions.

    The id-level twin of :meth:`Vocabulary.unknown_rate`, for callers holding ids from any
    tokenizer (a :class:`Vocabulary`, a WordPiece one): a rate near 1 means the vocabulary does not
    belong to these captions (another data set, another tokenizer), not merely rare words.

    Args:
        token_ids: One id sequence per caption, wrapped or not, padded or not.
        unk_id: The id of unknown words (``Vocabulary.unk_id`` is ``UNK_ID``).
        special_ids: Ids that are not words and are left out of the count: padding, start and end
            (by default this module's ``<pad>``, ``<start>``, ``<end>``; give another tokenizer's
            own, e.g. BERT's ``(0, 101, 102)``).

    Returns:
        Unknown tokens over all word tokens, in ``[0, 1]``; 0.0 when there are no word tokens.
    """
    special = frozenset(int(i) for i in special_ids) - {int(unk_id)}  # unknown words always count
    total = unknown = 0
    for sequence in token_ids:
        for token in sequence:
            token = int(token)  # also accepts tensors and numpy arrays of ids
            if token in special:
                continue
            total += 1
            unknown += token == unk_id
    return unknown / total if total else 0.0


def build_vocabulary(captions: Iterable[str | Sequence[str]], *, threshold: int = 4) -> Vocabulary:
    """Build a vocabulary of the words seen at least ``threshold`` times.

    Build it from the TRAINING captions only: the original SCAN code also counted the dev
    captions, so words that occur only in dev got ids and dev scores were slightly optimistic.

    Args:
        captions: Raw captions (tokenised here) or token lists.
        threshold: Minimum count for a word to get its own id; rarer words map to ``<unk>``.

    Returns:
        The special tokens at ids 0-3, then the kept words by descending count, ties in
        alphabetical order, so the same captions always give the same ids.
    """
    if threshold < 1:
        raise ValueError(f"threshold must be at least 1, got {threshold}")
    counts: Counter[str] = Counter()
    for caption in captions:
        counts.update(tokenize(caption) if isinstance(caption, str) else caption)
    kept = [w for w, c in counts.items() if c >= threshold and w not in SPECIAL_TOKENS]
    kept.sort(key=lambda word: (-counts[word], word))
    return Vocabulary([*SPECIAL_TOKENS, *kept])


def save_vocabulary(vocab: Vocabulary, path: str | os.PathLike[str]) -> None:
    """Write ``vocab`` in the released SCAN JSON format, atomically.

    The file is written to a temporary file in the same folder, flushed to disk and renamed over
    ``path``, so a crash never leaves a half-written vocabulary that a later run would load.
    """
    write_text_atomic(Path(path), vocabulary_json(vocab))


def vocabulary_json(vocab: Vocabulary) -> str:
    """``vocab`` as the released SCAN JSON document (``word2idx``, ``idx2word``, ``idx``)."""
    document = {
        "word2idx": vocab.word2idx,
        "idx2word": {str(i): word for i, word in enumerate(vocab.idx2word)},
        "idx": len(vocab),
    }
    return json.dumps(document, ensure_ascii=False)


def load_vocabulary(path: str | os.PathLike[str]) -> Vocabulary:
    """Read a vocabulary file, checking that it is consistent.

    Three layouts are read: the released format ``{"word2idx", "idx2word", "idx"}`` (as written
    by :func:`save_vocabulary`; ``idx2word`` may also be a list), a plain JSON list of words in
    id order, and a plain ``{word: id}`` object. In every layout the ids must be exactly
    ``0..N-1`` and ``<pad>, <start>, <end>, <unk>`` must be ids 0-3 (true of the released
    ``f30k_precomp_vocab.json``).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        DataError: Naming the file and line or field, if it is not UTF-8 or not JSON, lacks a
            key, has ids that disagree or skip, or misses the special tokens.
    """
    path = Path(path)
    text = read_utf8_text(path)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"not valid JSON: {error.msg}", path=path, line=error.lineno) from None
    if isinstance(document, list):
        words = _words_from_list(document, path=path, field="(list of words)")
    elif isinstance(document, dict) and ("word2idx" in document or "idx2word" in document):
        words = _words_from_released(document, path=path)
    elif isinstance(document, dict):
        words = _words_from_mapping(document, path=path, field="(word -> id object)")
    else:
        raise DataError(f"expected a JSON object or list, got {type(document).__name__}", path=path)
    _check_words(words, source=path)
    return Vocabulary(words)


def _words_from_released(document: dict, *, path: Path) -> list[str]:
    """The id-ordered words of the released format, after checking its three fields agree."""
    for key in ("word2idx", "idx2word"):
        if key not in document:
            raise DataError(
                f"missing key {key!r} (the released format has 'word2idx', 'idx2word', 'idx')",
                path=path,
                field=key,
            )
    idx2word = document["idx2word"]
    if isinstance(idx2word, list):
        words = _words_from_list(idx2word, path=path, field="idx2word")
    elif isinstance(idx2word, dict):
        by_id: dict[int, str] = {}
        for key, word in idx2word.items():
            try:
                i = int(key)
            except ValueError:
                raise DataError(f"key {key!r} is not an integer id", path=path, field="idx2word") from None
            if not isinstance(word, str):
                raise DataError(f"id {key} maps to {word!r}, not a word", path=path, field="idx2word")
            by_id[i] = word
        words = _ordered_by_id(by_id, path=path, field="idx2word")
    else:
        raise DataError("must be an object of id -> word", path=path, field="idx2word")
    word2idx = document["word2idx"]
    if not isinstance(word2idx, dict):
        raise DataError("must be an object of word -> id", path=path, field="word2idx")
    if len(word2idx) != len(words):
        raise DataError(f"has {len(word2idx)} words but idx2word has {len(words)}", path=path, field="word2idx")
    for word, i in word2idx.items():
        if not isinstance(i, int) or not 0 <= i < len(words) or words[i] != word:
            actual = words[i] if isinstance(i, int) and 0 <= i < len(words) else "nothing"
            raise DataError(
                f"maps {word!r} to {i!r} but idx2word maps {i!r} to {actual!r}",
                path=path,
                field="word2idx",
            )
    if "idx" in document and document["idx"] != len(words):
        raise DataError(
            f"is {document['idx']!r} but the vocabulary has {len(words)} words",
            path=path,
            field="idx",
        )
    return words


def _words_from_list(items: list, *, path: Path, field: str) -> list[str]:
    """The words of a JSON list, checking every item is a string."""
    for i, word in enumerate(items):
        if not isinstance(word, str):
            raise DataError(f"item {i} is {word!r}, not a word", path=path, field=field)
    return list(items)


def _words_from_mapping(mapping: dict, *, path: Path, field: str) -> list[str]:
    """The id-ordered words of a ``{word: id}`` object."""
    by_id: dict[int, str] = {}
    for word, i in mapping.items():
        if not isinstance(i, int) or isinstance(i, bool):
            raise DataError(f"{word!r} maps to {i!r}, not an integer id", path=path, field=field)
        if i in by_id:
            raise DataError(f"{by_id[i]!r} and {word!r} both have id {i}", path=path, field=field)
        by_id[i] = word
    return _ordered_by_id(by_id, path=path, field=field)


def _ordered_by_id(by_id: dict[int, str], *, path: Path, field: str) -> list[str]:
    """The words in id order, checking the ids are exactly 0..N-1."""
    n = len(by_id)
    missing = sorted(set(range(n)) - by_id.keys())
    if missing:
        extra = sorted(by_id.keys() - set(range(n)))
        raise DataError(
            f"ids must be 0..{n - 1}, but {_show(missing)} missing and {_show(extra)} present",
            path=path,
            field=field,
        )
    return [by_id[i] for i in range(n)]


def _check_words(words: list[str], *, source: Path | None) -> None:
    """Check the special tokens sit at ids 0-3 and no word repeats."""
    for i, token in enumerate(SPECIAL_TOKENS):
        if i >= len(words) or words[i] != token:
            where = f"id {words.index(token)}" if token in words else "missing"
            raise DataError(
                f"special token {token!r} must have id {i} (ids 0-3 are "
                f"{', '.join(SPECIAL_TOKENS)}), but it is {where}",
                path=source,
                field="idx2word",
            )
    seen: set[str] = set()
    for i, word in enumerate(words):
        if word in seen:
            raise DataError(f"word {word!r} appears twice (again at id {i})", path=source, field="idx2word")
        seen.add(word)


def _show(ids: list[int], limit: int = 5) -> str:
    """A short list of ids for an error message."""
    shown = ", ".join(map(str, ids[:limit]))
    return f"[{shown}{', ...' if len(ids) > limit else ''}]"
