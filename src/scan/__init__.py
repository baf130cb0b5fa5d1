"""Stacked Cross Attention (SCAN, Lee et al., ECCV 2018) for image-text matching.

The library half of the project: data, model, similarity, loss, evaluation. Training recipes,
the command line, extraction, serving and drawing build on it and live in their own packages.

    from scan import load_model, score_matrix, retrieval_metrics
"""

from scan.config import Config, load_config
from scan.evaluate.metrics import retrieval_metrics
from scan.evaluate.protocols import ensemble_scores, evaluate_scores
from scan.losses import triplet_loss
from scan.models.loading import load_model
from scan.models.scan import SCAN, GlobalEmbedding, build_model
from scan.similarity.dispatch import batch_scores, score_matrix
from scan.similarity.functional import attend

__all__ = [
    "SCAN",
    "Config",
    "GlobalEmbedding",
    "attend",
    "batch_scores",
    "build_model",
    "ensemble_scores",
    "evaluate_scores",
    "load_config",
    "load_model",
    "retrieval_metrics",
    "score_matrix",
    "triplet_loss",
]
__version__ = "0.1.0"
