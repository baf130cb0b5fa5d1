"""A randomly initialised SCAN checkpoint that reads real photos' grid features, made in a blink."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from scan import checkpoint as ckpt
from scan.config import Config, dump_config
from scan.features.extract import ExtractConfig
from scan.models.scan import build_model
from scan.models.tokenizers import build_tokenizer

NUM_PHOTOS = 12  # photos of the `photos` fixture


def make_photo_model(folder: Path, captions: list[str], *, seed: int = 0, global_head: bool = True) -> Path:
    """Write a randomly initialised SCAN checkpoint that reads grid-mode region features."""
    config = Config()
    config.model.image_dim = 1280  # EfficientNet-Lite0's features (scan.features)
    config.model.embed_dim = 32
    config.model.word_dim = 16
    config.model.global_head = global_head
    config.data.vocab_threshold = 1  # a dozen photos' captions: keep every word
    config.data.extract = ExtractConfig(mode="grid").output_fields()
    tokenizer = build_tokenizer(config, train_captions=captions)
    config.model.vocab_size = len(tokenizer)
    torch.manual_seed(seed)
    model = build_model(config.model)
    folder.mkdir(parents=True)
    (folder / ckpt.CONFIG_FILE).write_text(dump_config(config), encoding="utf-8")
    tokenizer.save(folder / ckpt.VOCAB_FILE)
    save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()}, str(folder / ckpt.MODEL_FILE))
    return folder


def make_photo_folder(records: list, parent: Path) -> Path:
    """`parent/photos`: the records' photos, a third in a subfolder, and `parent/captions.txt` (image,caption)."""
    folder = parent / "photos"
    (folder / "more").mkdir(parents=True)
    lines = ["image,caption"]
    for i, record in enumerate(records):
        shutil.copyfile(record.path, folder / ("more" if i % 3 == 0 else "") / record.filename)
        lines += [f"{record.filename},{caption}" for caption in record.captions]
    (parent / "captions.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder
