"""Encode every image and every caption of a split once, then score them all.

SCAN's score is not a dot product of two vectors, but it still factors: each image becomes
`(R, D)` unit region vectors and each caption `(W, D)` unit word vectors, independently of
the other side. So evaluation runs the encoders once per item (the original did too) and
hands the two sets to the tiled scorer.

Before anything is encoded, the features are checked against the model: their dimension, and
(when both sides record it) how they were extracted from photos, since features made with other
settings score without error but mean nothing to the model. Captions the vocabulary mostly does
not know, and images whose features encode to nothing, are warned about with their figures.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from scan.config import Config
from scan.data.collate import ImageDataset, TextDataset, collate_images, collate_texts
from scan.data.precomp import PrecompSplit
from scan.data.vocab import unknown_token_rate
from scan.distributed import World, gather_rows
from scan.errors import ModelMismatchError
from scan.features.extract import ExtractConfig, extraction_settings
from scan.models.scan import SCAN
from scan.runtime import autocast


@dataclass
class EncodedSplit:
    images: torch.Tensor  # (N, R, D) float32, CPU
    captions: torch.Tensor  # (M, W, D) float32, CPU, zero-padded
    lengths: torch.Tensor  # (M,) real words per caption
    caption_image: np.ndarray  # (M,) image index of each caption


UNKNOWN_WARNING_RATE = 0.5  # warn when more than this share of the caption words is unknown


def check_split_fits_model(config: Config, split: PrecompSplit, *, model_folder: str | Path = "the model") -> None:
    """Refuse features the model cannot read correctly, before any of them is encoded.

    Raises:
        ModelMismatchError: the feature dimension differs from the model's, or both the
            features and the model record how they were extracted and the settings differ.
    """
    if split.feature_dim != config.model.image_dim:
        raise ModelMismatchError(
            f"{split.features_path}: features have {split.feature_dim} dims per region, but {model_folder} "
            f"was trained on {config.model.image_dim}-dim features; extract them the way its training data was"
        )
    made_with = extraction_settings(split.folder, split.split)
    trained_on = config.data.extract
    if made_with is None or not trained_on:
        return  # released features (no record) on either side: nothing to compare
    differ = [
        f"{key}: {made_with.get(key)!r} here, {trained_on.get(key)!r} in training"
        for key in ExtractConfig.MODEL_FIELDS  # what decides a feature's meaning, not how it is stored
        if made_with.get(key) != trained_on.get(key)
    ]
    if differ:
        raise ModelMismatchError(
            f"{Path(split.folder) / f'{split.split}_extract.json'}: these features were extracted with other "
            f"settings than {model_folder}'s training features ({'; '.join(differ)}); "
            "re-extract them with the model's settings, or pass the photo folder to `scan eval --data`"
        )


def _warn_unknown_words(token_ids: list[list[int]], tokenizer: Any, where: str) -> None:
    unk = getattr(tokenizer, "unk_id", None)
    if unk is None:
        return
    # Every tokenizer wraps a caption in its own start and end ids ([CLS]/[SEP] for MiniLM).
    rate = unknown_token_rate([ids[1:-1] for ids in token_ids], unk, special_ids=(getattr(tokenizer, "pad_id", 0),))
    if rate > UNKNOWN_WARNING_RATE:
        warnings.warn(
            f"{where}: {100 * rate:.0f}% of the caption words are unknown to the model's vocabulary; its scores "
            "will be close to chance (are these captions in the language and tokenisation it was trained on?)",
            stacklevel=3,
        )


def _warn_degenerate_images(images: torch.Tensor, split: PrecompSplit) -> None:
    norms = images.norm(dim=-1)  # (N, R): unit vectors, unless the features broke the encoder
    broken = (~torch.isfinite(norms) | (norms < 0.5)).all(dim=1)  # (N,) no usable region
    if broken.any():
        warnings.warn(
            f"{split.features_path}: {int(broken.sum())} of {len(broken)} images encode to zero or non-finite "
            "vectors (their feature values are out of any sensible range); they cannot be retrieved",
            stacklevel=3,
        )


@torch.no_grad()
def encode_split(
    model: SCAN,
    split: PrecompSplit,
    tokenizer,
    *,
    device: torch.device,
    precision: str = "fp32",
    batch_size: int = 128,
    max_images: int = 0,
    workers: int = 0,
) -> EncodedSplit:
    """Encode the (first `max_images`) images of a split and all their captions."""
    if split.feature_dim != model.config.image_dim:
        raise ModelMismatchError(
            f"{split.features_path}: features have {split.feature_dim} dims per region, the model reads "
            f"{model.config.image_dim}"
        )
    model.eval()
    num_images = split.num_images if max_images <= 0 else min(max_images, split.num_images)
    caption_ids = [k for k in range(split.num_captions) if split.image_of_caption(k) < num_images]

    image_chunks = []
    images_set = Subset(ImageDataset(split), range(num_images))
    loader = DataLoader(images_set, batch_size=batch_size, num_workers=workers, collate_fn=collate_images)
    for features, _ in loader:
        with autocast(device, precision):
            image_chunks.append(model.encode_image(features.to(device)).float().cpu())  # (n, R, D)
    images = torch.cat(image_chunks)
    _warn_degenerate_images(images, split)

    texts = TextDataset([split.captions[k] for k in caption_ids], tokenizer)
    _warn_unknown_words([ids.tolist() for ids in texts.token_ids], tokenizer, str(split.captions_path))
    caption_chunks, length_chunks = [], []
    loader = DataLoader(texts, batch_size=batch_size, num_workers=workers, collate_fn=collate_texts)
    for tokens, lengths, _mask, _ids in loader:
        with autocast(device, precision):
            words, _ = model.encode_text(tokens.to(device), lengths.to(device))
        caption_chunks.append(words.float().cpu())  # (m, W_batch, D)
        length_chunks.append(lengths)
    width = max(chunk.shape[1] for chunk in caption_chunks)
    captions = torch.cat([torch.nn.functional.pad(c, (0, 0, 0, width - c.shape[1])) for c in caption_chunks])
    caption_image = np.array([split.image_of_caption(k) for k in caption_ids], dtype=np.int64)
    return EncodedSplit(images=images, captions=captions, lengths=torch.cat(length_chunks), caption_image=caption_image)


def score_split(
    model: SCAN, encoded: EncodedSplit, *, device: torch.device, current: World | None = None, **kwargs
) -> np.ndarray:
    """`(N, M)` scores of an encoded split, computed on `device` block by block.

    Args:
        current: With several ranks (torchrun), each scores its contiguous block of image rows
            and the blocks are gathered in order, so every rank returns the whole matrix; every
            rank must call this then. None: this process scores everything.
    """
    if current is None or not current.distributed:
        return model.score_matrix(encoded.images.to(device), encoded.captions, encoded.lengths, **kwargs).numpy()
    count = encoded.images.shape[0]
    start, end = count * current.rank // current.size, count * (current.rank + 1) // current.size
    block = model.score_matrix(encoded.images[start:end].to(device), encoded.captions, encoded.lengths, **kwargs)
    # NCCL gathers GPU tensors, Gloo CPU ones.
    carrier = device if current.backend == "nccl" else torch.device("cpu")
    return gather_rows(block.to(carrier), current).cpu().numpy()
