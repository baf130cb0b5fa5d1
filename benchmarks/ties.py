"""Benchmark: do ties between scores change any rank of trained models, ours against the authors'?

Our ranks count a tie against the ground truth; the authors' `evaluation.py` ranks by
`numpy.argsort`, which breaks it by position (`original_port.i2t` / `t2i`). This scores a split
with each model and prints both rsums and how many ranks differ in each direction.

    python benchmarks/ties.py --features reports/flickr8k-demo/features-bottomup --split test \\
        --model reports/flickr8k-demo/models/baseline reports/flickr8k-demo/models/scan_t2i \\
        reports/flickr8k-demo/models/scan_i2t
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import original_port
from scan.data.precomp import PrecompSplit
from scan.evaluate.encode import encode_split, score_split
from scan.evaluate.metrics import i2t_ranks, retrieval_metrics, t2i_ranks
from scan.models.loading import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", required=True, help="a precomputed features folder (5 captions per image)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--model", nargs="+", required=True, help="run directories or model folders")
    args = parser.parse_args()
    split = PrecompSplit.open(args.features, args.split)
    print(
        "| model | rsum (ties against the truth) | rsum (argsort order) | i2t ranks differing | t2i ranks differing |"
    )
    print("|---|---:|---:|---:|---:|")
    for folder in args.model:
        model = load_model(folder, device="cpu")
        encoded = encode_split(model.model, split, model.tokenizer, device=torch.device("cpu"))
        scores = np.asarray(score_split(model.model, encoded, device=torch.device("cpu")), dtype=np.float64)
        (i_r1, i_r5, i_r10, _, _), i2t_original = original_port.i2t(scores)
        (t_r1, t_r5, t_r10, _, _), t2i_original = original_port.t2i(scores)
        i2t_differ = int((i2t_ranks(scores) != i2t_original + 1).sum())
        t2i_differ = int((t2i_ranks(scores) != t2i_original + 1).sum())
        ours = retrieval_metrics(scores)["rsum"]
        theirs = i_r1 + i_r5 + i_r10 + t_r1 + t_r5 + t_r10
        print(
            f"| {Path(folder).name} | {ours:.1f} | {theirs:.1f} | {i2t_differ} of {len(i2t_original)} | "
            f"{t2i_differ} of {len(t2i_original)} |"
        )


if __name__ == "__main__":
    main()
