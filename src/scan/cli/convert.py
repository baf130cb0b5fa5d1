"""`scan convert`: store a precomputed folder's region features as float16 (half the disk) or float32."""

from __future__ import annotations

import argparse

from scan.cli.common import report_user_errors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scan convert",
        description=(
            "Rewrite {split}_ims.npy as float16 or float32, streaming (little memory at any size). "
            "Training and evaluation read either; float16 halves COCO's 33 GB."
        ),
        epilog=(
            "examples:\n"
            "  scan convert data/coco_precomp --dtype float16 --out data/coco_precomp_f16\n"
            "  scan convert data/coco_precomp --dtype float16 --in-place --split train"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("data", help="a precomputed folder ({split}_ims.npy + {split}_caps.txt)")
    parser.add_argument("--dtype", required=True, choices=("float16", "float32"))
    parser.add_argument("--out", default="", help="the converted folder (the splits' other files are copied)")
    parser.add_argument("--in-place", action="store_true", help="replace the features in DATA itself")
    parser.add_argument("--split", action="append", help="only these splits (repeatable; default: all)")
    return parser


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from scan.data.convert import convert_features
    from scan.errors import ConfigError

    if bool(args.out) == args.in_place:
        raise ConfigError("give --out FOLDER, or --in-place to replace the features in DATA")
    written = convert_features(args.data, None if args.in_place else args.out, args.dtype, splits=args.split)
    for path in written:
        print(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB)")
    return 0
