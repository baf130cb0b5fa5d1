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
import sys
import time
from pathlib import Path

import torch

from scan.atomic import write_text_atomic
from scan.cli.common import report_user_errors
from scan.config import load_config
from scan.data.precomp import PrecompSplit
from scan.evaluate.encode import encode_split, score_split
from scan.evaluate.metrics import retrieval_metrics
from scan.evaluate.protocols import ensemble_scores
from scan.evaluate.report import format_markdown_table, format_table, write_json
from scan.models.loading import TrainedModel, load_model
from scan.train import checkpoint as ckpt
from scan.train import recipe
from scan.train.devices import resolve_device

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_DATA = "../shared/data/flickr8k-800"
DEMO_CONFIG = REPO_ROOT / "configs" / "demo_flickr8k.yaml"

# The three models of the table: name -> overrides on top of the demo recipe.
VARIANTS = {
    "baseline (VSE++-style mean pooling)": ("baseline", ["model.architecture=vse"]),
    "SCAN t2i AVG": ("scan_t2i", ["model.direction=t2i", "model.lambda_softmax=4.0", "model.agg=Mean"]),
    "SCAN i2t AVG": ("scan_i2t", ["model.direction=i2t", "model.lambda_softmax=4.0", "model.agg=Mean"]),
}
ENSEMBLE = "SCAN t2i + i2t (ensemble)"


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
            "  scan demo --mode grid                       # 6x6 grid regions instead of detector boxes"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", default=DEFAULT_DATA, help=f"photos + captions.txt or dataset_*.json (default {DEFAULT_DATA})")
    parser.add_argument("--out", default="reports/flickr8k-demo", help="report folder (default reports/flickr8k-demo)")
    parser.add_argument("--config", default=str(DEMO_CONFIG), help="training recipe for the three models")
    parser.add_argument("--mode", choices=("bottomup", "grid"), default="bottomup", help="region boxes: detector or grid")
    parser.add_argument(
        "--text-encoder",
        choices=("gru", "minilm", "minilm-finetune"),
        default="gru",
        help="gru: trained from scratch (default); minilm: pretrained MiniLM-L6, frozen; minilm-finetune: MiniLM trained too",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument("--attention-examples", type=int, default=4, help="test captions to draw attention for")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", metavar="section.field=value", help="recipe overrides, e.g. train.epochs=5")
    return parser


def _resolve_data(path: str) -> Path:
    """The data folder as given, else relative to the repository (the README runs from its root)."""
    given = Path(path).expanduser()
    if given.exists():
        return given
    beside_repo = REPO_ROOT / path
    if beside_repo.exists():
        return beside_repo
    raise FileNotFoundError(f"{path}: no such folder of photos (give --data a folder with captions.txt or dataset_*.json)")


def extract_features(data: Path, out: Path, *, mode: str, progress: bool) -> Path:
    from scan.features.extract import ExtractConfig, extract_dataset

    features = out / f"features-{mode}"
    threads = torch.get_num_threads()
    try:
        summaries = extract_dataset(data, features, ExtractConfig(mode=mode), progress=progress)
    finally:
        torch.set_num_threads(threads)  # extraction runs one thread per image worker; training wants them all
    for split, s in summaries.items():
        how = "up to date, reused" if s.cached else f"{s.seconds_per_image:.2f} s/image"
        failed = f", {len(s.failed)} unreadable photos left out" if s.failed else ""
        print(f"  {split}: {s.num_images} photos x {s.num_regions} regions x {s.feature_dim} dims ({how}{failed})")
    return features


def train_variant(config_path: str, features: Path, run_dir: Path, overrides: list[str], *, device: str, progress: bool) -> Path:
    """Train one model, resuming an interrupted run and skipping a finished one."""
    config = load_config(
        config_path, [*overrides, f"data.path={features}", f"train.run_dir={run_dir}", f"train.device={device}", f"train.progress={str(progress).lower()}"]
    )
    latest = run_dir / "checkpoints" / "latest"
    resume = latest.exists()
    if resume:
        state = ckpt.read_state(latest)
        run = recipe.setup(config, resume=True)
        if state["step"] >= run.total_steps:
            print(f"  {run_dir.name}: already trained ({state['step']} steps), reusing it")
            return run_dir
        print(f"  {run_dir.name}: resuming at step {state['step']} of {run.total_steps}")
    else:
        run = recipe.setup(config)
    started = time.time()
    summary = recipe.train(run)
    print(f"  {run_dir.name}: {summary['steps']} steps in {time.time() - started:.0f} s, best dev rsum {summary['best_rsum']:.1f}")
    return run_dir


def draw_attention_examples(model: TrainedModel, split: PrecompSplit, data: Path, out: Path, *, count: int) -> list[Path]:
    """For a few test captions, each word's attention over the regions of its own photo."""
    from scan.data.raw import read_image_folder
    from scan.viz.attention import draw_word_attention

    records = {record.filename: record for record in read_image_folder(data, check_files=False)}
    if split.boxes is None or split.image_ids is None:
        print("  (no boxes or image ids in the features: attention pictures skipped)")
        return []
    out.mkdir(parents=True, exist_ok=True)
    written = []
    device = next(model.model.parameters()).device
    step = max(1, split.num_images // count)
    for image in range(0, step * count, step):
        caption_index = image * split.captions_per_image
        caption = split.captions[caption_index]
        ids = model.tokenizer.encode(caption)
        features = torch.from_numpy(split.image_features(image)).to(device)
        weights = model.model.attention_weights(features, torch.tensor(ids, device=device)).cpu().numpy()  # (W, R)
        words = _token_strings(model.tokenizer, ids)
        filename = split.image_ids[image]
        path = out / f"attention_{image:03d}_{Path(filename).stem}.png"
        draw_word_attention(records[filename].path, split.image_boxes(image), words, weights, path, caption=caption)
        written.append(path)
    return written


def _token_strings(tokenizer, ids: list[int]) -> list[str]:
    if hasattr(tokenizer, "vocab"):
        return tokenizer.vocab.decode(ids)
    return tokenizer.convert_ids_to_tokens(ids)


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.time()
    data = _resolve_data(args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    progress = not args.quiet and sys.stderr.isatty()

    print(f"[1/4] region features ({args.mode}) from {data}")
    features = extract_features(data, out, mode=args.mode, progress=not args.quiet)

    print("[2/4] training the baseline, SCAN t2i and SCAN i2t")
    text = {
        "gru": ["model.text_encoder=gru"],
        "minilm": ["model.text_encoder=minilm", "model.freeze_text=true"],
        "minilm-finetune": ["model.text_encoder=minilm", "model.freeze_text=false"],
    }[args.text_encoder]
    # Non-default choices get their own model folders and report files, so runs sit side by side.
    suffix = "".join(f"-{choice}" for choice, default in ((args.mode, "bottomup"), (args.text_encoder, "gru")) if choice != default)
    runs = {}
    for name, (folder, overrides) in VARIANTS.items():
        runs[name] = train_variant(
            args.config,
            features,
            out / "models" / f"{folder}{suffix}",
            [*text, *overrides, *args.overrides],
            device=str(device),
            progress=progress,
        )

    print("[3/4] evaluating on the test split")
    test = PrecompSplit.open(features, "test")
    results, matrices, models = {}, {}, {}
    for name, run_dir in runs.items():
        models[name] = load_model(run_dir, device=device)
        encoded = encode_split(models[name].model, test, models[name].tokenizer, device=device)
        matrices[name] = score_split(models[name].model, encoded, device=device)
        results[name] = retrieval_metrics(matrices[name], encoded.caption_image)
    scan_names = [name for name in VARIANTS if name.startswith("SCAN")]
    results[ENSEMBLE] = retrieval_metrics(ensemble_scores([matrices[n] for n in scan_names]), encoded.caption_image)

    print("[4/4] report")
    from scan.viz.curves import plot_training_curves

    table = format_table(results)
    header = (
        f"# Flickr8k demo: {test.num_images} test images, {test.num_captions} captions "
        f"(chance: R@1 {100 / test.num_images:.1f}% text-to-image)\n\n"
    )
    write_text_atomic(out / f"results{suffix}.md", header + format_markdown_table(results) + "\n")
    write_json(results, out / f"results{suffix}.json")
    plot_training_curves({name: run_dir / "metrics.jsonl" for name, run_dir in runs.items()}, out / f"training_curves{suffix}.png")
    pictures = draw_attention_examples(
        models["SCAN t2i AVG"], test, data, out / f"attention{suffix}", count=args.attention_examples
    )
    print()
    print(table)
    print(
        f"\nreport: {out}/results{suffix}.md, results{suffix}.json, training_curves{suffix}.png, "
        f"{len(pictures)} attention pictures in {out}/attention{suffix}"
    )
    print(f"models: {out}/models/*  (score them on other photos with: scan eval --model {out}/models/scan_t2i --data FOLDER)")
    print(f"total time {time.time() - started:.0f} s")
    return 0
