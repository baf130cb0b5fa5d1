"""`scan index`: build a searchable index of a photo folder, add to it, remove from it, describe it."""

from __future__ import annotations

import argparse

from scan.cli.common import report_user_errors


def _add_photo_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--photos", default="", help="a folder of photos (searched recursively) or one photo")
    parser.add_argument(
        "--captions",
        default="",
        help="a caption file to index for image-to-text search: Flickr8k's captions.txt (image,caption) "
        "or one caption per line",
    )
    parser.add_argument(
        "--cache", default="", help="region-feature cache, shared with other indexes (default: ~/.cache/scan/regions)"
    )
    parser.add_argument("--workers", type=int, default=0, help="photos featurised at once (default: one per CPU)")
    parser.add_argument(
        "--batch-size", type=int, default=64, help="photos per atomic step (one store shard) (default 64)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scan index",
        description=(
            "A searchable index of a photo collection: each photo's region vectors on disk and a global "
            "vector in a faiss index, made with a trained model. Every update is atomic: a killed build or "
            "add leaves the previous index usable, and rerunning it finishes the job."
        ),
        epilog=(
            "examples:\n"
            "  scan index build --model runs/scan_t2i --photos ~/Pictures --out pictures.index\n"
            "  scan index add pictures.index --photos ~/Pictures/2026 --captions captions.txt\n"
            "  scan index remove pictures.index holidays/IMG_0042.jpg\n"
            "  scan index info pictures.index\n"
            '  scan search pictures.index "a dog runs on the beach"'
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="action", required=True)
    build = sub.add_parser("build", help="index a folder of photos (rerun to finish an interrupted build)")
    build.add_argument("--model", required=True, help="run directory or checkpoint folder of a trained model")
    build.add_argument("--out", required=True, help="the index folder to make")
    _add_photo_options(build)
    build.add_argument(
        "--first-stage",
        default="auto",
        choices=("auto", "flat", "hnsw", "ivf"),
        help="the shortlisting index: auto (exact while small), flat (exact), hnsw or ivf (approximate)",
    )
    build.add_argument(
        "--regions",
        default="float16",
        choices=("float16", "pq"),
        help="how region vectors are stored: float16, or pq (product-quantised, ~16x smaller, ranks a little worse)",
    )
    add = sub.add_parser("add", help="add photos (skipping those already in, by content) and captions")
    add.add_argument("index", help="the index folder")
    add.add_argument("--model", default="", help="the model, if it moved since the index was built")
    _add_photo_options(add)
    remove = sub.add_parser("remove", help="take photos out of the index (their files are not touched)")
    remove.add_argument("index", help="the index folder")
    remove.add_argument("photos", nargs="+", help="photo paths, as added or as `scan index info` lists them")
    remove.add_argument("--model", default="", help="the model, if it moved since the index was built")
    info = sub.add_parser("info", help="what an index holds and how it was made")
    info.add_argument("index", help="the index folder")
    info.add_argument("--model", default="", help="the model, if it moved since the index was built")
    info.add_argument("--json", action="store_true", help="print JSON")
    return parser


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from scan.pipeline import search as jobs

    if args.action in ("build", "add"):
        options = jobs.IndexBuildOptions(
            index=args.out if args.action == "build" else args.index,
            photos=args.photos,
            model=args.model,
            captions=args.captions,
            workers=args.workers,
            batch_size=args.batch_size,
            progress=not args.quiet,
            **({"cache": args.cache} if args.cache else {}),
            **({"first_stage": args.first_stage, "regions": args.regions} if args.action == "build" else {}),
        )
        (jobs.index_build if args.action == "build" else jobs.index_add)(options)
    elif args.action == "remove":
        jobs.index_remove(args.index, args.photos, model=args.model)
    else:
        jobs.index_info(args.index, model=args.model, as_json=args.json)
    return 0
