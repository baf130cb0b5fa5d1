"""Training on several processes: each rank's share of a batch, and the forward pass DDP wraps.

`data.batch_size` stays the global batch: every rank draws the same shuffled batches
(`EpochBatches`, a function of seed and epoch) and takes every `world.size`-th caption of each,
so the batch order, and with it `--resume`, does not depend on timing. A final batch smaller than
the number of ranks is dropped (each rank needs a caption); with one process nothing changes.

The loss looks for negatives either within each rank's share (the default: a batch of
`batch_size / N` per rank, as plain DDP does) or, with `train.cross_rank_negatives`, over the
whole global batch: every rank gathers the encoded regions and words of all ranks (with
gradients, `scan.distributed.all_gather_with_grad`) and scores the full `(B, B)` matrix, which
makes the update the one a single process with batch `B` would make (up to dropout's draws), at
the cost of scoring the whole batch on every rank.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from scan.distributed import World, all_gather_with_grad, gather_rows
from scan.models.scan import SCAN
from scan.train.schedule import EpochBatches

__all__ = ["ShardedBatches", "TrainingForward", "batches_per_epoch"]


def batches_per_epoch(num_items: int, batch_size: int, world_size: int) -> int:
    """Optimizer steps per epoch: every global batch, but a last one smaller than the world."""
    full, rest = divmod(num_items, batch_size)
    if world_size <= 1:
        return full + (rest > 0)
    return full + (rest >= world_size)


class ShardedBatches(Sampler[list[int]]):
    """This rank's share of each of an epoch's batches, from batch `start` on."""

    def __init__(self, *, num_items: int, batch_size: int, seed: int, epoch: int, start: int, world: World) -> None:
        self.batches = EpochBatches(num_items=num_items, batch_size=batch_size, seed=seed, epoch=epoch, start=start)
        self.world = world
        self.count = batches_per_epoch(num_items, batch_size, world.size) - start

    def __iter__(self) -> Iterator[list[int]]:
        for number, batch in enumerate(self.batches):
            if number >= self.count:
                return
            yield batch if not self.world.distributed else self.world.shard(batch)

    def __len__(self) -> int:
        return max(0, self.count)


class TrainingForward(torch.nn.Module):
    """A batch -> its score matrix, global cosines and the image of each caption; what DDP wraps.

    DDP synchronises gradients of what its module's `forward` computed, so the training pass is
    this module's forward, around the model's own encoders and scorer.
    """

    def __init__(self, model: SCAN, world: World, *, cross_rank_negatives: bool) -> None:
        super().__init__()
        self.model = model
        self.world = world
        self.cross_rank = cross_rank_negatives and world.distributed

    def forward(
        self, features: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor, image_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        if not self.cross_rank:
            scores, global_scores = self.model.forward_with_global(features, tokens, lengths)  # (b, b)
            return scores, global_scores, image_ids
        model, world = self.model, self.world
        images = model.encode_image(features)  # (b, R, D)
        captions, mask = model.encode_text(tokens, lengths)  # (b, W, D), (b, W)
        # Shares differ by at most one caption and captions by length: pad to the largest of
        # each, gather, then drop the padding rows (the real rows of each rank are its first).
        sizes = gather_rows(torch.tensor([images.shape[0]], device=images.device), world)  # (N,)
        widths = gather_rows(torch.tensor([captions.shape[1]], device=images.device), world)  # (N,)
        rows, width = int(sizes.max()), int(widths.max())
        real = torch.cat([torch.arange(int(n), device=images.device) + r * rows for r, n in enumerate(sizes.tolist())])
        all_images = all_gather_with_grad(_pad(images, rows), world)[real]  # (B, R, D)
        all_captions = all_gather_with_grad(_pad(_pad(captions, width, dim=1), rows), world)[real]  # (B, W', D)
        all_mask = gather_rows(_pad(_pad(mask, width, dim=1), rows), world)[real]  # (B, W')
        all_ids = gather_rows(image_ids, world)  # (B,)
        scores = model.similarity(all_images, all_captions, all_mask)  # (B, B)
        if model.global_head is None:
            return scores, None, all_ids
        image_vectors = all_gather_with_grad(_pad(model.global_head.image(images).float(), rows), world)[real]
        caption_vectors = all_gather_with_grad(_pad(model.global_head.text(captions, mask).float(), rows), world)[real]
        return scores, image_vectors @ caption_vectors.T, all_ids


def _pad(tensor: torch.Tensor, size: int, *, dim: int = 0) -> torch.Tensor:
    """`tensor` zero-padded along `dim` to `size`."""
    missing = size - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor, tensor.new_zeros(shape)], dim=dim)
