"""`scan vocab`: build a vocabulary from training captions, or check one against captions."""

from __future__ import annotations

import argparse

from scan.cli.common import report_user_errors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scan vocab",
        description=(
            "Build a vocabulary (released SCAN JSON format) from TRAINING captions only, "
            "or report how many tokens of some captions a vocabulary does not know."
        ),
        epilog=(
            "examples:\n"
            "  scan vocab build data/f30k_precomp/train_caps.txt --out f30k_vocab.json\n"
            "  scan vocab check f30k_vocab.json data/f30k_precomp/test_caps.txt"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="action", required=True)
    build = sub.add_parser("build", help="count words in caption files and keep the frequent ones")
    build.add_argument("captions", nargs="+", help="caption files, one caption per line (training split only)")
    build.add_argument("--out", required=True, help="where to write the vocabulary JSON")
    build.add_argument("--threshold", type=int, default=4, help="keep words seen at least this often (default 4)")
    check = sub.add_parser("check", help="unknown-token rate of caption files under a vocabulary")
    check.add_argument("vocab", help="vocabulary JSON")
    check.add_argument("captions", nargs="+", help="caption files")
    return parser


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from scan import pipeline

    if args.action == "build":
        pipeline.build_vocabulary_file(args.captions, args.out, threshold=args.threshold)
    else:
        pipeline.check_vocabulary_file(args.vocab, args.captions)
    return 0
