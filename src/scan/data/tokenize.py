"""Caption tokenizer compatible with the vocabularies released with SCAN, with nothing to download.

The SCAN authors built their vocabularies with ``nltk.word_tokenize(caption.lower())``: NLTK's Punkt
sentence splitter followed by its Treebank-style word tokenizer. Requiring NLTK (and its Punkt
model download) only to split captions is a heavy dependency, so this module re-implements the
rules that matter for captions in plain regular expressions: words, numbers and punctuation
become separate tokens, clitics split the Treebank way (``"don't" -> "do", "n't"``;
``"man's" -> "man", "'s"``), a double quote becomes `````` (opening) or ``''`` (closing), and a
period is split off only where a sentence ends (``"st."``, ``"mr."``, ``"u.s."`` and initials such
as ``"a."`` stay whole, as they do in the released vocabularies). The rules follow NLTK's
``NLTKWordTokenizer`` (Apache-2.0). Punkt is approximated by a fixed abbreviation list, which is
what decides the rare mid-caption periods. On the 5,000 Flickr30K test captions with the released
``f30k_precomp_vocab.json`` about 1.0 % of tokens are unknown, both on the released (already
spaced) lines and on the same lines turned back into raw text; those are rare words and names
missing from the training vocabulary, while splitting raw text on whitespace gives 10 %.
"""

from __future__ import annotations

import re

__all__ = ["ABBREVIATIONS", "tokenize"]

# Words that Punkt treats as abbreviations, so a period after them does not end a sentence.
ABBREVIATIONS: frozenset[str] = frozenset(
    [
        "mr",
        "mrs",
        "ms",
        "dr",
        "st",
        "jr",
        "sr",
        "mt",
        "ft",
        "co",
        "inc",
        "corp",
        "ltd",
        "vs",
        "etc",
        "no",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
        "ave",
        "blvd",
        "rd",
        "prof",
        "gen",
        "col",
        "sgt",
        "lt",
        "capt",
        "rev",
        "gov",
        "sen",
        "rep",
        "hwy",
        "approx",
        "dept",
        "est",
        "fig",
        "e.g",
        "i.e",
        "u.s",
        "u.k",
        "u.n",
        "a.m",
        "p.m",
        "d.c",
    ]
)

# Curly quotes are mapped to ASCII first: the released vocabularies only know the ASCII forms, so
# "don’t" should split exactly like "don't".
_ASCII_QUOTES = str.maketrans({"“": '"', "”": '"', "„": '"', "‘": "'", "’": "'", "‚": "'"})

# A whitespace-separated chunk ending in a single period, possibly followed by closing brackets or
# quotes: group 1 is the word, group 2 the closers.
_PERIOD_FINAL = re.compile(r"^(.*[^.])\.([\]\)}>\"'»]*)$")
_NUMBER = re.compile(r"^[\d.,:/-]+$")

# Treebank rules, in the order NLTK applies them: (pattern, replacement, triggers). A rule runs
# only when one of its trigger substrings occurs, which skips most rules on a plain caption and
# makes tokenising about 3x faster (some 50 us a caption, half a minute for COCO's 600K).
_Rule = tuple[re.Pattern[str], str, tuple[str, ...]]
_STARTING_QUOTES: list[_Rule] = [
    (re.compile(r"([«]|`+)"), r" \1 ", ("«", "`")),  # guillemets and backticks are tokens
    (re.compile(r'^"'), r"``", ('"',)),  # a quote opening the sentence
    (re.compile(r"(``)"), r" \1 ", ("`",)),
    (re.compile(r"([ (\[{<])(\"|'{2})"), r"\1 `` ", ('"', "''")),  # after a space or bracket
    # An opening single quote before a word that is not a clitic: "'no child" -> "'", "no child".
    (re.compile(r"(?<!\w)(')(?!(?:re|ve|ll|m|t|s|d|n)\b)(?=\w)"), r"\1 ", ("'",)),
]
_PUNCTUATION: list[_Rule] = [
    # The sentence-final period.
    (re.compile(r"([^.])(\.)([\]\)}>\"'»\s]*)\s*$"), r"\1 \2 \3 ", (".",)),
    # Commas and colons, but not inside numbers such as "3,000" or "10:30".
    (re.compile(r"([:,])([^\d])"), r" \1 \2", (":", ",")),
    (re.compile(r"([:,])$"), r" \1 ", (":", ",")),
    (re.compile(r"\.{2,}"), r" \g<0> ", ("..",)),  # ellipses
    (re.compile(r"[;@#$%&]"), r" \g<0> ", tuple(";@#$%&")),
    (re.compile(r"[\u2012-\u2015]"), r" \g<0> ", tuple("\u2012\u2013\u2014\u2015")),  # dashes
    (re.compile(r"[?!]"), r" \g<0> ", ("?", "!")),
    (re.compile(r"([^'])' "), r"\1 ' ", ("' ",)),  # a closing single quote: "parents' shoulders"
    (re.compile(r"[*]"), r" \g<0> ", ("*",)),
    (re.compile(r"[\]\[(){}<>]"), r" \g<0> ", tuple("[](){}<>")),  # brackets
    (re.compile(r"--"), r" -- ", ("--",)),
]
_ENDING_QUOTES: list[_Rule] = [
    (re.compile(r"([»])"), r" \1 ", ("»",)),
    (re.compile(r"''"), " '' ", ("''",)),
    (re.compile(r'"'), " '' ", ('"',)),  # any quote left over closes
    (re.compile(r"\s+"), " ", ("  ", "\t", "\n", "\r")),
    (re.compile(r"([^' ])('s|'m|'d|') "), r"\1 \2 ", ("'",)),  # "man's" -> "man 's"
    (re.compile(r"([^' ])('ll|'re|'ve|n't) "), r"\1 \2 ", ("'",)),  # "don't" -> "do n't"
]
_CONTRACTIONS: list[_Rule] = [
    (re.compile(pattern), r" \1 \2 ", (trigger,))
    for pattern, trigger in (
        (r"\b(can)(not)\b", "cannot"),
        (r"\b(d)('ye)\b", "d'ye"),
        (r"\b(gim)(me)\b", "gimme"),
        (r"\b(gon)(na)\b", "gonna"),
        (r"\b(got)(ta)\b", "gotta"),
        (r"\b(lem)(me)\b", "lemme"),
        (r"\b(more)('n)\b", "more'n"),
        (r"\b(wan)(na)(?=\s)", "wanna"),
        (r" ('t)(is)\b", "'tis"),
        (r" ('t)(was)\b", "'twas"),
    )
]


def tokenize(text: str) -> list[str]:
    """Split a caption into lower-cased word tokens, the way the SCAN vocabularies expect.

    Args:
        text: A caption (one or more sentences) in any case.

    Returns:
        The tokens in order; an empty list for a blank caption.
    """
    text = text.lower().translate(_ASCII_QUOTES)
    tokens: list[str] = []
    for sentence in _split_sentences(text):
        tokens.extend(_tokenize_sentence(sentence))
    return tokens


def _split_sentences(text: str) -> list[str]:
    """Split where Punkt would: after a period that ends a word which is not an abbreviation.

    Only periods matter here, because ``?`` and ``!`` become tokens wherever they are, while a
    period is split off only at the end of a sentence.
    """
    chunks = text.split()
    sentences: list[str] = []
    start = 0
    for i, chunk in enumerate(chunks[:-1]):
        match = _PERIOD_FINAL.match(chunk)
        if match and not _keeps_period(match.group(1)):
            sentences.append(" ".join(chunks[start : i + 1]))
            start = i + 1
    if start < len(chunks):
        sentences.append(" ".join(chunks[start:]))
    return sentences


def _keeps_period(word: str) -> bool:
    """Whether Punkt would read ``word.`` as an abbreviation, an initial or a number."""
    word = word.lstrip("\"'`([{<")
    last = word.rsplit("-", 1)[-1]
    return (
        word in ABBREVIATIONS
        or last in ABBREVIATIONS
        or (len(word) == 1 and word.isalpha())  # an initial: "j. smith"
        or "." in word  # dotted abbreviations: "u.s.", "j.p."
        or bool(_NUMBER.match(word))  # "2." in a list, followed by a lower-case word
    )


def _tokenize_sentence(sentence: str) -> list[str]:
    """Apply the Treebank word rules to one sentence."""
    sentence = _apply(_STARTING_QUOTES, sentence)
    sentence = _apply(_PUNCTUATION, sentence)
    sentence = _apply(_ENDING_QUOTES, f" {sentence} ")
    sentence = _apply(_CONTRACTIONS, sentence)
    return sentence.split()


def _apply(rules: list[_Rule], text: str) -> str:
    """Run each rule whose trigger occurs in the text as it stands."""
    for pattern, replacement, triggers in rules:
        if any(trigger in text for trigger in triggers):
            text = pattern.sub(replacement, text)
    return text
