"""TEMPORARY minimal dispatcher (to be replaced by the fast-scoring work)."""
from __future__ import annotations
from scan.similarity import torch as torch_path


def batch_scores(images, captions, caption_mask, *, backend="auto", precision="fp32", **attention):
    return torch_path.pairwise_scores(images, captions, caption_mask, **attention)


def score_matrix(images, captions, caption_lengths, *, backend="auto", precision="fp32", memory_budget_mb=512.0, **attention):
    return torch_path.score_matrix(images, captions, caption_lengths, memory_budget_mb=memory_budget_mb, **attention)
