"""A trained global vector per image and per caption, for the first stage of two-stage search.

SCAN's score (paper section 3) is not a dot product, so it cannot be indexed: a search over a
large gallery first shortlists candidates by one vector per item (an inner-product index), then
re-ranks the shortlist with Stacked Cross Attention. `GlobalHead` makes those vectors from
SCAN's own encodings (no second encoder pass): the regions or the real words are mean-pooled as
the VSE++-style baseline (`GlobalEmbedding`) pools them, projected by one linear map per
modality, and L2-normalised, so cosine similarity is their inner product. Training adds a hinge
triplet term on these cosines to SCAN's loss, so one checkpoint serves both stages.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _identity_linear(dim: int) -> nn.Linear:
    """A `dim -> dim` linear map that starts as the identity (weight I, bias 0).

    At initialisation the head is exactly the baseline's normalised mean pooling, already a usable
    global vector of SCAN's embedding; training then only has to improve on it, and the auxiliary
    loss starts from sensible scores instead of pulling the shared encoders towards a random
    projection. It also draws nothing from the random generator, so adding the head leaves the
    initialisation of every other parameter under a given seed unchanged.
    """
    linear = nn.Linear(dim, dim)
    with torch.no_grad():
        linear.weight.copy_(torch.eye(dim))
        linear.bias.zero_()
    return linear


class GlobalHead(nn.Module):
    """Pool-project-normalise heads that turn SCAN's region and word sets into one unit vector each.

    Args:
        embed_dim: D, the size of SCAN's joint embedding (and of the global vectors).
    """

    def __init__(self, embed_dim: int):
        super().__init__()
        self.image_projection = _identity_linear(embed_dim)
        self.text_projection = _identity_linear(embed_dim)

    def image(self, regions: torch.Tensor) -> torch.Tensor:
        """`(N, R, D)` encoded unit region vectors -> `(N, D)` unit global image vectors."""
        pooled = regions.mean(dim=1)  # (N, D): every region is real, as in the baseline
        return F.normalize(self.image_projection(pooled), dim=-1)  # (N, D)

    def text(self, words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`(M, W, D)` encoded word vectors and their `(M, W)` mask -> `(M, D)` unit caption vectors.

        Only the words the mask marks as real count: padded slots are replaced by zeros rather
        than multiplied by them, so whatever they hold (even NaN or inf) cannot leak in.
        """
        real = mask[..., None]  # (M, W, 1)
        summed = torch.where(real, words, torch.zeros((), dtype=words.dtype, device=words.device)).sum(dim=1)  # (M, D)
        count = mask.sum(dim=1, keepdim=True).clamp(min=1).to(summed.dtype)  # (M, 1): an empty caption stays zero
        return F.normalize(self.text_projection(summed / count), dim=-1)  # (M, D)
