"""Evaluation: encode a split once, score it, and report recall with the papers' protocols."""
