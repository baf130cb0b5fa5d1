"""`scan train`: train SCAN (or the baseline) from a YAML recipe plus dotted overrides."""

from __future__ import annotations

import argparse

from scan.cli.common import report_user_errors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scan train",
        description="Train on precomputed region features ({split}_ims.npy + {split}_caps.txt).",
        epilog=(
            "recipes ship with the package: f30k_t2i_avg, f30k_t2i_lse, f30k_i2t_avg, f30k_i2t_lse, coco_*, demo_flickr8k,\n"
            "synthetic (give a name, or the path of your own YAML)\n"
            "examples:\n"
            "  scan train --config f30k_t2i_avg --data data/f30k_precomp --run-dir runs/f30k_t2i_avg\n"
            "  scan train --config configs/f30k_i2t_lse.yaml --data data/f30k_precomp train.epochs=5 model.agg=Mean\n"
            "  scan train --config f30k_t2i_avg --data data/f30k_precomp --run-dir runs/f30k_t2i_avg --resume\n"
            "  torchrun --nproc-per-node 4 -m scan train --config f30k_t2i_avg --data data/f30k_precomp  (4 GPUs)\n"
            "  scan train --nproc 2 --config synthetic --data data/synthetic --device cpu   (2 processes, Gloo)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="a packaged recipe's name or a YAML file; default: the Flickr30K t2i defaults")
    parser.add_argument("--data", help="folder of the precomputed layout (sets data.path)")
    parser.add_argument("--run-dir", help="where checkpoints, metrics.jsonl and config.yaml go (sets train.run_dir)")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:1 ... (sets train.device)")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --run-dir from its latest checkpoint"
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument(
        "--nproc",
        type=int,
        default=0,
        help="train on N processes of this machine (runs torchrun --standalone --nproc-per-node N -m scan train ...)",
    )
    parser.add_argument("overrides", nargs="*", metavar="section.field=value", help="e.g. train.lr=1e-4 model.agg=Mean")
    return parser


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.nproc:
        from scan.cli.common import relaunch_with_torchrun

        return relaunch_with_torchrun("train", argv, args.nproc)
    from scan import pipeline

    flags = {"data.path": args.data, "train.run_dir": args.run_dir, "train.device": args.device}
    overrides = [*args.overrides, *(f"{key}={value}" for key, value in flags.items() if value)]
    pipeline.train(args.config, overrides, resume=args.resume, print_config=args.print_config)
    return 0
