"""The hinge triplet loss against a plain double loop over positives and negatives."""

from __future__ import annotations

import pytest
import torch

from scan.losses import triplet_loss


def brute_force(scores, margin, max_violation, image_ids):
    b = len(scores)
    caption_terms, image_terms = [], []
    for i in range(b):
        row = [max(0.0, margin - scores[i][i] + scores[i][j]) for j in range(b) if image_ids[j] != image_ids[i]]
        col = [max(0.0, margin - scores[i][i] + scores[j][i]) for j in range(b) if image_ids[j] != image_ids[i]]
        caption_terms.append(max(row, default=0.0) if max_violation else sum(row))
        image_terms.append(max(col, default=0.0) if max_violation else sum(col))
    return sum(caption_terms), sum(image_terms)


@pytest.mark.parametrize("max_violation", [True, False])
@pytest.mark.parametrize("duplicates", [False, True])
def test_matches_brute_force(max_violation, duplicates):
    g = torch.Generator().manual_seed(int(max_violation) * 2 + int(duplicates))
    scores = torch.randn(7, 7, dtype=torch.float64, generator=g)
    image_ids = torch.tensor([0, 1, 1, 2, 3, 3, 4]) if duplicates else torch.arange(7)
    terms = triplet_loss(scores, margin=0.2, max_violation=max_violation, image_ids=image_ids)
    caption_term, image_term = brute_force(scores.tolist(), 0.2, max_violation, image_ids.tolist())
    assert terms["caption_retrieval"].item() == pytest.approx(caption_term)
    assert terms["image_retrieval"].item() == pytest.approx(image_term)
    assert terms["loss"].item() == pytest.approx(caption_term + image_term)


def test_perfectly_separated_batch_costs_nothing_and_gradients_flow_otherwise():
    scores = torch.eye(4) * 1.0
    assert triplet_loss(scores, margin=0.2)["loss"].item() == 0
    scores = torch.zeros(4, 4, requires_grad=True)
    triplet_loss(scores, margin=0.2)["loss"].backward()
    assert scores.grad.diagonal().lt(0).all()  # raising a positive lowers the loss


def test_two_captions_of_one_image_are_not_pushed_apart():
    """Captions 0 and 1 describe image 0: scoring them equally high must cost nothing."""
    scores = torch.tensor([[0.9, 0.9, 0.0], [0.9, 0.9, 0.0], [0.0, 0.0, 0.9]])
    assert triplet_loss(scores, image_ids=torch.tensor([0, 0, 1]))["loss"].item() == 0
    assert triplet_loss(scores)["loss"].item() > 0  # without the ids they count as negatives
