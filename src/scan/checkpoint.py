"""Checkpoints that load without executing code and are never half-written as the latest.

A checkpoint is a folder: `model.safetensors` (weights), `optimizer.safetensors` (the Adam
moments, flattened), `state.json` (step, epoch, schedule, RNG, best rsum, the optimizer's
non-tensor state), plus `config.yaml` and `vocab.json` so the folder alone rebuilds the model.
Folders are written under a temporary name, fsynced and renamed; `latest` and `best` are
symbolic links swapped with an atomic `os.replace`, so a crash at any moment leaves the
previous complete checkpoint in place; the temporaries a hard kill leaves behind are removed
by the next save. Nothing is unpickled on load.

This is the file format, so it belongs to the library: loading a model for evaluation or
search needs it, and none of the training recipe.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from scan.atomic import fsync_dir
from scan.errors import CheckpointError

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
CONFIG_FILE = "config.yaml"
VOCAB_FILE = "vocab.json"


TMP_MARK = ".tmp-"  # temporaries are hidden siblings: `.{name}.tmp-{pid}`

__all__ = [
    "CONFIG_FILE",
    "MODEL_FILE",
    "OPTIMIZER_FILE",
    "STATE_FILE",
    "VOCAB_FILE",
    "CheckpointError",
    "load_optimizer",
    "load_weights",
    "point_link",
    "read_state",
    "remove_orphaned_temporaries",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "weights_digest",
]


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into named tensors and a JSON-able remainder."""
    tensors: dict[str, torch.Tensor] = {}
    per_param: dict[str, dict[str, Any]] = {}
    for param_id, values in state["state"].items():
        plain = {}
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{param_id}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain[key] = value
        per_param[str(param_id)] = plain
    return tensors, {"param_groups": state["param_groups"], "per_param": per_param}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(k): dict(v) for k, v in plain["per_param"].items()}
    for name, value in tensors.items():
        param_id, key = name.split(".", 1)
        state.setdefault(int(param_id), {})[key] = value
    return {"state": state, "param_groups": plain["param_groups"]}


def save_checkpoint(
    folder: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
    config_yaml: str,
    vocab_json: str | None,
) -> Path:
    """Write a complete checkpoint to `folder` atomically (temporary name, fsync, rename)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_orphaned_temporaries(folder.parent)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(tmp / MODEL_FILE))
    full_state = dict(state)
    if optimizer is not None:
        tensors, plain = _flatten_optimizer(optimizer.state_dict())
        save_file(tensors, str(tmp / OPTIMIZER_FILE))
        full_state["optimizer"] = plain
    for name, text in ((STATE_FILE, json.dumps(full_state, indent=1)), (CONFIG_FILE, config_yaml)):
        (tmp / name).write_text(text, encoding="utf-8")
    if vocab_json is not None:
        (tmp / VOCAB_FILE).write_text(vocab_json, encoding="utf-8")
    for child in tmp.iterdir():
        with open(child, "rb") as handle:
            os.fsync(handle.fileno())
    fsync_dir(tmp)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    fsync_dir(folder.parent)
    return folder


def remove_orphaned_temporaries(checkpoint_dir: Path) -> list[Path]:
    """Delete the half-written `.*.tmp-*` folders and links a killed save left in `checkpoint_dir`.

    Only one process writes a run directory at a time (the recipe holds its lock), so every
    temporary present before a save is an orphan: it was never renamed into place and nothing
    refers to it. Returns what was removed.
    """
    removed = []
    for path in Path(checkpoint_dir).glob(f".*{TMP_MARK}*"):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(path)
    return removed


def point_link(link: Path, target: Path) -> None:
    """Make `link` a relative symlink to `target`, replacing any old link atomically."""
    link = Path(link)
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(os.path.relpath(target, link.parent), tmp)
    os.replace(tmp, link)
    fsync_dir(link.parent)


def read_state(folder: Path) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / STATE_FILE
    if not path.exists():
        raise CheckpointError(f"{folder}: not a checkpoint (no {STATE_FILE})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: unreadable checkpoint state: {error}") from None


def load_weights(folder: Path, model: torch.nn.Module) -> None:
    path = Path(folder) / MODEL_FILE
    if not path.exists():
        raise CheckpointError(f"{folder}: no {MODEL_FILE}")
    try:
        weights = load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for truncated files
        raise CheckpointError(f"{path}: unreadable weights: {error}") from None
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the model (missing {missing}, unexpected {unexpected})")


def load_optimizer(folder: Path, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    path = Path(folder) / OPTIMIZER_FILE
    try:
        tensors = load_file(str(path)) if path.exists() else {}
    except Exception as error:  # safetensors raises its own error types for truncated files
        raise CheckpointError(f"{path}: unreadable optimizer state: {error}") from None
    optimizer.load_state_dict(_unflatten_optimizer(tensors, state["optimizer"]))


def rng_state() -> dict[str, Any]:
    """Torch CPU (and CUDA) generator states as JSON-able lists of bytes."""
    out = {"torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        out["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def weights_digest(folder: str | os.PathLike[str]) -> str:
    """The SHA-256 of a checkpoint's weights file: names the model that made a set of vectors.

    A search index records it, so it is never searched with another model's encoders (the
    vectors would score without error and mean nothing). It hashes the bytes, so it survives
    moving or copying the folder and changes whenever the weights do.

    Raises:
        CheckpointError: the folder has no readable weights file.
    """
    import hashlib

    path = Path(folder) / MODEL_FILE
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read the weights: {error.strerror or error}") from None
    return digest.hexdigest()
