"""Encode every image and every caption of a split once, then score them all.

SCAN's score is not a dot product of two vectors, but it still factors: each image becomes
`(R, D)` unit region vectors and each caption `(W, D)` unit word vectors, independently of
the other side. So evaluation runs the encoders once per item (the original did too) and
hands the two sets to the tiled scorer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from scan.data.collate import ImageDataset, TextDataset, collate_images, collate_texts
from scan.data.precomp import PrecompSplit
from scan.models.scan import SCAN
from scan.train.devices import autocast


@dataclass
class EncodedSplit:
    images: torch.Tensor  # (N, R, D) float32, CPU
    captions: torch.Tensor  # (M, W, D) float32, CPU, zero-padded
    lengths: torch.Tensor  # (M,) real words per caption
    caption_image: np.ndarray  # (M,) image index of each caption


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

    texts = TextDataset([split.captions[k] for k in caption_ids], tokenizer)
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


def score_split(model: SCAN, encoded: EncodedSplit, *, device: torch.device, **kwargs) -> np.ndarray:
    """`(N, M)` scores of an encoded split, computed on `device` block by block."""
    scores = model.score_matrix(encoded.images.to(device), encoded.captions, encoded.lengths, **kwargs)
    return scores.numpy()
