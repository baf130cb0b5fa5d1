"""Load a trained model folder (a checkpoint, or a run directory's best checkpoint) for use.

Evaluation, retrieval and drawing all start here: the folder carries its config, vocabulary
and safetensors weights, so nothing else (and no pickle) is needed to rebuild the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from scan import checkpoint as ckpt
from scan.config import Config, config_from_dict
from scan.errors import CheckpointError
from scan.models.scan import SCAN, build_model
from scan.models.tokenizers import Tokenizer, build_tokenizer


@dataclass
class TrainedModel:
    """A model ready to encode and score, with what it needs to read new captions."""

    model: SCAN
    tokenizer: Tokenizer  # turns captions into the ids the model was trained on
    config: Config  # the run's resolved config (data.extract says how its features were made)
    folder: Path  # the checkpoint folder it was loaded from


def resolve_model_folder(path: str | Path) -> Path:
    """A checkpoint folder as given, or `checkpoints/best` (then `latest`) of a run directory."""
    path = Path(path)
    if (path / ckpt.MODEL_FILE).exists():
        return path
    for name in ("best", "latest"):
        candidate = path / "checkpoints" / name
        if (candidate / ckpt.MODEL_FILE).exists():
            return candidate.resolve()
    raise CheckpointError(
        f"{path}: no model found (expected {ckpt.MODEL_FILE} there, or a run directory with checkpoints/best)"
    )


def load_model(path: str | Path, *, device: torch.device | str = "cpu") -> TrainedModel:
    """Rebuild a trained model from its folder: config, tokenizer (vocabulary) and weights.

    Raises:
        CheckpointError: the folder lacks its config or weights, or they do not match.
        DataError: the model reads words through a vocabulary and the folder has no `vocab.json`
            (a model must never be scored through a vocabulary it was not trained with).
    """
    folder = resolve_model_folder(path)
    config_path = folder / ckpt.CONFIG_FILE
    if not config_path.exists():
        raise CheckpointError(f"{folder}: no {ckpt.CONFIG_FILE}; cannot rebuild the model")
    try:
        values = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{config_path}: unreadable config: {error}") from None
    # A config.yaml without `model.global_head` predates the head: it reads as false, so the model
    # is rebuilt without one and its weights load (`config_from_dict`'s saved-config fallbacks).
    config = config_from_dict(values, source=str(config_path))
    # Never `train_captions`: a model folder without its vocabulary is an error, not a fresh one.
    tokenizer = build_tokenizer(config, train_captions=None, vocab_file=folder / ckpt.VOCAB_FILE)
    model = build_model(config.model)
    ckpt.load_weights(folder, model)
    model.to(device).eval()
    return TrainedModel(model=model, tokenizer=tokenizer, config=config, folder=folder)


def has_global_head(model: SCAN) -> bool:
    """Whether `model` carries a trained `GlobalHead` (one vector per item, for a first-stage index).

    Models trained before the head existed, with `model.global_head=false`, and the `vse`
    baseline have none; a search over them shortlists some other way (the baseline's own vectors).
    """
    return getattr(model, "global_head", None) is not None
