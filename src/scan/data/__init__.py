"""Reading the data sets: precomputed region features, raw photo layouts, captions, vocabularies."""

from scan.data.precomp import PrecompSplit
from scan.data.tokenize import tokenize
from scan.data.vocab import (
    Vocabulary,
    build_vocabulary,
    load_vocabulary,
    save_vocabulary,
)
from scan.errors import DataError

__all__ = [
    "DataError",
    "PrecompSplit",
    "Vocabulary",
    "build_vocabulary",
    "load_vocabulary",
    "save_vocabulary",
    "tokenize",
]
