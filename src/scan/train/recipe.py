"""The training recipe: setup, train, validate, save, as flat functions (paper section 4.1).

Adam with step decay, gradient-norm clipping, the hardest-negative triplet loss (plus the same
loss on the global head's cosines, weighted by `train.global_loss_weight`, when the model has
that first-stage head), validation rsum at the end of every epoch (and every N steps if asked),
the best checkpoint kept by rsum.
Everything a run needs to continue is checkpointed: model, optimizer, step, epoch, position
inside the epoch, best rsum and RNG state, so `scan train --resume` after a crash or Ctrl-C
finishes with exactly the steps an uninterrupted run takes. The run directory holds the
resolved `config.yaml`, `vocab.json`, `metrics.jsonl` and `checkpoints/{latest,best}`.

A validation that was cut short (Ctrl-C or SIGTERM while it ran) is marked pending in the
checkpoint and redone first on resume, so `best` always points at the best checkpoint. One
process trains a run directory at a time: `train` holds the folder's lock.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import signal
import time
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from scan import checkpoint as ckpt
from scan.atomic import FolderLock, write_text_atomic
from scan.config import Config, config_from_dict, dump_config, fields_saved_before_they_existed
from scan.data.collate import CaptionDataset, collate_captions
from scan.data.precomp import PrecompSplit
from scan.distributed import World, world
from scan.errors import ConfigError
from scan.evaluate.encode import encode_split, score_split
from scan.evaluate.metrics import retrieval_metrics
from scan.features.extract import extraction_settings
from scan.losses import triplet_loss
from scan.models.scan import SCAN, build_model
from scan.models.tokenizers import build_tokenizer
from scan.runtime import autocast, resolve_device, resolve_precision
from scan.train.parallel import ShardedBatches, TrainingForward, batches_per_epoch
from scan.train.schedule import learning_rate

# Fields that may differ between a run and its resumption without changing what is computed.
# Fields that setup fills in from the data, so a fresh config does not know them yet.
DERIVED_FIELDS = {"model.vocab_size", "model.image_dim", "data.extract"}
RESUMABLE_FIELDS = {
    "train.device",
    "train.progress",
    "train.epochs",
    "train.max_steps",
    "data.workers",
    "train.scoring_backend",
    "train.scoring_precision",
}
# Fields that name files: `runs/x`, `runs/x/` and `/home/me/runs/x` are the same run directory.
PATH_FIELDS = {"train.run_dir", "data.path", "data.vocab"}


@dataclass
class Run:
    """Everything a training run holds; `setup` builds it, `train` advances it."""

    config: Config
    run_dir: Path
    device: torch.device
    precision: str
    model: SCAN
    optimizer: torch.optim.Optimizer
    tokenizer: Any
    train_set: CaptionDataset
    val_split: PrecompSplit | None
    steps_per_epoch: int
    total_steps: int
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # current epoch (0-based)
    batch_in_epoch: int = 0  # batches of the current epoch already trained on
    best_rsum: float = -math.inf
    best_step: int = -1
    validation_pending: bool = False  # a validation was interrupted; resume redoes it first
    history: list[dict[str, Any]] = field(default_factory=list)
    world: World = field(default_factory=World)  # this process among those torchrun started
    trainer: torch.nn.Module | None = None  # the DDP-wrapped training forward, when several processes train

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"


def _log(run: Run, record: dict[str, Any]) -> None:
    """Append one JSON line to metrics.jsonl (flushed: a crash loses at most the current line)."""
    run.history.append(record)
    if not run.world.main:
        return
    with open(run.run_dir / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()


def _same_path(a: str, b: str) -> bool:
    return a == b or (bool(a) and bool(b) and Path(a).expanduser().resolve() == Path(b).expanduser().resolve())


def _config_differences(saved: Config, wanted: Config, *, predated: AbstractSet[str] = frozenset()) -> list[str]:
    """What `wanted` changes in `saved`, beyond what a resumption may change.

    Args:
        predated: fields the saved config was written without (it predates them); the run keeps
            the value it was trained with, whatever the wanted config's new default says.
    """
    out = []
    saved_values = saved.to_dict()
    for section, values in wanted.to_dict().items():
        for key, value in values.items():
            dotted, old = f"{section}.{key}", saved_values[section][key]
            if dotted in RESUMABLE_FIELDS | DERIVED_FIELDS or dotted in predated or old == value:
                continue
            if dotted in PATH_FIELDS and _same_path(old, value):
                continue
            out.append(f"{dotted}: {old!r} -> {value!r}")
    return out


def setup(config: Config, *, resume: bool = False, current: World | None = None) -> Run:
    """Build data, vocabulary, model and optimizer; restore the latest checkpoint if resuming.

    Under torchrun (`current` has several ranks) every rank builds the same model and reads the
    same data; rank 0 alone writes into the run directory and holds its lock.
    """
    current = current or world()
    run_dir = Path(config.train.run_dir)
    latest = run_dir / "checkpoints" / "latest"
    if latest.exists() and not resume:
        raise ConfigError(
            f"{run_dir} already holds a run (checkpoints/latest); pass --resume to continue it, "
            "or choose another train.run_dir"
        )
    if resume:
        if not latest.exists():
            raise ConfigError(f"--resume: {run_dir} has no checkpoint to resume (checkpoints/latest is missing)")
        saved_values = ckpt.read_state(latest)["config"]
        saved = config_from_dict(saved_values, source=str(latest / ckpt.STATE_FILE))
        # A run saved before a field existed resumes with the value it was trained with (an old
        # run has no global head, whatever the new default), and is not told its config changed.
        differences = _config_differences(saved, config, predated=fields_saved_before_they_existed(saved_values))
        if differences:
            raise ConfigError(
                "--resume with a different config would not continue the same run: " + "; ".join(differences)
            )
        for key in RESUMABLE_FIELDS | {"train.run_dir"}:  # the run continues where it now lies
            section, name = key.split(".")
            setattr(getattr(saved, section), name, getattr(getattr(config, section), name))
        config = saved
    if current.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    # Everything below writes into the run directory: not while another process trains it.
    with FolderLock(run_dir, purpose="scan train") if current.main else contextlib.nullcontext():
        if not resume and current.main:  # lines of an earlier start that died before its first checkpoint: a lost run
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        torch.manual_seed(config.train.seed)

        if not config.data.path:
            raise ConfigError("data.path is empty: point it at a folder of {split}_ims.npy and {split}_caps.txt")
        train_split = PrecompSplit.open(config.data.path, config.data.train_split)
        val_split = PrecompSplit.open(config.data.path, config.data.val_split) if config.data.val_split else None

        vocab_path = run_dir / ckpt.VOCAB_FILE
        tokenizer = build_tokenizer(
            config,
            train_captions=train_split.captions,
            vocab_file=config.data.vocab or (str(vocab_path) if resume else ""),
        )
        if current.main:
            tokenizer.save(vocab_path)
        config.model.vocab_size = len(tokenizer)
        config.model.image_dim = train_split.feature_dim
        # Features made by `scan extract` record how; remember it, to featurise new photos the same way.
        config.data.extract = extraction_settings(config.data.path, config.data.train_split) or {}

        device = resolve_device(config.train.device)
        if current.distributed and device.type == "cuda":  # one GPU per process: its LOCAL_RANK's
            device = torch.device("cuda", current.local_rank)
        precision = resolve_precision(config.train.precision, device)
        model = build_model(config.model).to(device)
        if not resume and config.model.text_encoder == "gru" and config.model.word_vectors == "minilm":
            from scan.models.word_vectors import initialise_word_embedding

            initialise_word_embedding(model.text_encoder, tokenizer)
        model.scoring_backend = config.train.scoring_backend
        model.scoring_precision = config.train.scoring_precision
        optimizer = torch.optim.Adam(_parameter_groups(model), lr=config.train.lr)

        train_set = CaptionDataset(train_split, tokenizer)
        remembered = _remember_frozen_text(model, train_set, val_split, tokenizer)
        if remembered and current.main:
            print(f"frozen text encoder: the states of {remembered} captions computed once, reused every epoch")
        steps_per_epoch = batches_per_epoch(len(train_set), config.data.batch_size, current.size)
        total_steps = steps_per_epoch * config.train.epochs
        if config.train.max_steps > 0:
            total_steps = min(total_steps, config.train.max_steps)
        run = Run(
            config=config,
            run_dir=run_dir,
            device=device,
            precision=precision,
            model=model,
            optimizer=optimizer,
            tokenizer=tokenizer,
            train_set=train_set,
            val_split=val_split,
            steps_per_epoch=steps_per_epoch,
            total_steps=total_steps,
            world=current,
        )
        if resume:
            _restore(run, latest)
        if current.main:
            write_text_atomic(run_dir / ckpt.CONFIG_FILE, dump_config(config))
    if current.distributed:
        from torch.nn.parallel import DistributedDataParallel

        forward = TrainingForward(model, current, cross_rank_negatives=config.train.cross_rank_negatives)
        # Constructing DDP broadcasts rank 0's weights: every rank starts from the same model.
        run.trainer = DistributedDataParallel(forward, device_ids=[device.index] if device.type == "cuda" else None)
    return run


# A learned lambda_1 trains at this multiple of the learning rate. Adam moves a parameter by about
# the learning rate per step whatever its gradient's size, so at 2e-4 over the demo's ~1,400 steps
# log(lambda_1) could move by 0.3 at most (9 -> 12): too little to find its own value. At 10x it can
# reach 4 or 20 from 9, the range measured by hand (docs/RESULTS.md).
LEARNED_LAMBDA_LR_SCALE = 10.0


def _parameter_groups(model: torch.nn.Module) -> list[dict[str, Any]]:
    """The optimizer's groups: every trainable weight, and a learned lambda_1 at its own scale."""
    log_lambda = getattr(model, "log_lambda", None)
    weights = [p for p in model.parameters() if p.requires_grad and p is not log_lambda]
    groups: list[dict[str, Any]] = [{"params": weights, "lr_scale": 1.0}]
    if log_lambda is not None:
        groups.append({"params": [log_lambda], "lr_scale": LEARNED_LAMBDA_LR_SCALE})
    return groups


def _remember_frozen_text(model: torch.nn.Module, train_set: CaptionDataset, val_split: Any, tokenizer: Any) -> int:
    """Let a frozen pretrained text encoder compute each training and validation caption once.

    (`MiniLMTextEncoder.remember`; a text encoder that is trained, or has no such method, is
    left as it is.) Returns how many captions it remembers.
    """
    remember = getattr(getattr(model, "text_encoder", None), "remember", None)
    if remember is None:
        return 0
    captions: list[Any] = list(train_set.token_ids)
    if val_split is not None:
        captions += [tokenizer.encode(caption) for caption in val_split.captions]
    return int(remember(captions))


def _parse_log_line(line: str) -> dict[str, Any] | None:
    """One metrics.jsonl record; None for an empty line or the torn last line of a killed run."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def _restore(run: Run, folder: Path) -> None:
    state = ckpt.read_state(folder)
    ckpt.load_weights(folder, run.model)
    ckpt.load_optimizer(folder, run.optimizer, state)
    ckpt.set_rng_state(state["rng"])  # one process; several reseed at every step (_seed_step)
    saved_world = int(state.get("world_size", 1))
    if saved_world != run.world.size and run.world.main:
        print(
            f"scan: warning: {folder} was trained by {saved_world} process(es), resumed by {run.world.size}: "
            "it continues, but not with the exact updates the original world size would have made"
        )
    run.step, run.epoch, run.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
    run.best_rsum, run.best_step = state["best_rsum"], state["best_step"]
    run.validation_pending = bool(state.get("validation_pending", False))
    # Lines logged after this checkpoint belong to the lost part of the run: drop them.
    log = run.run_dir / "metrics.jsonl"
    if log.exists():
        records = [_parse_log_line(line) for line in log.read_text(encoding="utf-8", errors="replace").splitlines()]
        kept = [r for r in records if r is not None and r.get("step", 0) <= run.step]
        write_text_atomic(log, "".join(json.dumps(r) + "\n" for r in kept))
        run.history = kept


def save(run: Run, *, is_best: bool = False) -> Path:
    """Checkpoint the run as `checkpoints/step-N`, point `latest` (and `best`) at it, prune the rest."""
    state = {
        "step": run.step,
        "epoch": run.epoch,
        "batch_in_epoch": run.batch_in_epoch,
        "best_rsum": run.best_rsum,
        "best_step": run.best_step,
        "validation_pending": run.validation_pending,
        "rng": ckpt.rng_state(),
        "world_size": run.world.size,
        "config": run.config.to_dict(),
    }
    folder = ckpt.save_checkpoint(
        run.checkpoint_dir / f"step-{run.step:08d}",
        model=run.model,
        optimizer=run.optimizer,
        state=state,
        config_yaml=dump_config(run.config),
        vocab_json=run.tokenizer.to_json(),
    )
    # `best` before `latest`: a kill between the two leaves `latest` at the previous checkpoint,
    # whose resumption redoes this step and points `best` again. The other order could leave a
    # `latest` that records this step as best while `best` still names an older one.
    if is_best:
        ckpt.point_link(run.checkpoint_dir / "best", folder)
    ckpt.point_link(run.checkpoint_dir / "latest", folder)
    keep = {p.resolve() for p in (run.checkpoint_dir / "latest", run.checkpoint_dir / "best") if p.exists()}
    for old in run.checkpoint_dir.glob("step-*"):
        if old.resolve() not in keep:
            shutil.rmtree(old)
    return folder


def validate(run: Run) -> dict[str, float]:
    """Recall metrics on the validation split (its first `val_max_images` images)."""
    if run.val_split is None:
        raise ConfigError("data.val_split is empty: there is no validation split to validate on")
    encoded = encode_split(
        run.model,
        run.val_split,
        run.tokenizer,
        device=run.device,
        precision=run.precision,
        batch_size=run.config.data.batch_size,
        max_images=run.config.data.val_max_images,
    )
    scores = score_split(run.model, encoded, device=run.device)
    run.model.train()
    return retrieval_metrics(scores, encoded.caption_image)


def _validate_and_save(run: Run) -> None:
    """Validate (if there is a validation split), then checkpoint; `best` follows the rsum.

    `validation_pending` is set for as long as the validation runs: an interrupt inside it saves
    a checkpoint that says so, and the resumed run validates that step before training on.
    With several processes, rank 0 validates and saves while the others wait for it.
    """
    if not run.world.main:
        run.world.barrier()
        return
    try:
        _validate_and_save_main(run)
    finally:
        run.world.barrier()


def _validate_and_save_main(run: Run) -> None:
    if run.val_split is None:
        save(run)
        return
    run.validation_pending = True
    metrics = validate(run)
    run.validation_pending = False
    is_best = metrics["rsum"] > run.best_rsum
    if is_best:
        run.best_rsum, run.best_step = metrics["rsum"], run.step
    _log(run, {"step": run.step, "epoch": run.epoch, "split": run.config.data.val_split, **metrics})
    save(run, is_best=is_best)


def _seed_step(run: Run) -> None:
    """With several processes, dropout's draws are a function of (seed, step, rank).

    So a resumed run draws what the uninterrupted one drew on every rank, with no per-rank RNG
    state to checkpoint; one process keeps its checkpointed stream (and its exact old results).
    """
    if run.world.distributed:
        torch.manual_seed((run.config.train.seed * 1_000_003 + run.step) * 4099 + run.world.rank)


def _train_step(run: Run, batch) -> dict[str, float]:
    batch = batch.to(run.device)
    _seed_step(run)
    image_ids = batch.image_ids
    with autocast(run.device, run.precision):
        # One encoding of the batch gives both score matrices; global_scores is None without a head.
        if run.trainer is not None:
            scores, global_scores, image_ids = run.trainer(batch.images, batch.tokens, batch.lengths, batch.image_ids)
        else:
            scores, global_scores = run.model.forward_with_global(batch.images, batch.tokens, batch.lengths)  # (B, B)
    # Hardest negatives alone give little signal while the embedding is still random, which
    # matters on small data sets; the sum over negatives first warms it up.
    max_violation = run.config.train.max_violation and run.epoch >= run.config.train.sum_negatives_epochs
    if run.config.train.negatives == "diagonal":
        image_ids = None  # the original objective: another caption of the same image is a negative
    terms = triplet_loss(
        scores.float(), margin=run.config.train.margin, max_violation=max_violation, image_ids=image_ids
    )
    if global_scores is not None:
        # The first stage of two-stage search ranks by these cosines: the same hinge trains them,
        # with the same negatives, so the shortlist agrees with what SCAN re-ranks.
        global_terms = triplet_loss(
            global_scores.float(),
            margin=run.config.train.margin,
            max_violation=max_violation,
            image_ids=image_ids,
        )
        terms["global_loss"] = global_terms["loss"].detach()
        terms["scan_loss"] = terms["loss"].detach()
        terms["loss"] = terms["loss"] + run.config.train.global_loss_weight * global_terms["loss"]
    run.optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    grad_norm = torch.tensor(0.0)
    if run.config.train.grad_clip > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.config.train.grad_clip)
    run.optimizer.step()
    return {name: value.item() for name, value in terms.items()} | {"grad_norm": float(grad_norm)}


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def train(run: Run, *, on_step: Callable[[Run], None] | None = None) -> dict[str, Any]:
    """Train until `total_steps`; Ctrl-C or SIGTERM checkpoints first, so `--resume` loses nothing.

    Args:
        on_step: called after every optimizer step (tests use it to interrupt a run).
    """
    config = run.config
    every = config.train.val_every_steps
    checkpoint_every = config.train.checkpoint_every_steps
    lock = FolderLock(run.run_dir, purpose="scan train").acquire() if run.world.main else None
    previous_handler = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    show = config.train.progress and run.world.main
    bar = tqdm(total=run.total_steps, initial=run.step, disable=not show, desc="train", unit="step")
    started = time.time()
    try:
        if run.validation_pending:  # the run was stopped inside a validation: finish it first
            _validate_and_save(run)
        run.model.train()
        while run.step < run.total_steps:
            lr = learning_rate(
                base=config.train.lr,
                epoch=run.epoch,
                decay_epochs=config.train.lr_decay_epochs,
                decay=config.train.lr_decay,
            )
            for group in run.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            batches = ShardedBatches(
                num_items=len(run.train_set),
                batch_size=config.data.batch_size,
                seed=config.train.seed,
                epoch=run.epoch,
                start=run.batch_in_epoch,
                world=run.world,
            )
            loader = DataLoader(
                run.train_set,
                batch_sampler=batches,
                collate_fn=collate_captions,
                num_workers=config.data.workers,
                pin_memory=run.device.type == "cuda",
                # Its own generator: a DataLoader iterator draws a seed for its workers, and from
                # the global RNG that draw would shift dropout's stream by one at every resume
                # mid-epoch, so a resumed run would no longer match an uninterrupted one.
                generator=torch.Generator().manual_seed(config.train.seed * 1000003 + run.epoch),
            )
            for batch in loader:
                values = _train_step(run, batch)
                run.step += 1
                run.batch_in_epoch += 1
                bar.update(1)
                bar.set_postfix(epoch=run.epoch, loss=f"{values['loss']:.3f}", best_rsum=f"{max(run.best_rsum, 0):.1f}")
                if run.step % config.train.log_every_steps == 0:
                    values = _mean_over_ranks(run, values)
                    _log(
                        run,
                        {
                            "step": run.step,
                            "epoch": run.epoch,
                            "lr": lr,
                            "time": round(time.time() - started, 2),
                            **values,
                        },
                    )
                if on_step is not None:
                    on_step(run)
                end_of_epoch = run.batch_in_epoch == run.steps_per_epoch
                if end_of_epoch:
                    run.epoch += 1
                    run.batch_in_epoch = 0
                if end_of_epoch or (every and run.step % every == 0) or run.step == run.total_steps:
                    _validate_and_save(run)
                elif checkpoint_every and run.step % checkpoint_every == 0 and run.world.main:
                    save(run)
                if run.step >= run.total_steps:
                    break
    except KeyboardInterrupt:
        bar.close()
        if run.world.main:
            save(run)
            print(
                f"\ninterrupted at step {run.step}; checkpoint saved. Continue with: scan train --resume --run-dir {run.run_dir}"
                + (
                    f" (under torchrun with {run.world.size} processes, for the same updates)"
                    if run.world.distributed
                    else ""
                )
            )
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        bar.close()
        if lock is not None:
            lock.release()
    return {"steps": run.step, "best_rsum": run.best_rsum, "best_step": run.best_step, "run_dir": str(run.run_dir)}


def _mean_over_ranks(run: Run, values: dict[str, float]) -> dict[str, float]:
    """The logged figures of a step, averaged over the ranks (each computed its own share's)."""
    if not run.world.distributed:
        return values
    names = sorted(values)
    totals = torch.tensor([values[name] for name in names], dtype=torch.float64)
    torch.distributed.all_reduce(totals)
    return {name: float(total) / run.world.size for name, total in zip(names, totals.tolist(), strict=True)}


def cleanup(run: Run) -> None:
    """Release the data-loader workers and device memory held by a run."""
    del run.optimizer
    if run.device.type == "cuda":
        torch.cuda.empty_cache()
