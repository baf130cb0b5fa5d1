"""Benchmark: the demo's SCAN t2i recipe with one choice changed, over several seeds.

Each variant is the demo recipe plus a few overrides. For each run it prints the exhaustive SCAN
rsum on the dev and test splits, and the rsum of the global head's cosines alone (what search's
first stage ranks by), then mean and standard deviation over seeds, and each variant's mean
paired difference from the first variant listed (same seeds: the seed-to-seed spread on this
little data is larger than most effects, the paired difference much smaller).

Two questions it answers (docs/RESULTS.md):

* does training the global head beside SCAN cost SCAN's own ranking anything?

    python benchmarks/recipe_variants.py --features reports/flickr8k-demo/features-bottomup \\
        --out reports/variants --seeds 0 1 2 --variants no-head head-w1

* are another caption of the positive's image negatives (the authors' loss) or not (ours)?

    python benchmarks/recipe_variants.py --features reports/flickr8k-demo/features-bottomup \\
        --out reports/variants --seeds 0 1 2 3 4 --variants head-w1 diagonal

Runs are kept in `--out` and reused (a rerun only evaluates), so an interrupted benchmark resumes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from scan.data.precomp import PrecompSplit
from scan.evaluate.encode import encode_split, score_split
from scan.evaluate.metrics import retrieval_metrics
from scan.models.loading import load_model
from scan.pipeline import DEMO_CONFIG, DEMO_TEXT_ENCODERS, DEMO_VARIANTS, train_or_resume
from scan.search.two_stage import global_image_vectors, global_text_vector

# name (also the run folder's prefix) -> recipe overrides
VARIANTS = {
    "no-head": ["model.global_head=false"],
    "head-w1": ["model.global_head=true", "train.global_loss_weight=1.0"],  # the defaults
    "head-w0.1": ["model.global_head=true", "train.global_loss_weight=0.1"],
    # The defaults, but the authors' negatives: every pair off the diagonal, same image or not.
    "diagonal": ["model.global_head=true", "train.global_loss_weight=1.0", "train.negatives=diagonal"],
    # The baseline (mean-pooled regions and words), for SCAN's margin over it.
    "baseline": ["model.architecture=vse"],
    # The attention softmax's inverse temperature lambda_1 (the demo recipe's is 4, the paper's 9;
    # the MiniLM text encoder's settings make it 9, the GRU's leave it at 4).
    "lambda4": ["model.lambda_softmax=4.0"],
    "lambda9": ["model.lambda_softmax=9.0"],
    "lambda20": ["model.lambda_softmax=20.0"],
    "i2t": ["model.direction=i2t"],
    "i2t-lambda9": ["model.direction=i2t", "model.lambda_softmax=9.0"],
    # lambda_1 trained with the model, from the text encoder's value (9 with MiniLM).
    "learn-lambda": ["model.learn_lambda=true"],
    "i2t-learn-lambda": ["model.direction=i2t", "model.learn_lambda=true"],
}


def evaluate(run_dir: Path, features: Path, split_name: str) -> dict[str, float]:
    """rsum of SCAN over the whole split, and of the global head's cosines where the model has one."""
    model = load_model(run_dir, device="cpu")
    split = PrecompSplit.open(features, split_name)
    encoded = encode_split(model.model, split, model.tokenizer, device=torch.device("cpu"))
    scan_rsum = retrieval_metrics(score_split(model.model, encoded, device=torch.device("cpu")), encoded.caption_image)
    result = {"scan": float(scan_rsum["rsum"])}
    head = getattr(model.model, "global_head", None)
    if head is not None:
        mask = torch.arange(encoded.captions.shape[1])[None, :] < encoded.lengths[:, None]  # (M, W)
        images = global_image_vectors(encoded.images, head)  # (N, D)
        texts = global_text_vector(encoded.captions, mask, head)  # (M, D)
        cosines = (images @ texts.T).numpy().astype(np.float64)  # (N, M)
        result["global"] = float(retrieval_metrics(cosines, encoded.caption_image)["rsum"])
    return result


def summary(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", required=True, help="the demo's precomputed features folder")
    parser.add_argument("--out", required=True, help="where the runs go (reused when there)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument(
        "--text-encoder", default="gru", choices=list(DEMO_TEXT_ENCODERS), help="the demo's text encoder choice"
    )
    parser.add_argument(
        "--splits",
        nargs="+",
        default=["dev", "test"],
        choices=["dev", "test"],
        help="splits to score; `--splits dev` when choosing, so the test split is left for the end",
    )
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="further overrides applied to every variant (e.g. model.embed_dim=1024)",
    )
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    features, out = Path(args.features), Path(args.out)
    scan_t2i = DEMO_VARIANTS["SCAN t2i AVG"][1]

    figures: dict[str, dict[str, list[float]]] = {}
    print("variant | seed | SCAN dev rsum | SCAN test rsum | global-only dev | global-only test | training s")
    for variant in args.variants:
        columns = figures.setdefault(variant, {})
        for seed in args.seeds:
            run_dir = out / f"{variant}-seed{seed}"
            overrides = [
                *scan_t2i,
                *DEMO_TEXT_ENCODERS[args.text_encoder],
                *VARIANTS[variant],
                *args.set,
                f"train.seed={seed}",
            ]
            started = time.perf_counter()
            train_or_resume(DEMO_CONFIG, features, run_dir, overrides, device="cpu", progress=False)
            seconds = time.perf_counter() - started  # near 0 when the run was already there
            row = {
                f"{part} {split}": value
                for split in args.splits
                for part, value in evaluate(run_dir, features, split).items()
            }
            for name, value in row.items():
                columns.setdefault(name, []).append(value)
            cells = [
                f"{row[name]:.1f}" if name in row else "-"
                for name in ("scan dev", "scan test", "global dev", "global test")
            ]
            print(f"{variant} | {seed} | " + " | ".join(cells) + f" | {seconds:.0f}", flush=True)

    print(f"\nmean ± standard deviation over seeds {args.seeds}")
    print("| variant | SCAN dev rsum | SCAN test rsum | global-only dev rsum | global-only test rsum |")
    print("|---|---|---|---|---|")
    for variant, columns in figures.items():
        cells = [
            summary(columns[name]) if name in columns else "-"
            for name in ("scan dev", "scan test", "global dev", "global test")
        ]
        print(f"| {variant} | " + " | ".join(cells) + " |")
    first = args.variants[0]
    if len(args.variants) > 1:
        print(f"\npaired difference from {first} (same seed): mean ± standard deviation, then each seed's")
        print("| variant | SCAN dev rsum | SCAN test rsum |")
        print("|---|---|---|")
        for variant in args.variants[1:]:
            cells = []
            for name in ("scan dev", "scan test"):
                if name not in figures[first]:
                    cells.append("-")
                    continue
                diffs = [b - a for a, b in zip(figures[first][name], figures[variant][name], strict=True)]
                cells.append(f"{summary(diffs)} ({', '.join(f'{d:+.1f}' for d in diffs)})")
            print(f"| {variant} - {first} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
