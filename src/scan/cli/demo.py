"""`scan demo`: photos and captions in, a results table and attention pictures out.

On a folder in the Kaggle Flickr8k layout (or with a Karpathy JSON) it runs the whole system:
region features from the photos (`scan extract`), then three models trained by the same recipe
(the VSE++-style global-embedding baseline, SCAN t2i and SCAN i2t), each evaluated on the
test split, plus the t2i+i2t ensemble the paper reports. The report folder gets the table
(Markdown and JSON), training curves, attention pictures for a few test captions, and the
trained models, which `scan eval` can score on any other folder of photos.

Every stage is cached or resumable: features are not extracted twice, a finished model is not
trained twice, and an interrupted training run continues where it stopped.
"""

from __future__ import annotations

import argparse

from scan.cli.common import report_user_errors
from scan.pipeline import DEFAULT_DEMO_DATA as DEFAULT_DATA
from scan.pipeline import (
    DEMO_CONFIG,
    DEMO_MODE,
    DEMO_REGIONS,
    DEMO_TEXT_ENCODER,
    DEMO_TEXT_ENCODERS,
    DemoOptions,
    run_demo,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scan demo",
        description=(
            "Extract region features from captioned photos, train the baseline, SCAN t2i and SCAN i2t, "
            "evaluate them and their ensemble on the test split, and write a report with attention pictures."
        ),
        epilog=(
            "examples:\n"
            "  scan demo                                   # the 800 Flickr8k photos in ../shared/data\n"
            "  scan demo --data ~/flickr8k --out reports/flickr8k-full   # the full Kaggle Flickr8k folder\n"
            "  scan demo --mode bottomup --text-encoder gru   # detector boxes and a GRU: SCAN as the paper built it"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data", default=DEFAULT_DATA, help=f"photos + captions.txt or dataset_*.json (default {DEFAULT_DATA})"
    )
    parser.add_argument("--out", default="reports/flickr8k-demo", help="report folder (default reports/flickr8k-demo)")
    parser.add_argument(
        "--config",
        default=DEMO_CONFIG,
        help=f"training recipe of the three models: a packaged name or a YAML file (default {DEMO_CONFIG})",
    )
    parser.add_argument(
        "--mode",
        choices=tuple(DEMO_REGIONS),
        default=DEMO_MODE,
        help="regions: bottomup-grid (36 detector boxes and the 6 x 6 grid cells), bottomup (the boxes alone, "
        "as the paper), grid (the cells alone), pyramid (6 x 6, 3 x 3 and 1 x 1 cells) or grid-lite2 (the cells "
        f"of EfficientNet-Lite2 instead of Lite0) (default {DEMO_MODE})",
    )
    parser.add_argument(
        "--text-encoder",
        choices=tuple(DEMO_TEXT_ENCODERS),
        default=DEMO_TEXT_ENCODER,
        help="minilm: pretrained MiniLM-L6, frozen; minilm-finetune: MiniLM trained too; gru: trained from "
        f"scratch; gru-minilm-words: a GRU starting from MiniLM's word vectors (default {DEMO_TEXT_ENCODER})",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument("--attention-examples", type=int, default=4, help="test captions to draw attention for")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "overrides", nargs="*", metavar="section.field=value", help="recipe overrides, e.g. train.epochs=5"
    )
    return parser


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run_demo(
        DemoOptions(
            data=args.data,
            out=args.out,
            config=args.config,
            mode=args.mode,
            text_encoder=args.text_encoder,
            device=args.device,
            attention_examples=args.attention_examples,
            quiet=args.quiet,
            overrides=list(args.overrides),
        )
    )
    return 0
