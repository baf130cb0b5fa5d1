"""The one entry point for SCAN scores: picks the fastest available path (paper section 3).

Everyone who needs scores calls this module, never a backend directly:
- `score_matrix` for evaluation and retrieval: the `(N, M)` float32 CPU matrix of a gallery,
  without gradients, in blocks of bounded memory.
- `batch_scores` for training: the differentiable `(B, B')` matrix of a batch.

Backends: `triton` (fused kernels, `scan.similarity.triton`; a CUDA device and the `triton`
package) and `torch` (vectorised PyTorch, `scan.similarity.torch`; any device). `backend="auto"`
takes the first of `available_backends(device)` that implements the options asked for (see
`options.NORMS`/`options.POOLINGS`), so a GPU with Triton gets the fused kernels and everything
else the PyTorch path; a forced backend that cannot run, or that does not implement the options,
raises `BackendError`.

Options: every call takes one `AttentionOptions` (direction, norm, smooth, agg, lambda_lse),
checked when it was built. `batch_scores` also takes lambda_1 as a 0-dim tensor (`smooth=`),
for a temperature trained with the model (`model.learn_lambda`): only the PyTorch path has a
gradient for it, so `auto` scores such a batch there and a forced `triton` refuses it.

Precision: `fp32` is exact float32; `bf16` multiplies bf16-rounded embeddings with float32
accumulation (everything after the raw scores stays float32); `tf32` lets the GPU's tensor
cores round float32 inputs to tf32 (on the PyTorch path it is float32). `auto` is `bf16` for the
Triton backend and `fp32` otherwise.
"""

from __future__ import annotations

import torch

from scan.errors import BackendError, ConfigError
from scan.similarity import torch as torch_path
from scan.similarity.options import AttentionOptions

BACKENDS = ("triton", "torch")
PRECISIONS = ("auto", "fp32", "tf32", "bf16")

# Memory budget of one block of the PyTorch path: a CPU wants its blocks in cache, a GPU wants
# them large enough to fill the device.
CPU_BLOCK_BUDGET_MB = 16.0
GPU_BLOCK_BUDGET_MB = 1024.0
TRITON_BUDGET_MB = 4096.0  # device copies of the embeddings (the kernel keeps no intermediates)

# Backends whose batch scores are differentiable with respect to lambda_1 itself, where a learned
# temperature can train: the Triton kernels take it as a constant and compute no gradient for it.
LEARNED_SMOOTH_BACKENDS = ("torch",)


def _triton_module():
    from scan.similarity import triton as triton_path

    return triton_path


def available_backends(device: torch.device | str) -> list[str]:
    """The backends that can score on `device`, fastest first."""
    device = torch.device(device)
    backends = []
    if device.type == "cuda" and torch.cuda.is_available() and _triton_module().triton_importable():
        backends.append("triton")
    backends.append("torch")
    return backends


def _learned(smooth: torch.Tensor | None) -> bool:
    """Whether a lambda_1 override will get a gradient (a learned temperature, outside no_grad)."""
    return smooth is not None and smooth.requires_grad and torch.is_grad_enabled()


def resolve_backend(
    backend: str,
    device: torch.device | str,
    options: AttentionOptions | None = None,
    *,
    learned_smooth: bool = False,
) -> str:
    """`auto` -> the fastest available backend for `options`; a forced one is checked.

    A forced `triton` on the CPU is accepted under `TRITON_INTERPRET=1` (how the tests run the
    kernels); `auto` never picks the interpreter.

    Args:
        backend: `auto`, `triton` or `torch`.
        device: where the scores are computed.
        options: the options to score with; `auto` skips backends that do not implement them,
            a forced backend that does not is an error. None: only availability is checked.
        learned_smooth: lambda_1 needs a gradient (a learned temperature): `auto` then takes only
            `LEARNED_SMOOTH_BACKENDS`, and forcing another backend is an error.

    Raises:
        ConfigError: `backend` is not a backend name.
        BackendError: the forced backend cannot run on `device`, does not implement `options`,
            or has no gradient for a learned lambda_1.
    """
    device = torch.device(device)
    available = available_backends(device)
    if backend == "auto":
        # torch implements every option, so this always finds one; the fallback keeps it total.
        usable = [
            b
            for b in available
            if (options is None or options.implemented_by(b)) and (not learned_smooth or b in LEARNED_SMOOTH_BACKENDS)
        ]
        return (usable or available)[0]
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    if options is not None:
        options.require(backend)  # refused whether or not it could run here: it never computes these
    if learned_smooth and backend not in LEARNED_SMOOTH_BACKENDS:
        raise BackendError(
            f"the {backend} backend does not implement a learned lambda_softmax (model.learn_lambda): "
            f"it has no gradient for lambda_1; use backend={LEARNED_SMOOTH_BACKENDS[0]!r}"
        )
    if backend in available or (backend == "triton" and _triton_module().is_available(device)):
        return backend
    if backend == "triton" and not _triton_module().triton_importable():
        reason = "the triton package is not installed (pip install 'scan[gpu]')"
    else:
        reason = f"it needs a CUDA device, and the scores are computed on {device}"
    raise BackendError(f"backend 'triton' is unavailable: {reason}; available: {available}")


def resolve_precision(precision: str, backend: str) -> str:
    """`auto` -> `bf16` on Triton, `fp32` otherwise; a named precision is checked and kept."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if backend == "triton" else "fp32"
    return precision


def _check_options(options: AttentionOptions) -> None:
    """A clear error for the old keyword calls (`direction=...`) or a dict in place of the options."""
    if not isinstance(options, AttentionOptions):
        raise TypeError(f"options must be a scan.similarity.options.AttentionOptions, got {type(options).__name__}")


def _default_device(images: torch.Tensor) -> torch.device:
    """Compute where the images are; CPU-resident embeddings still score on a GPU if there is one."""
    if images.device.type != "cpu":
        return images.device
    return torch.device("cuda") if torch.cuda.is_available() else images.device


@torch.no_grad()
def score_matrix(
    images: torch.Tensor,
    captions: torch.Tensor,
    caption_lengths: torch.Tensor,
    options: AttentionOptions,
    *,
    backend: str = "auto",
    precision: str = "auto",
    memory_budget_mb: float | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The `(N, M)` float32 CPU score matrix of a whole gallery, for evaluation and retrieval.

    Args:
        images: `(N, R, D)` region embeddings (any device).
        captions: `(M, W, D)` word embeddings, padded (any device).
        caption_lengths: `(M,)` number of real words of each caption (at least 1).
        options: direction, norm, smooth (lambda_1), agg and lambda_lse.
        backend: `auto`, `triton` or `torch`; `auto` picks the fastest one here that implements
            `options`.
        precision: `auto`, `fp32`, `tf32` or `bf16`.
        memory_budget_mb: bound on the memory one block of work holds; by default a few MB on
            a CPU (cache-sized blocks), about 1 GB on a GPU, 4 GB of embeddings for Triton.
        device: where to compute; by default the images' device, or the GPU when the images are
            on the CPU and a GPU exists.

    Raises:
        ConfigError: an unknown backend or precision name.
        BackendError: a forced backend that cannot run here or does not implement `options`.
    """
    _check_options(options)
    device = _default_device(images) if device is None else torch.device(device)
    backend = resolve_backend(backend, device, options)
    precision = resolve_precision(precision, backend)
    if backend == "triton":
        budget = TRITON_BUDGET_MB if memory_budget_mb is None else memory_budget_mb
        return _triton_module().score_matrix(
            images, captions, caption_lengths, options, precision=precision, memory_budget_mb=budget, device=device
        )
    if memory_budget_mb is None:
        memory_budget_mb = CPU_BLOCK_BUDGET_MB if device.type == "cpu" else GPU_BLOCK_BUDGET_MB
    return torch_path.score_matrix(
        images,
        captions,
        caption_lengths,
        options,
        precision=precision,
        memory_budget_mb=memory_budget_mb,
        device=device,
    )


def batch_scores(
    images: torch.Tensor,
    captions: torch.Tensor,
    caption_mask: torch.Tensor,
    options: AttentionOptions,
    *,
    backend: str = "auto",
    precision: str = "auto",
    smooth: torch.Tensor | None = None,
) -> torch.Tensor:
    """Differentiable `(B, B')` scores of a training batch, on the inputs' device.

    Args:
        images: `(B, R, D)` region embeddings.
        captions: `(B', W, D)` word embeddings, padded (padding never gets a gradient).
        caption_mask: `(B', W)` True at real words.
        options: direction, norm, smooth (lambda_1), agg and lambda_lse.
        backend, precision: as for `score_matrix`. On the PyTorch path `bf16` multiplies in
            bf16 and `fp32`/`tf32` keep the inputs' dtype (float64 stays float64).
        smooth: lambda_1 as a 0-dim tensor, in place of `options.smooth`: a learned temperature,
            which gets its gradient through the scores. One that needs a gradient is scored on a
            backend of `LEARNED_SMOOTH_BACKENDS` (`auto` picks one). None: `options.smooth`.

    Raises:
        ConfigError: an unknown backend or precision name.
        BackendError: a forced backend that cannot run here, does not implement `options`, or
            has no gradient for a `smooth` that needs one.
        TypeError: `smooth` is not a 0-dim floating-point tensor.
    """
    _check_options(options)
    torch_path.check_smooth(smooth)
    backend = resolve_backend(backend, images.device, options, learned_smooth=_learned(smooth))
    precision = resolve_precision(precision, backend)
    if backend == "triton":
        return _triton_module().batch_scores(
            images, captions, caption_mask, options, precision=precision, smooth=smooth
        )
    if precision == "bf16":
        return torch_path.pairwise_scores(
            images.to(torch.bfloat16), captions.to(torch.bfloat16), caption_mask, options, smooth=smooth
        ).to(images.dtype)
    return torch_path.pairwise_scores(images, captions, caption_mask, options, smooth=smooth)
