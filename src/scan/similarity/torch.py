"""Vectorised Stacked Cross Attention scores for every (image, caption) pair of two sets.

This is the PyTorch path (paper sections 3.1 and 3.2): no Python loop over captions. For a block
of `n` images and `m` captions, all raw region-word scores are one matrix product, and the
attended vectors are never formed. With `s_rw = v_r . e_w` and attention weights `alpha` over
the context axis:

    e_w . a_w   = sum_r alpha_rw s_rw                 (t2i; the i2t case is symmetric)
    ||a_w||^2   = alpha_w^T G alpha_w,  G = V V^T     (the image's R x R Gram matrix)

so a pair costs one `R x W` block of the score product plus `O(R^2 W)` for the norms, instead
of the original's two `R x W x D` products per pair. Both directions are one computation with
the roles swapped: a *context* set (the side that is attended over: images for t2i, captions
for i2t) and a *query* set (the side whose items are normalised over and pooled). The raw
scores of a block are laid out `(nc, C, nq, Q)`, which is exactly what one `(nc*C, D) x (D,
nq*Q)` matrix product writes, and the Gram step is then one batched product over the context
set without any transpose.

It is differentiable, so training on the CPU uses it for the batch's `B x B` score matrix;
`score_matrix` tiles it over a whole gallery with blocks sized from a memory budget, computing
each context item's Gram matrix and each query item's norms once for the whole gallery.
`pairwise_scores` also takes lambda_1 as a 0-dim tensor (`smooth=`, in place of the options'
float), so a learned temperature (`model.learn_lambda`) gets its gradient here.

Shapes: `N` images, `M` captions, `R` regions, `W` words, `D` embedding dims; `C`/`Q` the
context/query item sizes (`R`/`W` for t2i, `W`/`R` for i2t).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from scan.errors import ConfigError
from scan.similarity.functional import EPS, normalize_raw_scores, pool
from scan.similarity.options import AttentionOptions

_LOW_PRECISION = (torch.bfloat16, torch.float16)


def _attention_scores(
    context: torch.Tensor,
    query: torch.Tensor,
    *,
    context_mask: torch.Tensor | None,
    query_mask: torch.Tensor | None,
    context_gram: torch.Tensor,
    query_norm: torch.Tensor,
    options: AttentionOptions,
    smooth: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scores of every context item against every query item: `(nc, C, D) x (nq, Q, D) -> (nc, nq)`.

    Args:
        context: `(nc, C, D)` the attended-over side.
        query: `(nq, Q, D)` the side that is normalised over and pooled.
        context_mask, query_mask: `(nc, C)` / `(nq, Q)` True at real items, or None (all real).
        context_gram: `(nc, C, C)` float Gram matrices of the context items.
        query_norm: `(nq, Q)` float norms of the query vectors.
        options: the norm, smooth, agg and lambda_lse to use (the caller has laid the operands
            out for `options.direction`).
        smooth: lambda_1 as a 0-dim tensor, used in place of `options.smooth` (None: the float).
    """
    nc, num_context, dim = context.shape
    nq, num_query, _ = query.shape
    raw = torch.mm(context.reshape(nc * num_context, dim), query.reshape(nq * num_query, dim).t())
    raw = raw.view(nc, num_context, nq, num_query)  # (nc, C, nq, Q)
    if raw.dtype in _LOW_PRECISION:
        raw = raw.float()  # bf16 products, float32 from here on
    q_mask = None if query_mask is None else query_mask[None, None]  # (1, 1, nq, Q)
    normed = normalize_raw_scores(raw, norm=options.norm, dim=3, mask=q_mask)  # (nc, C, nq, Q)
    logits = (options.smooth if smooth is None else smooth) * normed
    if context_mask is not None:
        logits = logits.masked_fill(~context_mask[:, :, None, None], float("-inf"))
    alpha = torch.softmax(logits, dim=1)  # (nc, C, nq, Q)   over the context axis
    dot = (alpha * raw).sum(dim=1)  # (nc, nq, Q)   query . attended
    gram_alpha = torch.bmm(context_gram, alpha.reshape(nc, num_context, nq * num_query))  # (nc, C, nq*Q)
    attended_sq = (alpha * gram_alpha.view_as(alpha)).sum(dim=1)  # (nc, nq, Q)   ||attended||^2
    relevance = dot / (query_norm[None] * attended_sq.clamp(min=EPS * EPS).sqrt()).clamp(min=EPS)
    pool_mask = None if query_mask is None else query_mask[None]  # (1, nq, Q)
    return pool(relevance, agg=options.agg, lambda_lse=options.lambda_lse, mask=pool_mask, dim=2)  # (nc, nq)


def _check_options(options: AttentionOptions) -> None:
    """A typed options object that this path implements (every table entry lists "torch" today)."""
    if not isinstance(options, AttentionOptions):
        raise TypeError(f"options must be a scan.similarity.options.AttentionOptions, got {type(options).__name__}")
    options.require("torch")


def check_smooth(smooth: torch.Tensor | None) -> None:
    """A lambda_1 override must be one number: a tensor of any other shape would broadcast silently.

    Its sign is not checked: that would read the value back from the device on every batch, and a
    learned lambda_1 is positive by construction (`SCAN` keeps it as `exp(log_lambda)`).

    Raises:
        TypeError: `smooth` is neither None nor a 0-dim floating-point tensor.
    """
    if smooth is None:
        return
    if not isinstance(smooth, torch.Tensor) or smooth.dim() != 0 or not smooth.is_floating_point():
        got = f"a tensor of shape {tuple(smooth.shape)}" if isinstance(smooth, torch.Tensor) else type(smooth).__name__
        raise TypeError(f"smooth must be a 0-dim floating-point tensor (lambda_1), got {got}")


def _gram(x: torch.Tensor) -> torch.Tensor:
    """`(B, L, D) -> (B, L, L)` Gram matrices, in float32 at least."""
    x = x.float() if x.dtype in _LOW_PRECISION else x
    return torch.bmm(x, x.transpose(1, 2))


def _norms(x: torch.Tensor) -> torch.Tensor:
    """`(B, L, D) -> (B, L)` vector norms, in float32 at least."""
    x = x.float() if x.dtype in _LOW_PRECISION else x
    return x.norm(dim=-1)


def pairwise_scores(
    images: torch.Tensor,
    captions: torch.Tensor,
    caption_mask: torch.Tensor,
    options: AttentionOptions,
    *,
    smooth: torch.Tensor | None = None,
) -> torch.Tensor:
    """SCAN scores of every image against every caption, in one block.

    Args:
        images: `(N, R, D)` region embeddings.
        captions: `(M, W, D)` word embeddings, padded.
        caption_mask: `(M, W)` True at real words.
        options: direction, norm, smooth (lambda_1), agg and lambda_lse.
        smooth: lambda_1 as a 0-dim tensor, in place of `options.smooth`; the scores are
            differentiable with respect to it (a learned temperature). None: `options.smooth`.

    Returns:
        `(N, M)` scores, in the inputs' dtype (float32 for bf16 inputs).

    Raises:
        BackendError: `options` asks for something this path does not implement.
        TypeError: `smooth` is not a 0-dim floating-point tensor.
    """
    _check_options(options)
    check_smooth(smooth)
    caption_mask = caption_mask.to(torch.bool)
    # Padded word slots may hold anything, even inf or NaN (which a multiplication by the mask
    # would keep): zero them, so no product, norm or Gram matrix of either direction sees them.
    captions = captions.masked_fill(~caption_mask[..., None], 0)
    if options.direction == "t2i":
        # Context = regions (softmax over R), query = words (normalise and pool over W).
        return _attention_scores(
            images,
            captions,
            context_mask=None,
            query_mask=caption_mask,
            context_gram=_gram(images),
            query_norm=_norms(captions),
            options=options,
            smooth=smooth,
        )  # (N, M)
    # Context = words (softmax over real words only), query = regions.
    return _attention_scores(
        captions,
        images,
        context_mask=caption_mask,
        query_mask=None,
        context_gram=_gram(captions),
        query_norm=_norms(images),
        options=options,
        smooth=smooth,
    ).t()  # (M, N) -> (N, M)


def block_sizes(
    *, num_regions: int, num_words: int, embed_dim: int, memory_budget_mb: float, element_size: int = 4
) -> tuple[int, int]:
    """Choose (images, captions) per block so one block's intermediates fit the budget.

    A block keeps about six `(n, R, m, W)` float tensors alive (raw, normed, alpha, their
    products) next to its `(n, R, D)` and `(m, W, D)` operands. Blocks are square-ish in pairs
    because both operands are reused across the other axis; on a CPU a budget of a few MB keeps a
    block in the last-level cache, which matters more than the matrix product's efficiency.
    """
    per_pair = 6 * num_regions * num_words * max(element_size, 4)
    pairs = max(1, int(memory_budget_mb * 2**20 / per_pair))
    side = max(1, int(math.sqrt(pairs)))
    return side, side


def _caption_blocks(lengths: torch.Tensor, block: int) -> Iterator[torch.Tensor]:
    """Caption indices in blocks of similar length, so each block is padded only to its own max."""
    order = torch.argsort(lengths, descending=True, stable=True)
    for start in range(0, len(order), block):
        yield order[start : start + block]


def _compute_dtype(precision: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype of the raw-score product: bf16 when asked for, else float32 (float64 stays)."""
    if precision not in ("fp32", "tf32", "bf16"):
        raise ConfigError(f"precision must be 'fp32', 'tf32' or 'bf16', got {precision!r}")
    if precision == "bf16":
        return torch.bfloat16
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.no_grad()
def score_matrix(
    images: torch.Tensor,
    captions: torch.Tensor,
    caption_lengths: torch.Tensor,
    options: AttentionOptions,
    *,
    memory_budget_mb: float = 16.0,
    image_block: int | None = None,
    caption_block: int | None = None,
    precision: str = "fp32",
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The `(N, M)` score matrix of a whole gallery, tiled so memory stays bounded.

    Embeddings may live on the CPU while `device` is a GPU or vice versa: each block is moved
    to `device`, so a gallery larger than device memory still scores. Captions are grouped by
    length so a block pays only for its own longest caption. Gram matrices and norms are
    computed once per gallery item, not once per block.

    Args:
        images: `(N, R, D)` region embeddings.
        captions: `(M, W, D)` word embeddings, padded.
        caption_lengths: `(M,)` number of real words of each caption.
        options: direction, norm, smooth (lambda_1), agg and lambda_lse.
        memory_budget_mb: bound on one block's intermediates; sets the block sizes. The default
            keeps a block in a CPU's last-level cache; on a GPU larger budgets pay off.
        image_block, caption_block: explicit block sizes, overriding the budget.
        precision: `fp32` (float32 products; float64 inputs stay float64), `tf32` (the same on
            this path) or `bf16` (bf16 products, float32 everything else).
        device: where to compute; defaults to `images.device`.

    Raises:
        BackendError: `options` asks for something this path does not implement.
    """
    _check_options(options)
    direction = options.direction
    device = images.device if device is None else torch.device(device)
    compute_dtype = _compute_dtype(precision, images.dtype)
    num_images, num_regions, embed_dim = images.shape
    num_captions = captions.shape[0]
    lengths = caption_lengths.to("cpu", torch.long)
    auto_images, auto_captions = block_sizes(
        num_regions=num_regions,
        num_words=max(1, int(lengths.float().mean().item()) if num_captions else 1),
        embed_dim=embed_dim,
        memory_budget_mb=memory_budget_mb,
        element_size=torch.finfo(compute_dtype).bits // 8,
    )
    image_block = image_block or auto_images
    caption_block = caption_block or auto_captions
    image_gram, image_norm = [], []
    for start in range(0, num_images, image_block):
        block = images[start : start + image_block].to(device, compute_dtype)  # (n, R, D)
        if direction == "t2i":
            image_gram.append(_gram(block))  # (n, R, R)
        else:
            image_norm.append(_norms(block))  # (n, R)
    scores = torch.empty(num_images, num_captions, dtype=torch.float32)
    for caption_index in _caption_blocks(lengths, caption_block):
        width = int(lengths[caption_index].max())
        block_captions = captions[caption_index.to(captions.device), :width].to(device, compute_dtype)  # (m, W, D)
        block_mask = (torch.arange(width)[None, :] < lengths[caption_index][:, None]).to(device)  # (m, W)
        # Blocks of equally long captions (most, once sorted by length) need no masking at all.
        word_mask = None if bool(block_mask.all()) else block_mask
        if word_mask is not None:
            # Padded slots hold zeros or garbage (inf and NaN too): zero them, as pairwise_scores does.
            block_captions = block_captions.masked_fill(~word_mask[..., None], 0)
        if direction == "t2i":
            caption_norm = _norms(block_captions)  # (m, W)
        else:
            caption_gram = _gram(block_captions)  # (m, W, W)
        for block_index, start in enumerate(range(0, num_images, image_block)):
            block_images = images[start : start + image_block].to(device, compute_dtype)  # (n, R, D)
            if direction == "t2i":
                block_scores = _attention_scores(
                    block_images,
                    block_captions,
                    context_mask=None,
                    query_mask=word_mask,
                    context_gram=image_gram[block_index],
                    query_norm=caption_norm,
                    options=options,
                )  # (n, m)
            else:
                block_scores = _attention_scores(
                    block_captions,
                    block_images,
                    context_mask=word_mask,
                    query_mask=None,
                    context_gram=caption_gram,
                    query_norm=image_norm[block_index],
                    options=options,
                ).t()  # (m, n) -> (n, m)
            scores[start : start + image_block, caption_index] = block_scores.float().cpu()
    return scores
