"""`scan eval`: score trained models on a split and report recall with the papers' protocols.

Several `--model`s are evaluated one by one and, with `--ensemble`, together by averaging their
score matrices (the paper's best rows average a t2i and an i2t model).
"""

from __future__ import annotations

import argparse

from scan.cli.common import report_user_errors
from scan.evaluate.protocols import PROTOCOLS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scan eval",
        description="Evaluate trained models: R@1/5/10, median and mean rank both ways, and rsum.",
        epilog=(
            "protocols: 1k (the whole split; Flickr30K 1K test), coco1k (mean of 5 folds of 1000 images),\n"
            "           coco5k (all 5000 COCO test images), all (the whole split, any size)\n"
            "examples:\n"
            "  scan eval --model runs/f30k_t2i --data data/f30k_precomp --split test\n"
            "  scan eval --model runs/coco_t2i --model runs/coco_i2t --ensemble --data data/coco_precomp \\\n"
            "            --split testall --protocol coco1k --protocol coco5k --json results.json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model", action="append", required=True, help="run directory or checkpoint folder (repeatable)"
    )
    parser.add_argument("--name", action="append", help="a display name per --model (default: the folder name)")
    parser.add_argument(
        "--data",
        required=True,
        help="folder of the precomputed layout, or of photos (captions.txt or dataset_*.json): "
        "photos are featurised as the models' training features were, and cached",
    )
    parser.add_argument(
        "--split", default="test", help="split to evaluate (default: test); 'all' takes every photo of a folder"
    )
    parser.add_argument(
        "--features-cache", default="", help="where features of a photo folder go (default: ~/.cache/scan/features)"
    )
    parser.add_argument("--protocol", action="append", choices=PROTOCOLS, help="repeatable (default: all)")
    parser.add_argument("--ensemble", action="store_true", help="also evaluate the average of the models' scores")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument(
        "--backend", default="auto", choices=("auto", "torch", "triton"), help="scoring path (auto: the fastest here)"
    )
    parser.add_argument(
        "--scoring-precision",
        default="auto",
        choices=("auto", "fp32", "tf32", "bf16"),
        help="pairwise scores: auto (bf16 on the Triton path, else fp32), fp32 for exact float32",
    )
    parser.add_argument("--batch-size", type=int, default=128, help="items per encoder batch")
    parser.add_argument("--json", help="also write the results here (atomically)")
    parser.add_argument("--save-scores", default="", help="also write each model's score matrix to DIR/NAME.npy")
    parser.add_argument(
        "--nproc", type=int, default=0, help="score on N processes of this machine (torchrun; image rows split)"
    )
    return parser


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.nproc:
        from scan.cli.common import relaunch_with_torchrun

        return relaunch_with_torchrun("eval", argv, args.nproc)
    from scan import pipeline

    pipeline.evaluate(
        pipeline.EvalOptions(
            models=args.model,
            data=args.data,
            names=args.name,
            split=args.split,
            features_cache=args.features_cache,
            protocols=args.protocol or ["all"],
            ensemble=args.ensemble,
            device=args.device,
            backend=args.backend,
            scoring_precision=args.scoring_precision,
            batch_size=args.batch_size,
            json_path=args.json or "",
            scores_dir=args.save_scores,
        )
    )
    return 0
