"""`scan search`: the photos of an index that best match a sentence, or the captions that best describe a photo."""

from __future__ import annotations

import argparse

from scan.cli.common import report_user_errors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scan search",
        description=(
            "Search an index made by `scan index build`: a faiss index of global vectors shortlists "
            "candidates, SCAN re-ranks them. Prints rank, SCAN score and photo (or caption)."
        ),
        epilog=(
            "examples:\n"
            '  scan search pictures.index "a dog runs on the beach" -k 5\n'
            '  scan search pictures.index "two children play football" --explain why/\n'
            "  scan search pictures.index --image query.jpg     (the index's captions that best describe it)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("index", help="the index folder")
    parser.add_argument("text", nargs="?", default="", help="the query sentence (text-to-image)")
    parser.add_argument("--image", default="", help="a query photo instead (image-to-text, against the captions)")
    parser.add_argument("-k", type=int, default=10, help="results to show (default 10)")
    parser.add_argument(
        "--shortlist", type=int, default=None, help="candidates the first stage passes to SCAN (default: max(100, k))"
    )
    parser.add_argument("--exhaustive", action="store_true", help="score every item with SCAN (exact, slow)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--explain", default="", help="write an attention picture per hit into this folder")
    parser.add_argument("--model", default="", help="the model, if it moved since the index was built")
    parser.add_argument(
        "--cache", default="", help="region-feature cache for a query photo (default ~/.cache/scan/regions)"
    )
    return parser


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from scan.pipeline import search as jobs

    jobs.search(
        jobs.SearchOptions(
            index=args.index,
            text=args.text,
            image=args.image,
            k=args.k,
            shortlist=args.shortlist,
            exhaustive=args.exhaustive,
            as_json=args.json,
            explain=args.explain,
            model=args.model,
            **({"cache": args.cache} if args.cache else {}),
        )
    )
    return 0
