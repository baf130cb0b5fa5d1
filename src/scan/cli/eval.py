"""`scan eval`: score trained models on a split and report recall with the papers' protocols.

Several `--model`s are evaluated one by one and, with `--ensemble`, together by averaging their
score matrices (the paper's best rows average a t2i and an i2t model).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scan.cli.common import report_user_errors
from scan.config import ConfigError
from scan.data.precomp import PrecompSplit
from scan.evaluate.encode import encode_split, score_split
from scan.evaluate.protocols import PROTOCOLS, ensemble_scores, evaluate_scores
from scan.evaluate.report import format_table, write_json
from scan.models.loading import load_model
from scan.train.devices import resolve_device, resolve_precision


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scan eval",
        description="Evaluate trained models: R@1/5/10, median and mean rank both ways, and rsum.",
        epilog=(
            "protocols: 1k (the whole split; Flickr30K 1K test), coco1k (mean of 5 folds of 1000 images),\n"
            "           coco5k (all 5000 COCO test images), all (the whole split, any size)\n"
            "examples:\n"
            "  scan eval --model runs/f30k_t2i --data data/f30k_precomp --split test\n"
            "  scan eval --model runs/coco_t2i --model runs/coco_i2t --ensemble --data data/coco_precomp \\\n"
            "            --split testall --protocol coco1k --protocol coco5k --json results.json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", action="append", required=True, help="run directory or checkpoint folder (repeatable)")
    parser.add_argument("--name", action="append", help="a display name per --model (default: the folder name)")
    parser.add_argument(
        "--data",
        required=True,
        help="folder of the precomputed layout, or of photos (captions.txt or dataset_*.json): "
        "photos are featurised as the models' training features were, and cached",
    )
    parser.add_argument("--split", default="test", help="split to evaluate (default: test); 'all' takes every photo of a folder")
    parser.add_argument("--features-cache", default="", help="where features of a photo folder go (default: ~/.cache/scan/features)")
    parser.add_argument("--protocol", action="append", choices=PROTOCOLS, help="repeatable (default: all)")
    parser.add_argument("--ensemble", action="store_true", help="also evaluate the average of the models' scores")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "triton"), help="scoring path (auto: the fastest here)")
    parser.add_argument(
        "--scoring-precision",
        default="auto",
        choices=("auto", "fp32", "tf32", "bf16"),
        help="pairwise scores: auto (bf16 on the Triton path, else fp32), fp32 for exact float32",
    )
    parser.add_argument("--batch-size", type=int, default=128, help="items per encoder batch")
    parser.add_argument("--json", help="also write the results here (atomically)")
    return parser


def evaluate_models(models, names, split: PrecompSplit, *, protocols, ensemble, device, backend, batch_size, precision="auto"):
    """Score each model on the split; returns `{row name: metrics}` for every protocol."""
    results: dict[str, dict] = {}
    matrices = []
    caption_image = None
    for trained, name in zip(models, names):
        precision = resolve_precision(trained.config.train.precision, device)
        encoded = encode_split(trained.model, split, trained.tokenizer, device=device, precision=precision, batch_size=batch_size)
        scores = score_split(trained.model, encoded, device=device, backend=backend, precision=precision)  # (N, M)
        caption_image = encoded.caption_image
        matrices.append(scores)
        for protocol in protocols:
            results[_row(name, protocol, protocols)] = evaluate_scores(scores, protocol=protocol, caption_image=caption_image)
    if ensemble and len(matrices) > 1:
        averaged = ensemble_scores(matrices)
        for protocol in protocols:
            results[_row("ensemble(" + "+".join(names) + ")", protocol, protocols)] = evaluate_scores(
                averaged, protocol=protocol, caption_image=caption_image
            )
    return results


def features_for_models(data: Path, split: str, models, *, cache: str = "") -> tuple[Path, str]:
    """The precomputed folder to read: `data` itself, or features extracted from its photos.

    Photos must be featurised exactly as the models' training photos were, so the extraction
    settings come from the models (`data.extract` in their config), and all models must agree.
    """
    if (data / f"{split}_ims.npy").exists() or not data.exists() or (data / "train_ims.npy").exists():
        return data, split
    import hashlib
    import json

    from scan.data.raw import read_image_folder
    from scan.features.extract import ExtractConfig, extract_dataset

    settings = [m.config.data.extract for m in models]
    if not settings[0]:
        raise ConfigError(
            f"{data} holds photos, but {models[0].folder} was trained on precomputed features of unknown "
            "provenance; extract features for it yourself (scan extract) and pass that folder"
        )
    if any(s != settings[0] for s in settings):
        raise ConfigError("the models were trained on features extracted with different settings; evaluate them separately")
    known = set(ExtractConfig.__dataclass_fields__)
    config = ExtractConfig(**{k: v for k, v in settings[0].items() if k in known})
    records = read_image_folder(data)
    if split == "all":
        for record in records:
            record.split = "test"
        split = "test"
    key = hashlib.sha256(json.dumps([str(data.resolve()), split, settings[0]], sort_keys=True).encode()).hexdigest()[:12]
    out = Path(cache or Path.home() / ".cache" / "scan" / "features") / f"{data.resolve().name}-{key}"
    print(f"featurising {data} ({split}) as the models were trained -> {out}")
    extract_dataset(data, out, config, splits=[split], records=records)
    return out, split


def _row(name: str, protocol: str, protocols: list[str]) -> str:
    return name if len(protocols) == 1 else f"{name} [{protocol}]"


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    protocols = args.protocol or ["all"]
    names = args.name or [Path(m).resolve().name for m in args.model]
    if len(names) != len(args.model):
        print("scan eval: give one --name per --model", file=sys.stderr)
        return 2
    device = resolve_device(args.device)
    models = [load_model(path, device=device) for path in args.model]
    folder, split_name = features_for_models(Path(args.data), args.split, models, cache=args.features_cache)
    split = PrecompSplit.open(folder, split_name)
    results = evaluate_models(
        models, names, split, protocols=protocols, ensemble=args.ensemble, device=device, backend=args.backend, batch_size=args.batch_size,
        precision=args.scoring_precision,
    )
    print(format_table({k: {m: v for m, v in r.items() if m != "folds"} for k, r in results.items()}))
    if args.json:
        write_json(results, args.json)
        print(f"wrote {args.json}")
    return 0
