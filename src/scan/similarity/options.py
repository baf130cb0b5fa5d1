"""The attention options of Stacked Cross Attention as one typed, self-checking value.

`AttentionOptions` bundles the five choices that decide what a SCAN score is (paper sections 3.1,
3.2 and 3.3): which side attends to which, how raw region-word scores are normalised, the
softmax's inverse temperature, how relevances are pooled, and LogSumExp's temperature. Every
scoring path (`dispatch`, the PyTorch path, the Triton path) takes this one object, so a
misspelt option fails once, when the object is built, naming the config field at fault.

`NORMS` and `POOLINGS` list every normalisation and pooling there is, with the backends that
implement each, so a backend can refuse an option it lacks instead of computing another one.

This module imports nothing heavy (no torch): `scan.config` builds an `AttentionOptions` to
validate a config file at load time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

from scan.errors import BackendError, ConfigError

__all__ = [
    "DIRECTIONS",
    "NORMS",
    "POOLINGS",
    "AttentionOptions",
    "NormSpec",
    "PoolingSpec",
]

Direction = Literal["t2i", "i2t"]
Norm = Literal["clipped_l2norm", "l2norm", "softmax", "clipped_l1norm", "l1norm", "clipped", "no_norm"]
Pooling = Literal["LogSumExp", "Mean", "Max", "Sum"]

DIRECTIONS: tuple[str, ...] = get_args(Direction)
ALL_BACKENDS = frozenset({"torch", "triton"})


@dataclass(frozen=True)
class NormSpec:
    """One `raw_feature_norm`: the normalisation of raw scores over the query axis.

    Attributes:
        name: The name a config uses (`model.raw_feature_norm`).
        description: What it computes, in one line.
        backends: The scoring backends that implement it (`"torch"`, `"triton"`).
    """

    name: str
    description: str
    backends: frozenset[str]


@dataclass(frozen=True)
class PoolingSpec:
    """One pooling of per-item relevances into an image-sentence score (`model.agg`).

    Attributes:
        name: The name a config uses (`model.agg`).
        description: What it computes, in one line.
        backends: The scoring backends that implement it (`"torch"`, `"triton"`).
    """

    name: str
    description: str
    backends: frozenset[str]


# Both backends implement every entry: the PyTorch path through `functional.normalize_raw_scores`
# and `functional.pool`, the Triton kernels through `_normalise`/`_normalise_bwd` and
# `_pool`/`_pool_bwd` (their codes are `triton._NORM_CODES` and `triton._POOL_CODES`; the test
# suite checks that those codes and the "triton" entries below name the same options, and that
# the kernels agree with the reference on each). Names are in the order of the Literal types.
NORMS: dict[str, NormSpec] = {
    spec.name: spec
    for spec in (
        NormSpec(
            "clipped_l2norm",
            "LeakyReLU(0.1), then divide by the L2 norm over the query axis (the paper's)",
            ALL_BACKENDS,
        ),
        NormSpec("l2norm", "divide by the L2 norm over the query axis", ALL_BACKENDS),
        NormSpec("softmax", "softmax over the query axis", ALL_BACKENDS),
        NormSpec("clipped_l1norm", "LeakyReLU(0.1), then divide by the L1 norm over the query axis", ALL_BACKENDS),
        NormSpec("l1norm", "divide by the L1 norm over the query axis", ALL_BACKENDS),
        NormSpec("clipped", "LeakyReLU(0.1) only, no normalisation", ALL_BACKENDS),
        NormSpec("no_norm", "the raw scores as they are", ALL_BACKENDS),
    )
}
POOLINGS: dict[str, PoolingSpec] = {
    spec.name: spec
    for spec in (
        PoolingSpec(
            "LogSumExp", "log(sum(exp(lambda_lse * R))) / lambda_lse, a soft maximum (paper eq. 10)", ALL_BACKENDS
        ),
        PoolingSpec("Mean", "the mean relevance over the real query items (paper eq. 11)", ALL_BACKENDS),
        PoolingSpec("Max", "the largest relevance", ALL_BACKENDS),
        PoolingSpec("Sum", "the sum of the relevances", ALL_BACKENDS),
    )
}
assert tuple(NORMS) == get_args(Norm) and tuple(POOLINGS) == get_args(Pooling)  # one list of names


def _positive(field: str, value: object) -> float:
    """`value` as a float, or a ConfigError naming `field` unless it is a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{field}: expected a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{field}: must be a finite number > 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class AttentionOptions:
    """What a SCAN score computes; checked when built, immutable after.

    The defaults are those of `scan.config.ModelConfig`. Errors name the config field each
    option comes from (`model.direction`, `model.raw_feature_norm`, `model.lambda_softmax`,
    `model.agg`, `model.lambda_lse`), since that is where a user sets it.

    Raises:
        ConfigError: A name is not one of the known ones, or a temperature is not > 0.
    """

    # "t2i": each word attends over the regions, relevances pooled over words (section 3.2);
    # "i2t": each region attends over the words, pooled over regions (section 3.1).
    direction: Direction = "t2i"
    # raw_feature_norm: normalisation of the raw region-word scores over the query axis.
    norm: Norm = "clipped_l2norm"
    # lambda_1: inverse temperature of the attention softmax over the context axis (> 0).
    smooth: float = 9.0
    # Pooling of the query items' relevances into one score (a key of `POOLINGS`).
    agg: Pooling = "LogSumExp"
    # lambda_2: temperature of LogSumExp pooling (> 0; unused by the other poolings).
    lambda_lse: float = 6.0

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ConfigError(
                f"model.direction: {self.direction!r} is not a direction; choose one of {list(DIRECTIONS)}"
            )
        if self.norm not in NORMS:
            raise ConfigError(
                f"model.raw_feature_norm: {self.norm!r} is not a raw-feature norm; choose one of {list(NORMS)}"
            )
        if self.agg not in POOLINGS:
            raise ConfigError(f"model.agg: {self.agg!r} is not a pooling; choose one of {list(POOLINGS)}")
        # Stored as floats, so that options built from `9` and `9.0` are equal and hash alike.
        object.__setattr__(self, "smooth", _positive("model.lambda_softmax", self.smooth))
        object.__setattr__(self, "lambda_lse", _positive("model.lambda_lse", self.lambda_lse))

    def missing_in(self, backend: str) -> list[str]:
        """The options `backend` does not implement, in words (empty when it implements all)."""
        missing = []
        if backend not in NORMS[self.norm].backends:
            missing.append(f"raw_feature_norm {self.norm!r}")
        if backend not in POOLINGS[self.agg].backends:
            missing.append(f"pooling {self.agg!r}")
        return missing

    def implemented_by(self, backend: str) -> bool:
        """Whether `backend` computes these options (as opposed to refusing them)."""
        return not self.missing_in(backend)

    def require(self, backend: str) -> None:
        """Refuse, with what to do instead, options that `backend` does not implement.

        Raises:
            BackendError: `backend` lacks the norm or the pooling asked for.
        """
        missing = self.missing_in(backend)
        if missing:
            others = sorted(b for b in ALL_BACKENDS - {backend} if self.implemented_by(b))
            hint = f"; use backend={others[0]!r}" if others else ""
            raise BackendError(f"the {backend} backend does not implement {' or '.join(missing)}{hint}")
