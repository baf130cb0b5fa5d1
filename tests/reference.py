"""Plain-loop references for the training objective and the retrieval metrics.

Written from the paper and the authors' `model.py` / `evaluation.py`, independently of the
package (nothing here imports `scan`): one positive, one negative, one rank at a time, in
Python floats. The fast code is tested against these on random inputs with ties and with
several captions of one image in a batch (tests/test_losses.py, tests/evaluate/).

Scores are `scores[i][j]`: image `i` against caption `j` (lists of lists, or arrays).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# ----------------------------------------------------------------------------------------------
# The hinge triplet loss (paper section 3.3; VSE++ for the hardest negative).
# ----------------------------------------------------------------------------------------------


def triplet_loss_terms(
    scores: Sequence[Sequence[float]],
    image_of: Sequence[int],
    *,
    margin: float,
    hardest: bool,
    negatives: str,
) -> tuple[float, float]:
    """`(caption retrieval term, image retrieval term)` of a batch's loss.

    Row `i` of the `(B, B)` batch is the image of caption `i`, so `(i, i)` are the positives.
    `image_of[i]` names caption `i`'s image. `negatives` is "diagonal" (every `j != i`, the
    authors' loss) or "same_image" (also not the captions or images of the positive's own image).
    """
    size = len(scores)

    def is_negative(i: int, j: int) -> bool:
        if j == i:
            return False
        return negatives == "diagonal" or image_of[j] != image_of[i]

    caption_term = image_term = 0.0
    for i in range(size):
        positive = float(scores[i][i])
        # Anchor image i: the other captions of the batch are its negatives.
        caption_costs = [max(0.0, margin - positive + float(scores[i][j])) for j in range(size) if is_negative(i, j)]
        # Anchor caption i: the other images of the batch are its negatives.
        image_costs = [max(0.0, margin - positive + float(scores[j][i])) for j in range(size) if is_negative(i, j)]
        if hardest:
            caption_term += max(caption_costs, default=0.0)
            image_term += max(image_costs, default=0.0)
        else:
            caption_term += sum(caption_costs)
            image_term += sum(image_costs)
    return caption_term, image_term


# ----------------------------------------------------------------------------------------------
# Ranks. Ties count against the ground truth (a competitor scoring exactly as high is ranked
# first): a model that scores everything alike gets the worst rank, not the best.
# ----------------------------------------------------------------------------------------------


def i2t_ranks(scores: Sequence[Sequence[float]], caption_image: Sequence[int]) -> list[int]:
    """For each image, the 1-based rank of the best of its captions among all captions.

    The other captions of the same image are not competitors (the authors' best-of-5).
    """
    ranks = []
    for i in range(len(scores)):
        own = [float(scores[i][j]) for j in range(len(caption_image)) if caption_image[j] == i]
        best = max(own)
        beaten_by = sum(1 for j in range(len(caption_image)) if caption_image[j] != i and scores[i][j] >= best)
        ranks.append(1 + beaten_by)
    return ranks


def t2i_ranks(scores: Sequence[Sequence[float]], caption_image: Sequence[int]) -> list[int]:
    """For each caption, the 1-based rank of its image among all images."""
    ranks = []
    for j in range(len(caption_image)):
        own = float(scores[caption_image[j]][j])
        beaten_by = sum(1 for i in range(len(scores)) if i != caption_image[j] and scores[i][j] >= own)
        ranks.append(1 + beaten_by)
    return ranks


# ----------------------------------------------------------------------------------------------
# Metrics and protocols.
# ----------------------------------------------------------------------------------------------


def metrics(scores: Sequence[Sequence[float]], caption_image: Sequence[int]) -> dict[str, float]:
    """R@1/5/10 (percent), median rank and mean rank in both directions, and rsum."""
    out: dict[str, float] = {}
    for direction, ranks in (("i2t", i2t_ranks(scores, caption_image)), ("t2i", t2i_ranks(scores, caption_image))):
        for k in (1, 5, 10):
            out[f"{direction}_r{k}"] = 100.0 * sum(1 for r in ranks if r <= k) / len(ranks)
        ordered = sorted(ranks)
        middle = len(ordered) // 2
        median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
        out[f"{direction}_medr"] = float(math.floor(median))  # the authors' floor(median(0-based)) + 1
        out[f"{direction}_meanr"] = sum(ranks) / len(ranks)
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    return out


def coco1k(scores: Sequence[Sequence[float]], caption_image: Sequence[int], folds: int = 5) -> dict[str, float]:
    """COCO 1K: the images cut into `folds` equal consecutive folds, each fold evaluated on its own
    images and their captions only, and every metric averaged over the folds."""
    num_images = len(scores)
    per_fold = num_images // folds
    results = []
    for fold in range(folds):
        images = list(range(fold * per_fold, (fold + 1) * per_fold))
        captions = [j for j in range(len(caption_image)) if caption_image[j] in images]
        block = [[scores[i][j] for j in captions] for i in images]
        local = [caption_image[j] - fold * per_fold for j in captions]
        results.append(metrics(block, local))
    return {key: sum(result[key] for result in results) / folds for key in results[0]}
