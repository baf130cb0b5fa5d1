"""`scan import-original`: the SCAN authors' released checkpoint as a model folder of ours."""

from __future__ import annotations

import argparse

from scan.cli.common import report_user_errors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scan import-original",
        description=(
            "Read a checkpoint released with SCAN (model_best.pth.tar) and its vocabulary without running "
            "any code from them, map their options and weights to ours, and write a model folder that "
            "scan eval, scan index and scan serve use like any other."
        ),
        epilog=(
            "example:\n"
            "  scan import-original runs/f30k_scan/model_best.pth.tar --vocab vocab/f30k_precomp_vocab.json \\\n"
            "      --out runs/f30k_t2i_original\n"
            "  scan eval --model runs/f30k_t2i_original --data data/f30k_precomp --split test"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", help="the released .pth.tar")
    parser.add_argument(
        "--vocab", required=True, help="its vocabulary: the released JSON, or a vocab.Vocabulary pickle"
    )
    parser.add_argument("--out", required=True, help="the model folder to write (must not hold a model)")
    return parser


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from scan.models.original import write_imported_model

    folder = write_imported_model(args.checkpoint, args.vocab, args.out)
    print(
        f"wrote {folder} (config.yaml, vocab.json, model.safetensors); evaluate it with: scan eval --model {folder} ..."
    )
    return 0
