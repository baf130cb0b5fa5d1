"""Device and precision choice: CPU or GPU, with bf16 autocast on a GPU.

A library module, apart from the training recipe, so that training, evaluation, extraction and
search make the same choices.
"""

from __future__ import annotations

import contextlib

import torch

from scan.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")  # of the encoders; the pairwise scores have their own


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` is the first GPU when there is one, else the CPU; a missing GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device {name!r} is not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for but this machine has no CUDA device; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` is bf16 on a GPU (Ampere and newer compute it at full speed) and fp32 on the CPU."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def autocast(device: torch.device, precision: str):
    """Mixed precision for the encoders; scores and the loss stay in float32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
