"""The jobs behind the command line: train, evaluate, extract, build vocabularies, run the demo.

The application layer, as `open_clip_train` is to `open_clip`: each job composes the library
(data, models, similarity, evaluate, features, viz, checkpoints) with the training recipe,
prints what it does, and returns an exit status. The command line is argparse plus one call
into here, and tests call these functions directly. Every stage is cached or resumable:
features are not extracted twice, a finished model is not trained twice, and an interrupted
training run continues where it stopped.

Bad input raises a `scan.errors.ScanError` naming the file or field; the command line turns it
into one line and exit status 2.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scan.atomic import write_text_atomic
from scan.config import dump_config, load_config
from scan.data.precomp import PrecompSplit, read_lines
from scan.distributed import World
from scan.errors import ConfigError, DataError
from scan.evaluate.encode import check_split_fits_model, encode_split, score_split
from scan.evaluate.metrics import retrieval_metrics
from scan.evaluate.protocols import ensemble_scores, evaluate_scores
from scan.evaluate.report import format_markdown_table, format_table, write_json
from scan.models.loading import TrainedModel, load_model
from scan.runtime import resolve_device, resolve_precision

REPO_ROOT = Path(__file__).resolve().parents[3]  # the checkout, when run from one
DEFAULT_DEMO_DATA = "../shared/data/flickr8k-800"
DEMO_CONFIG = "demo_flickr8k"  # a packaged recipe (scan/configs/demo_flickr8k.yaml)

# The demo's table: display name -> (model folder, overrides on top of the demo recipe).
DEMO_VARIANTS = {
    "baseline (VSE++-style mean pooling)": ("baseline", ["model.architecture=vse"]),
    "SCAN t2i AVG": ("scan_t2i", ["model.direction=t2i", "model.lambda_softmax=4.0", "model.agg=Mean"]),
    "SCAN i2t AVG": ("scan_i2t", ["model.direction=i2t", "model.lambda_softmax=4.0", "model.agg=Mean"]),
}
DEMO_ENSEMBLE = "SCAN t2i + i2t (ensemble)"
# The text encoder choices, with the settings that go with each (applied after the model's own):
# MiniLM's contextual token vectors are much alike, and a sharper attention softmax (lambda_1 = 9,
# the paper's) ranked better on the dev split than the GRU's 4 (docs/RESULTS.md).
DEMO_TEXT_ENCODERS = {
    "gru": ["model.text_encoder=gru"],
    # The GRU with each vocabulary word's MiniLM-L6 vector as its starting word embedding.
    "gru-minilm-words": ["model.text_encoder=gru", "model.word_vectors=minilm", "model.word_dim=384"],
    # Frozen MiniLM trains no GRU, so the joint space can be the paper's 1024 wide instead of the
    # recipe's 256: +24.5 ensemble rsum in 3-fold cross-validation over the 700 non-test photos,
    # every fold (docs/RESULTS.md, "Pushing further").
    "minilm": [
        "model.text_encoder=minilm",
        "model.freeze_text=true",
        "model.lambda_softmax=9.0",
        "model.embed_dim=1024",
    ],
    "minilm-finetune": ["model.text_encoder=minilm", "model.freeze_text=false", "model.lambda_softmax=9.0"],
}
# The region choices (`scan demo --mode`): name -> extraction settings, as `scan extract` takes them.
DEMO_REGIONS: dict[str, dict[str, Any]] = {
    "grid": {"mode": "grid"},  # 6 x 6 cells of the EfficientNet-Lite0 map
    "grid-lite2": {"mode": "grid", "backbone": "lite2"},  # the same cells of the larger Lite2
    "pyramid": {"mode": "grid", "add_grids": (3, 1)},  # 6 x 6, 3 x 3 and the whole photo: 46 regions
    "bottomup": {"mode": "bottomup"},  # 36 detector boxes, as the paper's regions
    "bottomup-grid": {"mode": "bottomup", "add_grids": (6,)},  # the boxes and the 6 x 6 cells: 72 regions
}
# The demo's defaults: the best configuration measured on the dev split that fits its time budget
# (the detector's boxes and the 6 x 6 grid cells together, and frozen MiniLM; docs/RESULTS.md,
# "Choosing the demo's default").
DEMO_MODE = "bottomup-grid"
DEMO_TEXT_ENCODER = "minilm"


# ---------------------------------------------------------------------------------------------
# Training


def train(
    config_path: str | None, overrides: Sequence[str], *, resume: bool = False, print_config: bool = False
) -> dict[str, Any] | None:
    """`scan train`: one run from a recipe and overrides; the summary, or None for `print_config`."""
    config = load_config(config_path, list(overrides))
    if print_config:
        print(dump_config(config))
        return None
    from scan.distributed import finish, init_from_env
    from scan.train import recipe

    current = init_from_env(config.train.device)  # a world of one unless torchrun started us
    run = recipe.setup(config, resume=resume, current=current)
    if current.main:
        processes = f" x {current.size} processes ({current.backend})" if current.distributed else ""
        print(
            f"training {config.model.architecture} ({config.model.direction}) for {run.total_steps} steps "
            f"on {run.device}{processes}; run dir {run.run_dir}"
        )
    summary = recipe.train(run)
    recipe.cleanup(run)
    finish(current)
    if current.main:
        print(json.dumps(summary))
    return summary


def train_or_resume(
    config_path: str, features: Path, run_dir: Path, overrides: Sequence[str], *, device: str, progress: bool
) -> Path:
    """Train one model, resuming an interrupted run and skipping a finished one."""
    from scan import checkpoint as ckpt
    from scan.train import recipe

    config = load_config(
        config_path,
        [
            *overrides,
            f"data.path={features}",
            f"train.run_dir={run_dir}",
            f"train.device={device}",
            f"train.progress={str(progress).lower()}",
        ],
    )
    latest = run_dir / "checkpoints" / "latest"
    resume = latest.exists()
    run = recipe.setup(config, resume=resume)
    if resume:
        state = ckpt.read_state(latest)
        if state["step"] >= run.total_steps and not state.get("validation_pending", False):
            print(f"  {run_dir.name}: already trained ({state['step']} steps), reusing it")
            return run_dir
        print(f"  {run_dir.name}: resuming at step {state['step']} of {run.total_steps}")
    started = time.time()
    summary = recipe.train(run)
    print(
        f"  {run_dir.name}: {summary['steps']} steps in {time.time() - started:.0f} s, "
        f"best dev rsum {summary['best_rsum']:.1f}"
    )
    return run_dir


# ---------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class EvalOptions:
    """What `scan eval` was asked for (one field per command-line option)."""

    models: list[str]  # run directories or checkpoint folders
    data: str  # a precomputed folder, or a folder of photos with captions
    names: list[str] | None = None  # display names, one per model (default: folder names)
    split: str = "test"  # "all": every photo of a folder
    features_cache: str = ""  # where features of a photo folder go (default ~/.cache/scan/features)
    protocols: list[str] = field(default_factory=lambda: ["all"])
    ensemble: bool = False  # also the average of the models' score matrices
    device: str = "auto"
    backend: str = "auto"  # scoring path: auto, torch or triton
    scoring_precision: str = "auto"  # pairwise scores: auto, fp32 (exact), tf32, bf16
    batch_size: int = 128  # items per encoder batch
    json_path: str = ""  # also write the results here
    scores_dir: str = ""  # also write each model's (N, M) score matrix here, as NAME.npy


def evaluate(options: EvalOptions) -> dict[str, dict[str, Any]]:
    """`scan eval`: score each model (and their ensemble) on a split; prints and returns the table."""
    names = options.names or [Path(m).resolve().name for m in options.models]
    if len(names) != len(options.models):
        raise ConfigError(f"--name: give one per --model ({len(options.models)} models, {len(names)} names)")
    if options.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {options.batch_size}")
    from scan.distributed import finish, init_from_env

    current = init_from_env(options.device)  # a world of one unless torchrun started us
    device = resolve_device(options.device)
    if current.distributed and device.type == "cuda":
        device = torch.device("cuda", current.local_rank)
    models = [load_model(path, device=device) for path in options.models]
    matrices: dict[str, np.ndarray] = {}
    if current.distributed and not (Path(options.data) / f"{options.split}_ims.npy").exists():
        raise ConfigError("a distributed evaluation reads precomputed features: extract them first (scan extract)")
    folder, split_name = features_for_models(Path(options.data), options.split, models, cache=options.features_cache)
    split = PrecompSplit.open(folder, split_name)
    results = evaluate_models(
        models,
        names,
        split,
        protocols=options.protocols,
        ensemble=options.ensemble,
        device=device,
        backend=options.backend,
        scoring_precision=options.scoring_precision,
        batch_size=options.batch_size,
        current=current,
        matrices_out=matrices,
    )
    finish(current)  # every rank has the gathered matrices; rank 0 alone reports
    if not current.main:
        return results
    if options.scores_dir:
        from scan.atomic import atomic_open

        Path(options.scores_dir).mkdir(parents=True, exist_ok=True)
        for name, scores in matrices.items():
            with atomic_open(Path(options.scores_dir) / f"{name}.npy", "wb") as handle:
                np.save(handle, scores)
        print(f"wrote {len(matrices)} score matrices (images x captions) to {options.scores_dir}")
    print(format_table({k: {m: v for m, v in r.items() if m != "folds"} for k, r in results.items()}))
    if options.json_path:
        write_json(results, options.json_path)
        print(f"wrote {options.json_path}")
    return results


def evaluate_models(
    models: Sequence[TrainedModel],
    names: Sequence[str],
    split: PrecompSplit,
    *,
    protocols: Sequence[str],
    ensemble: bool,
    device: torch.device,
    backend: str = "auto",
    scoring_precision: str = "auto",
    batch_size: int = 128,
    current: World | None = None,
    matrices_out: dict[str, np.ndarray] | None = None,
) -> dict[str, dict[str, Any]]:
    """Score each model on the split; `{row name: metrics}` for every protocol.

    The encoders run at each model's own training precision; the pairwise scores at
    `scoring_precision` (`fp32` is exact), which is the caller's choice, not the model's.
    With several ranks (`current`), each scores its block of image rows (`score_split`).
    `matrices_out`, when given, receives each model's score matrix by name.
    """
    for trained in models:  # every model must fit the features before any of them is encoded
        check_split_fits_model(trained.config, split, model_folder=trained.folder)
    results: dict[str, dict[str, Any]] = {}
    matrices = []
    caption_image = None
    for trained, name in zip(models, names, strict=True):
        encoder_precision = resolve_precision(trained.config.train.precision, device)
        encoded = encode_split(
            trained.model, split, trained.tokenizer, device=device, precision=encoder_precision, batch_size=batch_size
        )
        scores = score_split(
            trained.model, encoded, device=device, current=current, backend=backend, precision=scoring_precision
        )  # (N, M)
        if matrices_out is not None:
            matrices_out[name] = scores
        caption_image = encoded.caption_image
        matrices.append(scores)
        for protocol in protocols:
            results[_row(name, protocol, protocols)] = evaluate_scores(
                scores, protocol=protocol, caption_image=caption_image
            )
    if ensemble and len(matrices) > 1:
        averaged = ensemble_scores(matrices)
        for protocol in protocols:
            results[_row("ensemble(" + "+".join(names) + ")", protocol, protocols)] = evaluate_scores(
                averaged, protocol=protocol, caption_image=caption_image
            )
    return results


def _row(name: str, protocol: str, protocols: Sequence[str]) -> str:
    return name if len(protocols) == 1 else f"{name} [{protocol}]"


def features_for_models(data: Path, split: str, models: Sequence[TrainedModel], *, cache: str = "") -> tuple[Path, str]:
    """The precomputed folder to read: `data` itself, or features extracted from its photos.

    Photos must be featurised exactly as the models' training photos were, so the extraction
    settings come from the models (`data.extract` in their config), and all models must agree.
    """
    if not data.exists():
        raise DataError("no such folder (expected precomputed features or photos with captions)", path=data)
    if (data / f"{split}_ims.npy").exists() or any(data.glob("*_ims.npy")):
        return data, split
    from scan.data.raw import read_image_folder
    from scan.features.extract import ExtractConfig, extract_dataset

    settings = [m.config.data.extract for m in models]
    if not settings[0]:
        raise ConfigError(
            f"{data} holds photos, but {models[0].folder} was trained on precomputed features of unknown "
            "provenance; extract features for it yourself (scan extract) and pass that folder"
        )
    if any(s != settings[0] for s in settings):
        raise ConfigError(
            "the models were trained on features extracted with different settings; evaluate them separately"
        )
    config = ExtractConfig.from_settings(settings[0])
    records = read_image_folder(data)
    if split == "all":
        for record in records:
            record.split = "test"
        split = "test"
    key = hashlib.sha256(json.dumps([str(data.resolve()), split, settings[0]], sort_keys=True).encode()).hexdigest()[
        :12
    ]
    out = Path(cache or Path.home() / ".cache" / "scan" / "features") / f"{data.resolve().name}-{key}"
    print(f"featurising {data} ({split}) as the models were trained -> {out}")
    extract_dataset(data, out, config, splits=[split], records=records)
    return out, split


# ---------------------------------------------------------------------------------------------
# Features and vocabularies


@dataclass
class ExtractOptions:
    """What `scan extract` was asked for."""

    data: str  # a folder of photos with dataset_*.json or captions.txt, or the file itself
    out: str  # output folder
    config: Any  # scan.features.extract.ExtractConfig
    splits: list[str] | None = None
    progress: bool = True
    dev: int | float | None = None  # captions.txt layout: dev images (a count, or a fraction < 1)
    test: int | float | None = None
    seed: int = 0


def extract(options: ExtractOptions) -> dict[str, Any]:
    """`scan extract`: photos -> the precomputed layout; prints one line per split.

    Under torchrun each process extracts a share of each split's photos, and the files written
    are the same as one process's (see `scan.features.extract`).
    """
    from scan.distributed import finish, init_from_env
    from scan.features.extract import extract_dataset

    options.config.validate()
    current = init_from_env("cpu")  # extraction runs on CPUs: Gloo; a world of one without torchrun
    summaries = extract_dataset(
        options.data,
        options.out,
        options.config,
        options.splits,
        progress=options.progress,
        dev=options.dev,
        test=options.test,
        seed=options.seed,
        current=current,
    )
    finish(current)
    if not current.main:
        return summaries
    for name, s in summaries.items():
        state = "up to date" if s.cached else f"{s.seconds_per_image:.3f} s/image"
        skipped = f", {len(s.failed)} unreadable image(s) left out" if s.failed else ""
        print(
            f"{name}: {s.num_images} images, {s.num_captions} captions, {s.num_regions} x {s.feature_dim} "
            f"features ({state}{skipped}) -> {s.out_folder}"
        )
    return summaries


def build_vocabulary_file(captions: Sequence[str], out: str, *, threshold: int) -> None:
    """`scan vocab build`: count words in training caption files, keep the frequent ones."""
    from scan.data.vocab import build_vocabulary, save_vocabulary

    if threshold < 1:
        raise ConfigError(f"--threshold must be at least 1, got {threshold}")
    lines = [line for path in captions for line in read_lines(path, what="caption")]
    vocab = build_vocabulary(lines, threshold=threshold)
    save_vocabulary(vocab, out)
    print(f"{len(vocab)} words (threshold {threshold}) from {len(lines)} captions -> {out}")


def check_vocabulary_file(vocab_path: str, captions: Sequence[str]) -> float:
    """`scan vocab check`: the share of caption tokens a vocabulary does not know."""
    from scan.data.vocab import load_vocabulary

    lines = [line for path in captions for line in read_lines(path, what="caption")]
    vocab = load_vocabulary(vocab_path)
    rate = vocab.unknown_rate(lines)
    print(
        f"{Path(vocab_path).name}: {len(vocab)} words; {100 * rate:.2f}% of the tokens of {len(lines)} captions are unknown"
    )
    return rate


# ---------------------------------------------------------------------------------------------
# The demo


@dataclass
class DemoOptions:
    """What `scan demo` was asked for."""

    data: str = DEFAULT_DEMO_DATA  # photos + captions.txt or dataset_*.json
    out: str = "reports/flickr8k-demo"  # report folder
    config: str = DEMO_CONFIG  # training recipe of the three models
    mode: str = DEMO_MODE  # regions: a key of DEMO_REGIONS
    text_encoder: str = DEMO_TEXT_ENCODER  # a key of DEMO_TEXT_ENCODERS
    device: str = "auto"
    attention_examples: int = 4  # test captions to draw attention for
    quiet: bool = False  # no progress bars
    overrides: list[str] = field(default_factory=list)  # recipe overrides, e.g. train.epochs=5


def resolve_data_folder(path: str) -> Path:
    """The data folder as given, else relative to the repository (the README runs from its root)."""
    given = Path(path).expanduser()
    if given.exists():
        return given
    beside_repo = REPO_ROOT / path
    if beside_repo.exists():
        return beside_repo
    raise DataError("no such folder of photos (give --data a folder with captions.txt or dataset_*.json)", path=path)


def extract_demo_features(data: Path, out: Path, *, mode: str, progress: bool) -> Path:
    """Region features of the demo's photos, in `out/features-{mode}` (cached, resumable)."""
    from scan.features.extract import ExtractConfig, extract_dataset

    features = out / f"features-{mode}"
    summaries = extract_dataset(data, features, ExtractConfig(**DEMO_REGIONS[mode]), progress=progress)
    for split, s in summaries.items():
        how = "up to date, reused" if s.cached else f"{s.seconds_per_image:.2f} s/image"
        failed = f", {len(s.failed)} unreadable photos left out" if s.failed else ""
        print(f"  {split}: {s.num_images} photos x {s.num_regions} regions x {s.feature_dim} dims ({how}{failed})")
    return features


def draw_attention_examples(
    model: TrainedModel, split: PrecompSplit, data: Path, out: Path, *, count: int
) -> list[Path]:
    """For a few test captions, each word's attention over the regions of its own photo."""
    from scan.data.raw import read_image_folder
    from scan.viz.attention import draw_word_attention

    if count <= 0:
        return []
    if split.boxes is None or split.image_ids is None:
        print("  (no boxes or image ids in the features: attention pictures skipped)")
        return []
    records = {record.filename: record for record in read_image_folder(data, check_files=False)}
    out.mkdir(parents=True, exist_ok=True)
    written = []
    device = next(model.model.parameters()).device
    step = max(1, split.num_images // count)
    for image in range(0, min(step * count, split.num_images), step):
        caption = split.captions[image * split.captions_per_image]
        ids = model.tokenizer.encode(caption)
        features = torch.from_numpy(np.asarray(split.image_features(image))).to(device)
        weights = model.model.attention_weights(features, torch.tensor(ids, device=device)).cpu().numpy()  # (W, R)
        filename = split.image_ids[image]
        # JPEG: photo panels, ~200-400 KB where a PNG of the same picture is several MB.
        path = out / f"attention_{image:03d}_{Path(filename).stem}.jpg"
        draw_word_attention(
            records[filename].path,
            split.image_boxes(image),
            model.tokenizer.tokens(ids),
            weights,
            path,
            caption=caption,
        )
        written.append(path)
    return written


def run_demo(options: DemoOptions) -> dict[str, dict[str, Any]]:
    """`scan demo`: photos -> features -> baseline, SCAN t2i, SCAN i2t -> table, curves, pictures."""
    if options.text_encoder not in DEMO_TEXT_ENCODERS:
        raise ConfigError(f"--text-encoder must be one of {sorted(DEMO_TEXT_ENCODERS)}, got {options.text_encoder!r}")
    if options.mode not in DEMO_REGIONS:
        raise ConfigError(f"--mode must be one of {sorted(DEMO_REGIONS)}, got {options.mode!r}")
    if options.attention_examples < 0:
        raise ConfigError(f"--attention-examples must be >= 0, got {options.attention_examples}")
    started = time.time()
    data = resolve_data_folder(options.data)
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(options.device)
    bars = not options.quiet and sys.stderr.isatty()
    # Validate the recipe and overrides before an hour of extraction, not after it.
    load_config(options.config, [*DEMO_TEXT_ENCODERS[options.text_encoder], *options.overrides])

    print(f"[1/5] region features ({options.mode}) from {data}")
    features = extract_demo_features(data, out, mode=options.mode, progress=not options.quiet)

    print("[2/5] training the baseline, SCAN t2i and SCAN i2t")
    # Non-default choices get their own model folders and report files, so runs sit side by side.
    suffix = "".join(
        f"-{choice}"
        for choice, default in ((options.mode, DEMO_MODE), (options.text_encoder, DEMO_TEXT_ENCODER))
        if choice != default
    )
    runs = {
        name: train_or_resume(
            options.config,
            features,
            out / "models" / f"{folder}{suffix}",
            [*overrides, *DEMO_TEXT_ENCODERS[options.text_encoder], *options.overrides],
            device=str(device),
            progress=bars,
        )
        for name, (folder, overrides) in DEMO_VARIANTS.items()
    }

    print("[3/5] evaluating on the test split")
    test = PrecompSplit.open(features, "test")
    results, matrices, models = {}, {}, {}
    caption_image = None
    for name, run_dir in runs.items():
        models[name] = load_model(run_dir, device=device)
        check_split_fits_model(models[name].config, test, model_folder=models[name].folder)
        encoded = encode_split(models[name].model, test, models[name].tokenizer, device=device)
        matrices[name] = score_split(models[name].model, encoded, device=device)
        caption_image = encoded.caption_image
        results[name] = retrieval_metrics(matrices[name], caption_image)
    scan_names = [name for name in DEMO_VARIANTS if name.startswith("SCAN")]
    results[DEMO_ENSEMBLE] = retrieval_metrics(ensemble_scores([matrices[n] for n in scan_names]), caption_image)

    print(f"[4/5] a search index of the {test.num_images} test photos")
    from scan.pipeline.search import DEMO_QUERY, index_split_photos

    index = index_split_photos(models["SCAN t2i AVG"], data, features, "test", out / f"index{suffix}")
    top = index.search(DEMO_QUERY, k=3)

    print("[5/5] report")
    from scan.viz.curves import plot_training_curves

    header = (
        f"# Flickr8k demo: {test.num_images} test images, {test.num_captions} captions "
        f"(chance: R@1 {100 / test.num_images:.1f}% text-to-image)\n\n"
    )
    write_text_atomic(out / f"results{suffix}.md", header + format_markdown_table(results) + "\n")
    write_json(results, out / f"results{suffix}.json")
    plot_training_curves(
        {name: run_dir / "metrics.jsonl" for name, run_dir in runs.items()}, out / f"training_curves{suffix}.png"
    )
    pictures = draw_attention_examples(
        models["SCAN t2i AVG"], test, data, out / f"attention{suffix}", count=options.attention_examples
    )
    print()
    print(format_table(results))
    print(
        f"\nreport: {out}/results{suffix}.md, results{suffix}.json, training_curves{suffix}.png, "
        f"{len(pictures)} attention pictures in {out}/attention{suffix}"
    )
    print(
        f"models: {out}/models/*  (score them on other photos with: scan eval --model {out}/models/scan_t2i{suffix} "
        "--data FOLDER)"
    )
    print(f'\nsearch the test photos ("{DEMO_QUERY}": {", ".join(index.photo_path(h).name for h in top)}, ...):')
    print(f'  scan search {out}/index{suffix} "{DEMO_QUERY}"')
    print("or in a browser, with where each word looked in each photo (then open http://127.0.0.1:8000):")
    print(f"  scan serve {out}/index{suffix}")
    print(f"total time {time.time() - started:.0f} s")
    return results


__all__ = [
    "DemoOptions",
    "EvalOptions",
    "ExtractOptions",
    "build_vocabulary_file",
    "check_vocabulary_file",
    "draw_attention_examples",
    "evaluate",
    "evaluate_models",
    "extract",
    "features_for_models",
    "resolve_data_folder",
    "run_demo",
    "train",
    "train_or_resume",
]
