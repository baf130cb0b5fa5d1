"""`scan`: one console script with a subcommand per job (train, eval, vocab, extract, demo, index, search, serve, import-original, convert).

Each subcommand lives in its own module with a `main(argv=None)` so tests call it directly.
Heavy imports happen inside the subcommand, so `scan --help` is instant.
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "demo": ("scan.cli.demo", "extract features from photos, train SCAN and the baseline, report (Flickr8k)"),
    "train": ("scan.cli.train", "train a model on precomputed region features"),
    "eval": ("scan.cli.eval", "evaluate trained models (or their ensemble) with the papers' protocols"),
    "extract": ("scan.cli.extract", "turn raw photos into region features (the precomputed layout)"),
    "convert": ("scan.cli.convert", "store region features as float16 (half the disk) or float32"),
    "vocab": ("scan.cli.vocab", "build a vocabulary from training captions, or check one"),
    "index": ("scan.cli.index", "build or update a searchable index of a photo folder"),
    "search": ("scan.cli.search", "search an index: photos for a sentence, or captions for a photo"),
    "import-original": (
        "scan.cli.import_original",
        "convert the SCAN authors' released checkpoint into a model folder",
    ),
    "serve": ("scan.cli.serve", "serve an index: a search page that shows why photos matched, and a JSON API"),
}

USAGE = (
    "usage: scan <command> [options]\n\ncommands:\n"
    + "\n".join(f"  {name:<17}{help_text}" for name, (_, help_text) in SUBCOMMANDS.items())
    + "\n\nRun `scan <command> --help` for the options of one command."
)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:  # a command is required: say which exist, and fail like any usage error
        print(USAGE, file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"scan: unknown command {name!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
