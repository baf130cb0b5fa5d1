"""`scan train`: train SCAN (or the baseline) from a YAML recipe plus dotted overrides."""

from __future__ import annotations

import argparse
import json

from scan.cli.common import report_user_errors
from scan.config import dump_config, load_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scan train",
        description="Train on precomputed region features ({split}_ims.npy + {split}_caps.txt).",
        epilog=(
            "examples:\n"
            "  scan train --config configs/f30k_t2i.yaml --data data/f30k_precomp --run-dir runs/f30k_t2i\n"
            "  scan train --config configs/f30k_i2t.yaml --data data/f30k_precomp train.epochs=5 model.agg=Mean\n"
            "  scan train --run-dir runs/f30k_t2i --config configs/f30k_t2i.yaml --data data/f30k_precomp --resume"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML recipe (configs/*.yaml); defaults are the Flickr30K t2i recipe")
    parser.add_argument("--data", help="folder of the precomputed layout (sets data.path)")
    parser.add_argument("--run-dir", help="where checkpoints, metrics.jsonl and config.yaml go (sets train.run_dir)")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:1 ... (sets train.device)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its latest checkpoint")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="section.field=value", help="e.g. train.lr=1e-4 model.agg=Mean")
    return parser


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = list(args.overrides)
    for flag, key in ((args.data, "data.path"), (args.run_dir, "train.run_dir"), (args.device, "train.device")):
        if flag:
            overrides.append(f"{key}={flag}")
    config = load_config(args.config, overrides)
    if args.print_config:
        print(dump_config(config))
        return 0
    from scan.train import recipe

    run = recipe.setup(config, resume=args.resume)
    print(f"training {config.model.architecture} ({config.model.direction}) for {run.total_steps} steps on {run.device}; run dir {run.run_dir}")
    summary = recipe.train(run)
    recipe.cleanup(run)
    print(json.dumps(summary))
    return 0
