"""The authors' learning-rate schedule and a resumable batch order.

Step decay: the rate is multiplied by `decay` once `decay_epochs` epochs have passed (Flickr30K:
x0.1 after 15 of 30). The batch order of an epoch is a pure function of (seed, epoch), so a run
resumed mid-epoch continues with exactly the batches it had not seen.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


def learning_rate(*, base: float, epoch: int, decay_epochs: int, decay: float) -> float:
    """Learning rate for a (0-based) epoch: `base * decay ** (epoch // decay_epochs)`."""
    if decay_epochs <= 0:
        return base
    return base * decay ** (epoch // decay_epochs)


class EpochBatches(Sampler[list[int]]):
    """Shuffled batches of one epoch, starting at batch `start`.

    Args:
        num_items: dataset size.
        batch_size: items per batch; the last batch may be smaller (no caption is dropped).
        seed, epoch: the permutation is `randperm(num_items)` under seed `seed * 1000003 + epoch`.
        start: number of batches of this epoch already trained on.
    """

    def __init__(self, *, num_items: int, batch_size: int, seed: int, epoch: int, start: int = 0):
        self.num_items, self.batch_size, self.start = num_items, batch_size, start
        generator = torch.Generator().manual_seed(seed * 1000003 + epoch)
        self.order = torch.randperm(num_items, generator=generator).tolist()

    @staticmethod
    def batches_per_epoch(num_items: int, batch_size: int) -> int:
        return -(-num_items // batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        for b in range(self.start, self.batches_per_epoch(self.num_items, self.batch_size)):
            yield self.order[b * self.batch_size : (b + 1) * self.batch_size]

    def __len__(self) -> int:
        return self.batches_per_epoch(self.num_items, self.batch_size) - self.start
