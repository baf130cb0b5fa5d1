"""``scan extract``: turn a folder of captioned photos into SCAN's precomputed region features.

Reads Karpathy's ``dataset_*.json`` (or the Kaggle Flickr8k ``captions.txt`` layout) and writes
``{split}_ims.npy``, ``{split}_boxes.npy``, ``{split}_caps.txt``, ``{split}_ids.txt`` and
``{split}_extract.json`` per split (see :mod:`scan.features.extract`). Interrupted runs resume;
finished splits are not redone.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from scan.cli.common import report_user_errors

__all__ = ["build_parser", "main"]

EPILOG = """\
examples:
  scan extract --data ../shared/data/flickr8k-800 --out data/f8k_800_precomp
  scan extract --data dataset_coco.json --out data/coco_lite --splits train dev testall --dtype float16
  scan extract --data my_photos/ --out data/mine --mode grid --dev 50 --test 50
  torchrun --nnodes 2 --nproc-per-node 8 ... -m scan extract --data dataset_coco.json --out /shared/coco_lite

Under torchrun (or --nproc N on one machine) each process extracts a share of the photos into
the same files, which are byte-identical to one process's; the output folder must be one that
every process can write (shared storage across machines).

The folder may hold a Karpathy split file (dataset_*.json, its splits are used: 'dev' is its
'val', 'train' includes 'restval') or a Kaggle-style captions.txt (CSV 'image,caption' beside
Images/ or images/; a deterministic split is drawn by file-name hash). Every image needs 5 captions.

Unreadable or truncated images are reported on stderr and left out of their split, with their
captions, and listed in {split}_extract.json; --strict makes them an error instead.
Exit status: 0 done, 1 unreadable images under --strict, 2 bad input data or arguments.
"""


def build_parser() -> argparse.ArgumentParser:
    from scan.features.backbone import VARIANTS
    from scan.features.extract import ExtractConfig

    d = ExtractConfig()
    p = argparse.ArgumentParser(
        prog="scan extract",
        description="Extract R region features per image (EfficientNet-Lite RoIAlign features at SSD-MobileNetV2 "
        "COCO boxes, or a grid) into SCAN's precomputed layout.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="FOLDER_OR_JSON",
        help="folder with images + dataset_*.json or captions.txt, or the JSON / CSV file itself",
    )
    p.add_argument("--out", required=True, metavar="FOLDER", help="output folder (created if missing)")
    p.add_argument(
        "--mode",
        choices=("bottomup", "grid"),
        default=d.mode,
        help="bottomup: detector boxes, NMS, filled from grids to R; grid: a sqrt(R) x sqrt(R) "
        "grid of cells (default: %(default)s)",
    )
    p.add_argument(
        "--splits",
        nargs="+",
        metavar="SPLIT",
        default=None,
        help="output splits among train, dev, test, testall, restval (default: those of train, "
        "dev, test that have images)",
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "float16"),
        default=d.dtype,
        help="stored feature dtype; float16 halves the disk (default: %(default)s)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=d.batch_size,
        metavar="N",
        help="images per checkpoint: an interrupted run resumes from the last one (default: %(default)s)",
    )
    p.add_argument(
        "--num-regions",
        type=int,
        default=d.num_regions,
        metavar="R",
        help="regions per image of the mode: detector boxes, or grid cells (a square number) (default: %(default)s)",
    )
    p.add_argument(
        "--add-grids",
        type=int,
        nargs="+",
        default=list(d.add_grids),
        metavar="SIDE",
        help="also the cells of these grids, after the mode's regions: --mode grid --add-grids 3 1 is a "
        "three-scale pyramid (36 + 9 + 1 regions), --mode bottomup --add-grids 6 the boxes and the 6 x 6 cells",
    )
    p.add_argument(
        "--backbone",
        choices=sorted(VARIANTS),
        default=d.backbone,
        help="EfficientNet-Lite variant whose feature map is pooled; lite2 is more accurate on ImageNet and "
        "about 1.5x slower (default: %(default)s)",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=d.image_size,
        metavar="PX",
        help="shorter side of the backbone input in pixels (default: %(default)s)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=d.workers,
        metavar="N",
        help="images processed at once, one CPU thread each; 0: one per CPU (default: %(default)s)",
    )
    p.add_argument(
        "--strict", action="store_true", help="fail (listing all of them) on unreadable images instead of skipping them"
    )
    p.add_argument(
        "--dev",
        type=float,
        default=None,
        metavar="N",
        help="captions.txt layout only: dev images, a count or a fraction < 1 (default: min(1000, N/8))",
    )
    p.add_argument(
        "--test", type=float, default=None, metavar="N", help="captions.txt layout only: test images, like --dev"
    )
    p.add_argument("--seed", type=int, default=0, help="captions.txt layout only: seed of the split draw")
    p.add_argument("--quiet", action="store_true", help="no progress bars (failures are still reported)")
    p.add_argument(
        "--nproc",
        type=int,
        default=0,
        metavar="N",
        help="extract on N processes of this machine (torchrun; each takes a share of the photos, "
        "the files written are the same)",
    )
    return p


def _count(value: float | None) -> int | float | None:
    return int(value) if value is not None and value >= 1 else value


@report_user_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Run ``scan extract``; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.nproc:
        from scan.cli.common import relaunch_with_torchrun

        return relaunch_with_torchrun("extract", None if argv is None else list(argv), args.nproc)
    from scan import pipeline
    from scan.features.extract import ExtractConfig

    config = ExtractConfig(
        mode=args.mode,
        num_regions=args.num_regions,
        add_grids=tuple(args.add_grids),
        backbone=args.backbone,
        image_size=args.image_size,
        dtype=args.dtype,
        batch_size=args.batch_size,
        workers=args.workers,
        strict=args.strict,
    )
    pipeline.extract(
        pipeline.ExtractOptions(
            data=args.data,
            out=args.out,
            config=config,
            splits=args.splits,
            progress=not args.quiet,
            dev=_count(args.dev),
            test=_count(args.test),
            seed=args.seed,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
