"""Loading a model folder: everything it needs must be there, or the load is refused by name."""

from __future__ import annotations

import shutil

import pytest

from scan import checkpoint as ckpt
from scan.errors import CheckpointError, DataError
from scan.models.loading import load_model, resolve_model_folder


def copy_model(tiny_run, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(resolve_model_folder(tiny_run), folder)
    return folder


def test_a_model_folder_without_its_vocabulary_is_refused(tiny_run, tmp_path):
    """Before: silently evaluated through a 4-token vocabulary built from no captions at all."""
    folder = copy_model(tiny_run, tmp_path)
    (folder / ckpt.VOCAB_FILE).unlink()
    with pytest.raises(DataError, match=r"vocab\.json"):
        load_model(folder)


def test_a_model_folder_with_its_vocabulary_loads(tiny_run, tmp_path):
    trained = load_model(copy_model(tiny_run, tmp_path))
    assert len(trained.tokenizer) > 4


def test_an_unreadable_config_is_a_checkpoint_error(tiny_run, tmp_path):
    folder = copy_model(tiny_run, tmp_path)
    (folder / ckpt.CONFIG_FILE).write_bytes(b"model: [\xff\xfe")
    with pytest.raises(CheckpointError, match="config.yaml"):
        load_model(folder)
