"""The hinge triplet loss against the plain loops of tests/reference.py, and the choice of negatives."""

from __future__ import annotations

import json
import zlib

import pytest
import torch

import reference
from conftest import SYNTHETIC_CONFIG
from scan.losses import triplet_loss


@pytest.mark.parametrize("max_violation", [True, False])
@pytest.mark.parametrize("negatives", ["same_image", "diagonal"])
@pytest.mark.parametrize("case", ["continuous", "ties", "one-image-many-captions"])
def test_matches_the_plain_loop(max_violation, negatives, case):
    """Every positive, every negative, both directions; integer scores make ties common."""
    g = torch.Generator().manual_seed(zlib.crc32(f"{max_violation}-{negatives}-{case}".encode()))  # reproducible
    size = 9
    if case == "ties":
        scores = torch.randint(0, 3, (size, size), generator=g).double() / 4
    else:
        scores = torch.randn(size, size, dtype=torch.float64, generator=g)
    image_ids = torch.tensor([0, 1, 1, 2, 3, 3, 3, 4, 5]) if case != "continuous" else torch.arange(size)
    if case == "one-image-many-captions":
        image_ids = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1])  # hardly any negatives left
    terms = triplet_loss(
        scores,
        margin=0.2,
        max_violation=max_violation,
        image_ids=image_ids if negatives == "same_image" else None,
    )
    caption_term, image_term = reference.triplet_loss_terms(
        scores.tolist(), image_ids.tolist(), margin=0.2, hardest=max_violation, negatives=negatives
    )
    assert terms["caption_retrieval"].item() == pytest.approx(caption_term, abs=1e-12)
    assert terms["image_retrieval"].item() == pytest.approx(image_term, abs=1e-12)
    assert terms["loss"].item() == pytest.approx(caption_term + image_term, abs=1e-12)


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


def _first_step_loss(synthetic_data, run_dir, negatives: str) -> float:
    from scan.config import load_config
    from scan.train import recipe

    config = load_config(
        SYNTHETIC_CONFIG,
        [
            f"data.path={synthetic_data}",
            f"train.run_dir={run_dir}",
            f"train.negatives={negatives}",
            "train.max_steps=1",
            "train.log_every_steps=1",
            "train.progress=false",
            "train.device=cpu",
        ],
    )
    run = recipe.setup(config)
    recipe.train(run)
    recipe.cleanup(run)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return next(line["loss"] for line in lines if "loss" in line)


def test_the_recipe_switch_gives_the_authors_negatives(synthetic_data, tmp_path):
    """`train.negatives=diagonal` makes another caption of the positive's image a negative: on the
    same first batch (the synthetic data's batches of 32 from 100 images hold such pairs), the
    hardest negative can only be as hard or harder, and here it is."""
    ours = _first_step_loss(synthetic_data, tmp_path / "ours", "same_image")
    original = _first_step_loss(synthetic_data, tmp_path / "original", "diagonal")
    assert original > ours


def test_an_unknown_choice_of_negatives_is_named():
    from scan.config import load_config
    from scan.errors import ConfigError

    with pytest.raises(ConfigError, match="train.negatives"):
        load_config(SYNTHETIC_CONFIG, ["train.negatives=same-image"])
