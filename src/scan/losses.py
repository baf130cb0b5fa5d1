"""Hinge triplet ranking loss over a score matrix (paper section 3.3, VSE++ hardest negatives).

The loss takes scores, not encoders, so any scorer (SCAN, the baseline, an ensemble) trains
with it. Row `i` of `(B, B)` scores is image `i` against every caption of the batch; the
diagonal holds the matching pairs.
"""

from __future__ import annotations

import torch


def triplet_loss(
    scores: torch.Tensor,
    *,
    margin: float = 0.2,
    max_violation: bool = True,
    image_ids: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Bidirectional hinge loss with margin.

    Args:
        scores: `(B, B)`, image `i` against caption `j`; `scores[i, i]` are the positives.
        margin: alpha; a negative costs `max(0, margin - S(positive) + S(negative))`.
        max_violation: keep only the hardest negative per positive in each direction (VSE++),
            else sum over all negatives.
        image_ids: `(B,)` image of each caption. Pairs whose image is the same as the positive's
            are not negatives: on small data sets one batch often holds two captions of one
            image, and the original code pushed them apart.

    Returns:
        `loss` (summed over the batch, as the authors did), `caption_retrieval` (image anchors,
        negative captions) and `image_retrieval` (caption anchors, negative images).
    """
    positives = scores.diagonal()  # (B,)
    not_negative = torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
    if image_ids is not None:
        not_negative = not_negative | (image_ids[:, None] == image_ids[None, :])
    cost_captions = (margin + scores - positives[:, None]).clamp(min=0).masked_fill(not_negative, 0)  # rows
    cost_images = (margin + scores - positives[None, :]).clamp(min=0).masked_fill(not_negative, 0)  # columns
    if max_violation:
        cost_captions = cost_captions.amax(dim=1)
        cost_images = cost_images.amax(dim=0)
    caption_term, image_term = cost_captions.sum(), cost_images.sum()
    return {"loss": caption_term + image_term, "caption_retrieval": caption_term, "image_retrieval": image_term}
