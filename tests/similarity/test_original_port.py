"""The benchmark's port of the authors' evaluation loop computes the same scores as the reference.

The port is the baseline every speed-up is measured against, so it must be the same function:
float64 numpy inputs, 128 x 128 shards (smaller here, so that the shards do not divide the
gallery), a Python loop over captions, every caption sliced to its length.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from reference_scan import reference_scores

import original_port
from scan.similarity.options import NORMS, POOLINGS

RAW_FEATURE_NORMS = tuple(NORMS)
POOLING_NAMES = tuple(POOLINGS)

LAMBDA = {"t2i": 9.0, "i2t": 4.0}


def inputs(seed: int, *, ragged: bool, n=5, m=7, r=6, w=6, d=16):
    g = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(n, r, d, generator=g, dtype=torch.float64), dim=-1)
    captions = F.normalize(torch.randn(m, w, d, generator=g, dtype=torch.float64), dim=-1)
    lengths = torch.randint(1, w + 1, (m,), generator=g) if ragged else torch.full((m,), w)
    captions = captions * (torch.arange(w)[None] < lengths[:, None])[..., None]  # zero padding, as np.zeros
    return images, captions, lengths


@pytest.mark.parametrize(
    "direction,norm,agg", list(itertools.product(("t2i", "i2t"), RAW_FEATURE_NORMS, POOLING_NAMES))
)
def test_port_matches_reference(direction, norm, agg):
    for ragged in (False, True):
        images, captions, lengths = inputs(RAW_FEATURE_NORMS.index(norm) * 4 + POOLING_NAMES.index(agg), ragged=ragged)
        opt = original_port.Options(
            raw_feature_norm=norm, lambda_softmax=LAMBDA[direction], agg_func=agg, lambda_lse=6.0
        )
        ours = original_port.shard_xattn(
            images.numpy(), captions.numpy(), lengths.tolist(), opt, direction=direction, shard_size=4
        )
        assert isinstance(ours, np.ndarray) and ours.dtype == np.float64 and ours.shape == (5, 7)
        ref = reference_scores(
            images, captions, lengths, direction=direction, norm=norm, smooth=LAMBDA[direction], agg=agg, lambda_lse=6.0
        )
        np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-10, atol=1e-12)


def test_port_training_scores_are_differentiable_in_float32():
    """The benchmark also times the original's training step: float32 tensors with autograd."""
    images, captions, lengths = inputs(0, ragged=True)
    images = images.float().requires_grad_()
    captions = captions.float().requires_grad_()
    opt = original_port.Options()
    scores = original_port.xattn_score_t2i(images, captions, lengths.tolist(), opt)
    assert scores.shape == (5, 7) and scores.dtype == torch.float32
    scores.sum().backward()
    assert torch.isfinite(images.grad).all() and torch.isfinite(captions.grad).all()
