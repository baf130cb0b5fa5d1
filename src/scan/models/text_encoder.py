"""Text encoder: word ids to contextual unit word vectors in the joint space (section 3.4).

Word embedding (300-d, U(-0.1, 0.1)) then a GRU on packed sequences; when bidirectional the
two directions are averaged, not concatenated, so a word vector has `D` dims like a region.
Every word is L2-normalised and padded positions come out exactly zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def length_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """`(M,)` lengths to an `(M, W)` mask, True at real words."""
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


class GRUTextEncoder(nn.Module):
    """Encode `(M, W)` word ids with their lengths into `(M, W, D)` word vectors and a mask."""

    def __init__(
        self,
        *,
        vocab_size: int,
        word_dim: int = 300,
        embed_dim: int = 1024,
        num_layers: int = 1,
        bidirectional: bool = True,
        normalize: bool = True,
    ):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        self.gru = nn.GRU(word_dim, embed_dim, num_layers, batch_first=True, bidirectional=bidirectional)
        self.embed_dim = embed_dim
        self.bidirectional = bidirectional
        self.normalize = normalize

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        width = int(lengths.max())
        tokens = tokens[:, :width]  # a batch is padded only to its longest caption
        words = self.embed(tokens)  # (M, W, 300)
        packed = pack_padded_sequence(words, lengths.cpu(), batch_first=True, enforce_sorted=False)
        output, _ = self.gru(packed)
        output, _ = pad_packed_sequence(output, batch_first=True, total_length=width)  # (M, W, D or 2D)
        if self.bidirectional:
            output = (output[..., : self.embed_dim] + output[..., self.embed_dim :]) / 2  # (M, W, D)
        if self.normalize:
            output = F.normalize(output, dim=-1, eps=1e-8)
        mask = length_mask(lengths.to(output.device), width)  # (M, W)
        return output * mask[..., None], mask
