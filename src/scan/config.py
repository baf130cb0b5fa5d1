"""Typed configuration: one dataclass per concern, YAML files, dotted command-line overrides.

A run is fully described by a `Config`; the resolved config is written into every run
directory (`config.yaml`) so a result can always be traced to the settings that produced it.
The published recipes ship inside the package (`scan/configs/*.yaml`, also reachable as
`configs/` in the repository), so an installed `scan` finds them by name:
`scan train --config f30k_t2i_avg train.lr=1e-4 model.agg=Mean` layers overrides on top.

Every value is checked when the config loads (types, ranges, the fixed sets of choices), so a
negative learning rate or a misspelt pooling is one clear `ConfigError` naming the field, never a
crash at the first training step or a silently different computation.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from scan.errors import ConfigError
from scan.similarity.options import AttentionOptions, Direction, Norm, Pooling

__all__ = [
    "SAVED_CONFIG_FALLBACKS",
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "dump_config",
    "fields_saved_before_they_existed",
    "find_config",
    "load_config",
    "packaged_configs",
    "update_config",
]


@dataclass
class DataConfig:
    path: str = ""  # folder of the precomputed layout: {split}_ims.npy + {split}_caps.txt
    train_split: str = "train"  # split trained on (COCO: "train", with restval merged in)
    val_split: str = "dev"  # split for model selection by rsum
    vocab: str = ""  # vocabulary JSON; empty: built from the training captions, saved in the run
    vocab_threshold: int = 4  # keep words seen at least this often in the training captions
    batch_size: int = 128  # captions per training batch (each with its image)
    workers: int = 2  # data-loader worker processes
    val_max_images: int = 0  # evaluate on the first K dev images only (0: all); COCO used 1000
    # How the features were made from photos ({split}_extract.json's settings; empty for the
    # released features), so `scan eval` can featurise a new folder of photos the same way.
    extract: dict = field(default_factory=dict)


@dataclass
class ModelConfig:
    architecture: Literal["scan", "vse"] = "scan"  # "scan" (cross attention) or "vse" (global-embedding baseline)
    image_dim: int = 2048  # F: region feature size (bottom-up Faster R-CNN: 2048)
    embed_dim: int = 1024  # D: joint embedding size
    image_weight_norm: bool = False  # weight-normalised image projection (authors' option)
    text_encoder: str = "gru"  # "gru" (trained from scratch) or "minilm" (pretrained MiniLM-L6)
    word_dim: int = 300  # word embedding size of the GRU encoder
    # The GRU's word vectors at the start of training: "random" (the paper's), or "minilm", each
    # vocabulary word's MiniLM-L6 vector (scan.models.word_vectors; needs word_dim = 384).
    word_vectors: Literal["random", "minilm"] = "random"
    num_layers: int = 1  # GRU layers
    bidirectional: bool = True  # bi-GRU, the two directions averaged (not concatenated)
    freeze_text: bool = False  # keep the pretrained text model fixed, train the projection only
    direction: Direction = "t2i"  # "t2i": words attend to regions; "i2t": regions attend to words
    raw_feature_norm: Norm = "clipped_l2norm"  # normalisation of raw scores over the query axis
    lambda_softmax: float = 9.0  # lambda_1: inverse temperature of the attention softmax
    learn_lambda: bool = False  # train lambda_1 with the model, starting from lambda_softmax
    agg: Pooling = "LogSumExp"  # pooling of relevances: LogSumExp, Mean, Max or Sum
    lambda_lse: float = 6.0  # lambda_2 of LogSumExp pooling
    vocab_size: int = 0  # set from the vocabulary at set-up; stored so checkpoints rebuild alone
    # A trained global vector per image and caption (`GlobalHead`), the first stage of two-stage
    # search; ignored by the `vse` baseline, whose score already is global. A saved config without
    # this key predates the head and reads as false (`SAVED_CONFIG_FALLBACKS`).
    global_head: bool = True

    def attention(self) -> AttentionOptions:
        """The attention fields as one checked `AttentionOptions` (a `ConfigError` names a bad field)."""
        return AttentionOptions(
            direction=self.direction,
            norm=self.raw_feature_norm,
            smooth=self.lambda_softmax,
            agg=self.agg,
            lambda_lse=self.lambda_lse,
        )


@dataclass
class TrainConfig:
    epochs: int = 30  # passes over the training captions
    lr: float = 2e-4  # Adam learning rate
    lr_decay_epochs: int = 15  # multiply the learning rate by lr_decay after this many epochs
    lr_decay: float = 0.1  # step-decay factor
    margin: float = 0.2  # alpha of the hinge triplet loss
    global_loss_weight: float = 1.0  # weight of the global head's triplet term (0: head not trained)
    max_violation: bool = True  # hardest negative only (VSE++); False sums over all negatives
    # Which pairs of a batch are negatives. "same_image": none whose caption describes the
    # positive's image (a batch may hold two captions of one image; pushing them apart is wrong);
    # "diagonal": every pair but the positive itself, as the authors' code does.
    negatives: Literal["same_image", "diagonal"] = "same_image"
    # Under torchrun: search negatives over the whole global batch (embeddings gathered from every
    # rank, with gradients), not only within each rank's share (scan.train.parallel).
    cross_rank_negatives: bool = False
    sum_negatives_epochs: int = 0  # first epochs sum over all negatives before hardest-only (small data)
    grad_clip: float = 2.0  # clip the global gradient norm to this (0: no clipping)
    val_every_steps: int = 0  # also validate every N steps (0: only at the end of each epoch)
    checkpoint_every_steps: int = 200  # also write a resumable checkpoint every N steps (0: never)
    log_every_steps: int = 20  # write a line to metrics.jsonl every N steps
    seed: int = 0  # seeds model initialisation, shuffling and dropout
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    precision: Literal["auto", "fp32", "bf16"] = (
        "auto"  # encoders: "bf16" autocast (GPU); "auto": bf16 on a GPU else fp32
    )
    scoring_backend: Literal["auto", "torch", "triton"] = "auto"  # the path of the pairwise scores
    scoring_precision: Literal["auto", "fp32", "tf32", "bf16"] = (
        "auto"  # pairwise scores: "auto" (bf16 on Triton, else fp32), "fp32" (exact)
    )
    run_dir: str = "runs/scan"  # checkpoints, metrics and the resolved config go here
    max_steps: int = 0  # stop after this many steps (0: no limit); for smoke runs
    progress: bool = True  # show a progress bar


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> Config:
        """Check every value against its range and choices; raises `ConfigError` naming the field."""
        _validate(self)
        return self


def _choices() -> dict[str, tuple[Any, ...]]:
    """`section.field -> allowed values` for every field typed as a `Literal`."""
    out = {}
    for section, section_class in get_type_hints(Config).items():
        for key, hint in get_type_hints(section_class).items():
            if get_origin(hint) is Literal:
                out[f"{section}.{key}"] = get_args(hint)
    return out


# (field, lowest allowed value, whether that value itself is allowed)
_RANGES: tuple[tuple[str, float, bool], ...] = (
    ("data.vocab_threshold", 1, True),
    ("data.batch_size", 2, True),  # one caption per batch has no negative to learn from
    ("data.workers", 0, True),
    ("data.val_max_images", 0, True),
    ("model.image_dim", 0, True),  # 0 until set from the data
    ("model.embed_dim", 1, True),
    ("model.word_dim", 1, True),
    ("model.num_layers", 1, True),
    ("model.lambda_softmax", 0, False),
    ("model.lambda_lse", 0, False),
    ("model.vocab_size", 0, True),
    ("train.epochs", 1, True),
    ("train.lr", 0, False),
    ("train.lr_decay_epochs", 0, True),
    ("train.lr_decay", 0, False),
    ("train.margin", 0, True),
    ("train.global_loss_weight", 0, True),
    ("train.sum_negatives_epochs", 0, True),
    ("train.grad_clip", 0, True),
    ("train.val_every_steps", 0, True),
    ("train.checkpoint_every_steps", 0, True),
    ("train.log_every_steps", 1, True),
    ("train.max_steps", 0, True),
)


def _validate(config: Config) -> None:
    import math

    def value(dotted: str) -> Any:
        section, key = dotted.split(".")
        return getattr(getattr(config, section), key)

    for dotted, allowed in _choices().items():
        if value(dotted) not in allowed:
            raise ConfigError(f"{dotted}: {value(dotted)!r} is not one of {list(allowed)}")
    for dotted, lowest, inclusive in _RANGES:
        v = value(dotted)
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{dotted}: must be a finite number, got {v!r}")
        if v < lowest or (v == lowest and not inclusive):
            bound = f">= {lowest}" if inclusive else f"> {lowest}"
            raise ConfigError(f"{dotted}: must be {bound}, got {v!r}")
    m = config.model
    m.attention()  # the attention options are one typed object; building it checks them together
    from scan.models.registry import TEXT_ENCODERS

    if m.text_encoder not in TEXT_ENCODERS:
        raise ConfigError(f"model.text_encoder: {m.text_encoder!r} is not one of {sorted(TEXT_ENCODERS)}")
    if m.word_vectors == "minilm":
        minilm_dim = 384  # scan.models.word_vectors.MINILM_WORD_DIM; that module imports torch, this one must not
        if m.text_encoder != "gru":
            raise ConfigError(
                f"model.word_vectors: minilm initialises the GRU's words; text_encoder is {m.text_encoder!r}"
            )
        if m.word_dim != minilm_dim:
            raise ConfigError(f"model.word_dim: must be {minilm_dim} with model.word_vectors=minilm, got {m.word_dim}")


def _coerce(value: Any, current: Any, where: str) -> Any:
    """Give `value` the type of the field's default, with a clear error when it cannot."""
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if isinstance(current, int) and not isinstance(current, bool):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if isinstance(current, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "5e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if isinstance(current, dict):
        if isinstance(value, dict):
            return value
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    if isinstance(current, str):
        return "" if value is None else str(value)
    return value


def _apply(config: Config, section: str, key: str, value: Any, where: str) -> None:
    sub = getattr(config, section, None)
    if sub is None or not dataclasses.is_dataclass(sub) or isinstance(sub, type):
        sections = [f.name for f in dataclasses.fields(config)]
        raise ConfigError(f"{where}: unknown section {section!r}; sections are {sections}")
    names = {f.name for f in dataclasses.fields(sub)}
    if key not in names:
        raise ConfigError(f"{where}: unknown field {section}.{key}; fields are {sorted(names)}")
    setattr(sub, key, _coerce(value, getattr(sub, key), f"{where}: {section}.{key}"))


def update_config(config: Config, values: dict[str, Any], *, source: str) -> Config:
    """Apply a nested `{section: {field: value}}` mapping in place; `source` names it in errors."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(values).__name__}")
    for section, fields in values.items():
        if not isinstance(fields, dict):
            raise ConfigError(f"{source}: section {section!r} must be a mapping")
        for key, value in fields.items():
            _apply(config, section, key, value, source)
    return config


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Apply `section.field=value` strings; values are parsed as YAML (`1e-4`, `true`, `Mean`)."""
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"override {item!r}: expected section.field=value, e.g. train.lr=1e-4")
        dotted, raw = item.split("=", 1)
        section, key = dotted.split(".", 1)
        _apply(config, section, key, yaml.safe_load(raw) if raw else "", f"override {item!r}")
    return config


def packaged_configs() -> dict[str, Path]:
    """The recipes that ship with the package, by name (`f30k_t2i_avg`, `demo_flickr8k`, ...)."""
    folder = importlib.resources.files("scan") / "configs"
    return {Path(str(item)).stem: Path(str(item)) for item in folder.iterdir() if str(item).endswith(".yaml")}


def find_config(name: str | Path) -> Path:
    """A config file by path, or a packaged recipe by name (`f30k_t2i_avg`, `configs/f30k_t2i_avg.yaml`).

    A path that exists wins; otherwise the file name (without `.yaml`) is looked up among the
    recipes in the package, so the README's `configs/...` lines work from any directory.
    """
    path = Path(name).expanduser()
    if path.is_file():
        return path
    packaged = packaged_configs()
    stem = path.name[: -len(".yaml")] if path.name.endswith(".yaml") else path.name
    if stem in packaged:
        return packaged[stem]
    raise ConfigError(
        f"{name}: config file not found, and no packaged recipe of that name; recipes: {sorted(packaged)}"
    )


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file (if any), then the dotted overrides; validated."""
    config = Config()
    if path:
        path = find_config(path)
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as error:
            raise ConfigError(f"{path}: not UTF-8 text (byte {error.start})") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from None
        update_config(config, values, source=str(path))
    return apply_overrides(config, overrides or []).validate()


# Fields added after runs had been saved without them, with the value those runs had in effect.
# A saved config that lacks one was written before the field existed: it means this value, not
# the field's new default (a model trained without a global head has no head weights to load).
SAVED_CONFIG_FALLBACKS: dict[str, Any] = {"model.global_head": False}


def fields_saved_before_they_existed(values: dict[str, Any]) -> set[str]:
    """The `SAVED_CONFIG_FALLBACKS` fields that the saved `to_dict()` form `values` lacks."""
    missing = set()
    for dotted in SAVED_CONFIG_FALLBACKS:
        section, key = dotted.split(".")
        fields = values.get(section) if isinstance(values, dict) else None
        if not isinstance(fields, dict) or key not in fields:
            missing.add(dotted)
    return missing


def config_from_dict(values: dict[str, Any], *, source: str = "checkpoint") -> Config:
    """A validated config from its `to_dict()` form (a run's `config.yaml`, a checkpoint's state).

    Fields the saved form predates take their `SAVED_CONFIG_FALLBACKS` value, so an older run
    rebuilds the model it trained.
    """
    config = update_config(Config(), values, source=source)
    for dotted in fields_saved_before_they_existed(values):
        section, key = dotted.split(".")
        setattr(getattr(config, section), key, SAVED_CONFIG_FALLBACKS[dotted])
    return config.validate()


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
