"""Load a trained model folder (a checkpoint, or a run directory's best checkpoint) for use.

Evaluation, retrieval and drawing all start here: the folder carries its config, vocabulary
and safetensors weights, so nothing else (and no pickle) is needed to rebuild the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from scan.config import Config, config_from_dict
from scan.models.scan import SCAN, build_model
from scan.models.tokenizers import build_tokenizer
from scan.train import checkpoint as ckpt


@dataclass
class TrainedModel:
    model: SCAN
    tokenizer: object
    config: Config
    folder: Path


def resolve_model_folder(path: str | Path) -> Path:
    """A checkpoint folder as given, or `checkpoints/best` (then `latest`) of a run directory."""
    path = Path(path)
    if (path / ckpt.MODEL_FILE).exists():
        return path
    for name in ("best", "latest"):
        candidate = path / "checkpoints" / name
        if (candidate / ckpt.MODEL_FILE).exists():
            return candidate.resolve()
    raise ckpt.CheckpointError(
        f"{path}: no model found (expected {ckpt.MODEL_FILE} there, or a run directory with checkpoints/best)"
    )


def load_model(path: str | Path, *, device: torch.device | str = "cpu") -> TrainedModel:
    folder = resolve_model_folder(path)
    config_path = folder / ckpt.CONFIG_FILE
    if not config_path.exists():
        raise ckpt.CheckpointError(f"{folder}: no {ckpt.CONFIG_FILE}; cannot rebuild the model")
    config = config_from_dict(yaml.safe_load(config_path.read_text()), source=str(config_path))
    vocab_file = folder / ckpt.VOCAB_FILE
    tokenizer = build_tokenizer(config, train_captions=[], vocab_file=str(vocab_file) if vocab_file.exists() else "")
    model = build_model(config.model)
    ckpt.load_weights(folder, model)
    model.to(device).eval()
    return TrainedModel(model=model, tokenizer=tokenizer, config=config, folder=folder)
