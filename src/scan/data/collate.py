"""Datasets and batch collation over a :class:`PrecompSplit`.

Training (SCAN Sec. 3.4) draws (image, caption) pairs, one per caption, and scores every image
against every caption in the batch; evaluation instead encodes each image and each caption once
and scores all pairs (style guide item 5). So there are three datasets: :class:`CaptionDataset`
(pairs, for training), :class:`ImageDataset` and :class:`TextDataset` (for encoding once). Padded
word positions are marked in a boolean mask, because the original code did not mask them inside
the attention. Captions are tokenised once when a dataset is built, not on every epoch, and
batches keep the sampler's order (no length sorting: the text encoder packs with
``enforce_sorted=False``), so a batch's rows line up with its ``caption_ids``. The training loader
itself is built by :mod:`scan.train.recipe` (``DataLoader(CaptionDataset(...),
collate_fn=collate_captions)`` over a resumable, seeded batch order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch.utils.data import Dataset

from scan.data.precomp import PrecompSplit
from scan.data.vocab import PAD_ID
from scan.errors import DataError

__all__ = [
    "Batch",
    "CaptionDataset",
    "CaptionEncoder",
    "ImageDataset",
    "TextDataset",
    "collate_captions",
    "collate_images",
    "collate_texts",
    "pad_token_ids",
]


class CaptionEncoder(Protocol):
    """What the datasets need from a tokenizer.

    A :class:`scan.data.vocab.Vocabulary`, or any other (e.g. a WordPiece tokenizer) that pads
    with id 0 and wraps every caption in one start and one end token.
    """

    unk_id: int  # the id of words it does not know

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``, wrapped as ``start w1 ... wn end``."""
        ...

    def __len__(self) -> int:
        """The number of ids."""
        ...


@dataclass
class Batch:
    """A training batch of ``B`` (image, caption) pairs; row ``b`` of every field is one pair."""

    images: torch.Tensor  # (B, R, F) float32 region features
    tokens: torch.Tensor  # (B, W) long word ids, <start> ... <end>, padded with 0 (<pad>)
    lengths: torch.Tensor  # (B,) long number of real tokens, <start> and <end> included
    mask: torch.Tensor  # (B, W) bool, True at real tokens
    caption_ids: torch.Tensor  # (B,) long caption index k in the split
    image_ids: torch.Tensor  # (B,) long image index image_of_caption(k), images counted once

    def to(self, device: torch.device | str) -> Batch:
        """The batch on ``device``, copied asynchronously when the source memory is pinned."""
        return Batch(
            images=self.images.to(device, non_blocking=True),
            tokens=self.tokens.to(device, non_blocking=True),
            lengths=self.lengths.to(device, non_blocking=True),
            mask=self.mask.to(device, non_blocking=True),
            caption_ids=self.caption_ids.to(device, non_blocking=True),
            image_ids=self.image_ids.to(device, non_blocking=True),
        )

    def pin_memory(self) -> Batch:
        """Pinned copies, so ``DataLoader(pin_memory=True)`` works with this custom type."""
        return Batch(
            images=self.images.pin_memory(),
            tokens=self.tokens.pin_memory(),
            lengths=self.lengths.pin_memory(),
            mask=self.mask.pin_memory(),
            caption_ids=self.caption_ids.pin_memory(),
            image_ids=self.image_ids.pin_memory(),
        )

    def __len__(self) -> int:
        return self.images.shape[0]


class CaptionDataset(Dataset):
    """(image, caption) pairs, one item per caption: the training view of a split.

    Args:
        split: The opened split.
        vocab: Encodes the captions, once, here (a vocabulary or another :class:`CaptionEncoder`).

    Raises:
        DataError: Naming the captions file and 1-based line, for a caption with no tokens or
            with no word the vocabulary knows (a sign that vocabulary and data do not belong
            together, e.g. a vocabulary from another data set or tokenizer).
    """

    def __init__(self, split: PrecompSplit, vocab: CaptionEncoder) -> None:
        self.split = split
        self.vocab = vocab
        self.token_ids: list[torch.Tensor] = []  # per caption (L,) long
        for k, caption in enumerate(split.captions):
            ids = vocab.encode(caption)
            words = ids[1:-1]  # without the start and end tokens
            if not words:
                raise DataError("caption has no tokens", path=split.captions_path, line=k + 1)
            if all(i == vocab.unk_id for i in words):
                raise DataError(
                    f"no word of caption {caption!r} is in the vocabulary of {len(vocab)} words "
                    f"(is the vocabulary from this data set?)",
                    path=split.captions_path,
                    line=k + 1,
                )
            self.token_ids.append(torch.tensor(ids, dtype=torch.long))

    def __len__(self) -> int:
        return self.split.num_captions

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        image = self.split.image_of_caption(k)
        features = torch.from_numpy(self.split.image_features(image))  # (R, F)
        return features, self.token_ids[k], k, image


class ImageDataset(Dataset):
    """Each distinct image once (repeated features are skipped), for encoding images once."""

    def __init__(self, split: PrecompSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return self.split.num_images

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.split.image_features(i)), i  # (R, F)


class TextDataset(Dataset):
    """Captions encoded once each, for encoding text once (evaluation, search queries).

    Unlike :class:`CaptionDataset`, a caption made only of unknown words is kept (a search query
    may use words the vocabulary lacks; it is encoded as ``<start> <unk> ... <end>``).

    Args:
        captions: Raw captions; item ``k`` is ``captions[k]``.
        vocab: Encodes the captions, once, here (a vocabulary or another :class:`CaptionEncoder`).

    Raises:
        DataError: Naming the caption index, for a caption with no tokens at all.
    """

    def __init__(self, captions: Sequence[str], vocab: CaptionEncoder) -> None:
        self.token_ids: list[torch.Tensor] = []  # per caption (L,) long
        for k, caption in enumerate(captions):
            ids = vocab.encode(caption)
            if len(ids) == 2:
                raise DataError(f"caption {k} ({caption!r}) has no tokens")
            self.token_ids.append(torch.tensor(ids, dtype=torch.long))

    def __len__(self) -> int:
        return len(self.token_ids)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int]:
        return self.token_ids[k], k


def pad_token_ids(
    sequences: Sequence[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad id sequences with ``<pad>`` (0).

    Args:
        sequences: ``B`` long tensors of shape ``(L_b,)``.

    Returns:
        ``tokens (B, W)`` long with ``W = max L_b``, ``lengths (B,)`` long and ``mask (B, W)``
        bool, True at real tokens.
    """
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)  # (B,)
    width = int(lengths.max()) if len(sequences) else 0
    tokens = torch.full((len(sequences), width), PAD_ID, dtype=torch.long)  # (B, W)
    for b, sequence in enumerate(sequences):
        tokens[b, : len(sequence)] = sequence
    mask = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)  # (B, W)
    return tokens, lengths, mask


def collate_captions(items: Sequence[tuple[torch.Tensor, torch.Tensor, int, int]]) -> Batch:
    """Stack :class:`CaptionDataset` items into a :class:`Batch`, keeping their order."""
    features, token_ids, caption_ids, image_ids = zip(*items, strict=True)
    tokens, lengths, mask = pad_token_ids(token_ids)
    return Batch(
        images=torch.stack(features),  # (B, R, F)
        tokens=tokens,  # (B, W)
        lengths=lengths,  # (B,)
        mask=mask,  # (B, W)
        caption_ids=torch.tensor(caption_ids, dtype=torch.long),  # (B,)
        image_ids=torch.tensor(image_ids, dtype=torch.long),  # (B,)
    )


def collate_images(items: Sequence[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack :class:`ImageDataset` items into ``images (B, R, F)`` and ``image_ids (B,)``."""
    features, ids = zip(*items, strict=True)
    return torch.stack(features), torch.tensor(ids, dtype=torch.long)  # (B, R, F), (B,)


def collate_texts(
    items: Sequence[tuple[torch.Tensor, int]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad :class:`TextDataset` items into a batch.

    Returns:
        ``tokens (B, W)``, ``lengths (B,)``, ``mask (B, W)`` and ``caption_ids (B,)``.
    """
    token_ids, ids = zip(*items, strict=True)
    tokens, lengths, mask = pad_token_ids(token_ids)
    return tokens, lengths, mask, torch.tensor(ids, dtype=torch.long)
