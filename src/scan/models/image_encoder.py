"""Image encoder: region features to unit vectors in the joint space (paper section 3.4).

`v_i = W f_i + b`, a single linear layer over precomputed bottom-up region features, then each
region L2-normalised. Xavier-uniform init with zero bias, as the authors' code did.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ImageEncoder(nn.Module):
    """Project `(N, R, F)` region features to `(N, R, D)` unit vectors."""

    def __init__(self, *, image_dim: int, embed_dim: int, weight_norm: bool = False, normalize: bool = True):
        super().__init__()
        self.fc = nn.Linear(image_dim, embed_dim)
        bound = math.sqrt(6.0) / math.sqrt(image_dim + embed_dim)
        nn.init.uniform_(self.fc.weight, -bound, bound)
        nn.init.zeros_(self.fc.bias)
        if weight_norm:
            # dim=None: one scale for the whole matrix, the authors' EncoderImageWeightNormPrecomp.
            self.fc = nn.utils.parametrizations.weight_norm(self.fc, dim=None)  # type: ignore[arg-type]  # torch's stub says int; None is documented
        self.normalize = normalize

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        regions = self.fc(features)  # (N, R, D)
        return F.normalize(regions, dim=-1, eps=1e-8) if self.normalize else regions
