"""Device and precision choice: CPU or GPU, with bf16 autocast on a GPU.

Kept apart from the recipe so evaluation, extraction and serving make the same choices.
"""

from __future__ import annotations

import contextlib

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` is the first GPU when there is one, else the CPU; a missing GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but this machine has no CUDA device; use --device cpu")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` is bf16 on a GPU (Ampere and newer compute it at full speed) and fp32 on the CPU."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
    return precision


def autocast(device: torch.device, precision: str):
    """Mixed precision for the encoders; scores and the loss stay in float32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
