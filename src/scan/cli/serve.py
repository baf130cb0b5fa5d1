"""`scan serve`: a search service and web page over an index made by `scan index build`."""

from __future__ import annotations

import argparse
import os

from scan.cli.common import report_user_errors

TOKEN_ENV = "SCAN_SERVE_TOKEN"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scan serve",
        description=(
            "Serve an index over HTTP: a web page to search it by sentence (and see where each word "
            "looked in each photo) or by photo, and the JSON API the page uses (documented at /api/docs)."
        ),
        epilog=(
            "examples:\n"
            "  scan serve photos.index                       (http://127.0.0.1:8000, this machine only)\n"
            "  SCAN_SERVE_TOKEN=s3cret-token scan serve photos.index --host 0.0.0.0\n"
            "\nListening beyond loopback needs a token (--token or $SCAN_SERVE_TOKEN: clients send\n"
            "'Authorization: Bearer TOKEN'; the page takes it from its address, #token=TOKEN) or --insecure."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("index", help="the index folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument("--token", default=None, help=f"bearer token the API requires (or ${TOKEN_ENV})")
    parser.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without a token")
    parser.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        help="an origin allowed to call the API (repeatable; default none)",
    )
    parser.add_argument("--max-k", type=int, default=100, help="most results per request (default 100)")
    parser.add_argument("--shortlist", type=int, default=None, help="first-stage candidates per query (default 100)")
    parser.add_argument("--max-upload-mb", type=float, default=10.0, help="largest photo upload (default 10 MB)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds a request may compute (default 30)")
    parser.add_argument("--max-batch", type=int, default=8, help="text queries searched together (1: no batching)")
    parser.add_argument("--no-access-log", action="store_true", help="do not log one JSON line per request")
    parser.add_argument("--model", default="", help="the model, if it moved since the index was built")
    return parser


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from scan.serve import ServeSettings, run

    run(
        args.index,
        ServeSettings(
            host=args.host,
            port=args.port,
            token=args.token or os.environ.get(TOKEN_ENV) or None,
            insecure=args.insecure,
            cors_origins=args.cors_origin,
            max_k=args.max_k,
            shortlist=args.shortlist,
            max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
            request_timeout_s=args.timeout,
            max_batch=args.max_batch,
            access_log=not args.no_access_log,
        ),
        model=args.model,
    )
    return 0
