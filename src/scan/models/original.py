"""The SCAN authors' released checkpoints (`model_best.pth.tar`), read without running their code.

    write_imported_model("runs_f30k/model_best.pth.tar", "vocab/f30k_precomp_vocab.json", "runs/f30k_t2i_orig")

The released file is a pickle written by `torch.save`: `{"model": [image encoder state, text
encoder state], "opt": argparse.Namespace, "epoch", "best_rsum", "Eiters"}`. Unpickling runs
whatever the file names, so it is read with `torch.load(weights_only=True)`, which builds only
tensors, containers and the classes allowed here (`argparse.Namespace`); anything else is refused.
A vocabulary is their JSON (`serialize_vocab`) or a pickle of their `vocab.Vocabulary`, read by
an unpickler that builds that one class as plain data and refuses every other global.

The options (`opt`) map onto our config field by field; an option our model does not implement
(`no_imgnorm`, `no_txtnorm`, an unknown norm or pooling) is refused by name, never ignored, since
the model would load and score differently without any other sign. The weights map key by key
(`fc.*` -> `image_encoder.fc.*`, weight-normed as `parametrizations`; `embed`/`rnn.*` ->
`text_encoder.embed`/`gru.*`), and the folder written is a model folder like any other:
`config.yaml`, `vocab.json`, `model.safetensors`, loadable by `scan.load_model`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from scan import checkpoint as ckpt
from scan.atomic import atomic_open, write_text_atomic
from scan.config import Config, dump_config
from scan.data.vocab import Vocabulary, load_vocabulary, save_vocabulary
from scan.errors import CheckpointError, DataError
from scan.models.scan import build_model

__all__ = ["config_from_options", "read_original_checkpoint", "read_original_vocabulary", "write_imported_model"]

NORMS = {"clipped_l2norm", "l2norm", "clipped_l1norm", "l1norm", "clipped", "softmax", "no_norm"}
POOLINGS = {"LogSumExp", "Mean", "Max", "Sum"}


def read_original_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The released checkpoint as data: `model` (two state dicts) and `opt` (a dict of options).

    Raises:
        CheckpointError: not a readable checkpoint, one that would need other classes to load,
            or one without the released layout (naming what is missing).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path}: refused: loading it would run code beyond tensors and options ({error}); "
            "only the authors' released layout is read"
        ) from None
    except Exception as error:  # a truncated or foreign file: zip, pickle and torch all raise their own
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: {type(error).__name__}: {error}") from None
    if not isinstance(loaded, dict) or "model" not in loaded or "opt" not in loaded:
        keys = sorted(loaded) if isinstance(loaded, dict) else type(loaded).__name__
        raise CheckpointError(f"{path}: not a SCAN checkpoint: expected keys 'model' and 'opt', found {keys}")
    states = loaded["model"]
    if not isinstance(states, list | tuple) or len(states) != 2 or not all(isinstance(s, dict) for s in states):
        raise CheckpointError(f"{path}: 'model' must be [image encoder state, text encoder state]")
    options = loaded["opt"]
    options = vars(options) if isinstance(options, argparse.Namespace) else options
    if not isinstance(options, dict):
        raise CheckpointError(f"{path}: 'opt' must be the training options (argparse.Namespace)")
    return {"model": [dict(s) for s in states], "opt": dict(options), "epoch": loaded.get("epoch")}


class _VocabularyData:
    """What a pickled `vocab.Vocabulary` holds, built as plain data (its methods are not needed)."""

    word2idx: dict[str, int]
    idx2word: dict[int, str]


class _VocabularyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if name == "Vocabulary" and module in ("vocab", "__main__"):
            return _VocabularyData
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed (only vocab.Vocabulary)")


def read_original_vocabulary(path: str | os.PathLike[str]) -> Vocabulary:
    """The authors' vocabulary: their JSON (`serialize_vocab`), or a pickle of `vocab.Vocabulary`.

    Raises:
        DataError: unreadable, a pickle naming any other class, or ids that are not 0..n-1.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("no such vocabulary file", path=path)
    data = path.read_bytes()
    if data[:1] in (b"{", b" ", b"\n"):
        return load_vocabulary(path)
    try:
        loaded = _VocabularyUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as error:
        raise DataError(f"refused: {error}", path=path) from None
    except Exception as error:
        raise DataError(f"not a vocabulary pickle: {type(error).__name__}: {error}", path=path) from None
    word2idx = getattr(loaded, "word2idx", None)
    if not isinstance(loaded, _VocabularyData) or not isinstance(word2idx, dict):
        raise DataError("the pickle holds no Vocabulary with a word2idx table", path=path)
    words = sorted(word2idx, key=lambda word: word2idx[word])
    if [word2idx[w] for w in words] != list(range(len(words))) or not all(isinstance(w, str) for w in words):
        raise DataError("word2idx must map words to the ids 0..n-1, each once", path=path, field="word2idx")
    return Vocabulary(words)


def config_from_options(options: dict[str, Any], *, vocab_size: int) -> Config:
    """Our config for the released options (`opt`), field by field.

    Raises:
        CheckpointError: an option our model does not implement, named with its value.
    """
    config = Config()
    model, train = config.model, config.train

    def option(name: str, default: Any) -> Any:
        return options.get(name, default)

    for name in ("no_imgnorm", "no_txtnorm"):
        if option(name, False):
            raise CheckpointError(f"opt.{name}=True: embeddings without unit norm are not implemented here")
    norm, pooling = option("raw_feature_norm", "clipped_l2norm"), option("agg_func", "LogSumExp")
    if norm not in NORMS:
        raise CheckpointError(f"opt.raw_feature_norm={norm!r} is not one of {sorted(NORMS)}")
    if pooling not in POOLINGS:
        raise CheckpointError(f"opt.agg_func={pooling!r} is not one of {sorted(POOLINGS)}")
    direction = option("cross_attn", "t2i")
    if direction not in ("t2i", "i2t"):
        raise CheckpointError(f"opt.cross_attn={direction!r} must be 't2i' or 'i2t'")
    encoder = option("precomp_enc_type", "basic")
    if encoder not in ("basic", "weight_norm"):
        raise CheckpointError(f"opt.precomp_enc_type={encoder!r} must be 'basic' or 'weight_norm'")
    model.architecture = "scan"
    model.image_dim = int(option("img_dim", 2048))
    model.embed_dim = int(option("embed_size", 1024))
    model.image_weight_norm = encoder == "weight_norm"
    model.text_encoder = "gru"
    model.word_dim = int(option("word_dim", 300))
    model.num_layers = int(option("num_layers", 1))
    model.bidirectional = bool(option("bi_gru", False))
    model.direction = direction
    model.raw_feature_norm = norm
    model.lambda_softmax = float(option("lambda_softmax", 9.0))
    model.agg = pooling
    model.lambda_lse = float(option("lambda_lse", 6.0))
    model.vocab_size = vocab_size
    model.global_head = False  # the authors trained none
    train.margin = float(option("margin", 0.2))
    train.max_violation = bool(option("max_violation", False))
    train.negatives = "diagonal"  # their loss masks only the diagonal
    train.lr = float(option("learning_rate", 2e-4))
    train.epochs = int(option("num_epochs", 30))
    train.lr_decay_epochs = int(option("lr_update", 15))
    train.grad_clip = float(option("grad_clip", 2.0))
    config.data.batch_size = int(option("batch_size", 128))
    return config.validate()


def _state_dict(states: list[dict[str, Any]], config: Config) -> dict[str, torch.Tensor]:
    """Our model's state dict from the released `[image encoder, text encoder]` states."""
    image, text = ({key.removeprefix("module."): value for key, value in s.items()} for s in states)
    out: dict[str, torch.Tensor] = {}
    if config.model.image_weight_norm:
        names = {"fc.weight_g": "original0", "fc.weight_v": "original1"}
        for key, ours in names.items():
            if key not in image:
                raise CheckpointError(f"opt.precomp_enc_type='weight_norm' but the image encoder has no {key!r}")
            out[f"image_encoder.fc.parametrizations.weight.{ours}"] = image[key]
    else:
        out["image_encoder.fc.weight"] = image.get("fc.weight")  # type: ignore[assignment]
    out["image_encoder.fc.bias"] = image.get("fc.bias")  # type: ignore[assignment]
    out["text_encoder.embed.weight"] = text.get("embed.weight")  # type: ignore[assignment]
    for key, value in text.items():
        if key.startswith("rnn."):
            out["text_encoder.gru." + key.removeprefix("rnn.")] = value
    missing = sorted(key for key, value in out.items() if value is None)
    if missing:
        raise CheckpointError(f"the released weights lack {missing}")
    return out


def write_imported_model(
    checkpoint: str | os.PathLike[str], vocabulary: str | os.PathLike[str], out: str | os.PathLike[str]
) -> Path:
    """Convert a released checkpoint and its vocabulary into a model folder in `out`; returns it.

    Raises:
        CheckpointError: the checkpoint is refused, or its weights do not fit its options.
        DataError: the vocabulary is refused, or does not fit the word embedding.
    """
    released = read_original_checkpoint(checkpoint)
    vocab = read_original_vocabulary(vocabulary)
    embedding = released["model"][1].get("embed.weight", released["model"][1].get("module.embed.weight"))
    if embedding is None:
        raise CheckpointError(f"{checkpoint}: the text encoder has no embed.weight")
    if embedding.shape[0] != len(vocab):
        raise DataError(
            f"{len(vocab)} words, but the checkpoint's word embedding has {embedding.shape[0]} rows: "
            "not the vocabulary this model was trained with",
            path=vocabulary,
        )
    config = config_from_options(released["opt"], vocab_size=len(vocab))
    state = _state_dict(released["model"], config)
    model = build_model(config.model)
    ours = model.state_dict()
    unknown = sorted(set(state) - set(ours))
    absent = sorted(set(ours) - set(state))
    if unknown or absent:
        raise CheckpointError(f"{checkpoint}: weights do not fit the options: unexpected {unknown}, missing {absent}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(ours[key].shape):
            raise CheckpointError(
                f"{checkpoint}: {key} is {tuple(value.shape)}, the options make {tuple(ours[key].shape)}"
            )
    model.load_state_dict(state)
    folder = Path(out)
    if (folder / ckpt.MODEL_FILE).exists():
        raise CheckpointError(f"{folder} already holds a model; choose another --out")
    folder.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save

    with atomic_open(folder / ckpt.MODEL_FILE, "wb") as handle:
        handle.write(save({name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}))
    save_vocabulary(vocab, folder / ckpt.VOCAB_FILE)
    write_text_atomic(folder / ckpt.CONFIG_FILE, dump_config(config))
    source = {"checkpoint": str(Path(checkpoint).resolve()), "epoch": released["epoch"], "vocabulary": str(vocabulary)}
    write_text_atomic(folder / "imported.json", json.dumps(source, indent=2, default=str) + "\n")
    return folder
