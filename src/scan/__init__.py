"""Stacked Cross Attention (SCAN, Lee et al., ECCV 2018) for image-text matching.

The library: data, models, similarity, loss, evaluation, features, drawing. The application
(the training recipe `scan.train`, the jobs in `scan.pipeline`, the command line `scan.cli`)
builds on it; nothing here imports it.

    from scan import load_model, retrieval_metrics
    trained = load_model("runs/f30k_t2i_avg")
    scores = trained.model.score_matrix(images, words, lengths)  # (N, M)

    from scan import Index  # needs the [search] extra (faiss-cpu)
    index = Index.open("my-index")
    hits = index.search("a dog runs on the beach", k=10)  # [Hit(id, score, path, ...)]
"""

from typing import Any

from scan.config import Config, load_config
from scan.errors import ScanError
from scan.evaluate.metrics import retrieval_metrics
from scan.evaluate.protocols import ensemble_scores, evaluate_scores
from scan.losses import triplet_loss
from scan.models.loading import load_model
from scan.models.scan import SCAN, GlobalEmbedding, build_model
from scan.similarity.dispatch import batch_scores, score_matrix
from scan.similarity.functional import attend
from scan.similarity.options import AttentionOptions

__all__ = [
    "SCAN",
    "AttentionOptions",
    "Config",
    "GlobalEmbedding",
    "Index",
    "ScanError",
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


def __getattr__(name: str) -> Any:
    """`scan.Index` on first use: search pulls in faiss, which plain training never needs."""
    if name == "Index":
        from scan.search.index import Index

        return Index
    raise AttributeError(f"module 'scan' has no attribute {name!r}")
