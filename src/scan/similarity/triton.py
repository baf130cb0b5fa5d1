"""Fused Stacked Cross Attention in Triton: evaluation scores and a training forward/backward.

The GPU path of paper sections 3.1 (i2t) and 3.2 (t2i). One program scores one image against a
block of `BM` captions: the raw region-word scores of the whole tile are one `tl.dot` over chunks
of `D` (`(RP, D) x (D, BM*WP)`, float32 accumulation), and the normalisation over the query
axis, the softmax over the context axis, the relevances and the pooling all happen on that tile
in registers; only one score per pair is written. The attended vectors are never formed: with
the context's Gram matrix `G`,

    query . attended = sum_c alpha_c s_c,      ||attended||^2 = alpha^T G alpha,

and `G alpha` for the whole tile is one more small `tl.dot`: `(RP, RP) x (RP, BM*WP)` for t2i
(the image's Gram matrix), `(RP, BM*WP) x (BM*WP, BM*WP)` for i2t (the captions' Gram matrices
as one block-diagonal matrix). Gram matrices and norms are computed once per gallery item
outside the kernel.

Captions are grouped by length into buckets of power-of-two width `WP`, so a tile pays only for
its bucket's padding; the region axis is padded to a power of two `RP`. Programs are ordered so
that concurrently running ones share a group of caption blocks and stream images, keeping both
operands in L2.

Training uses `TritonScanScores`, a custom autograd function: the forward is the same kernel;
the backward kernel recomputes each tile's forward, then writes the gradient of the raw scores
`dS` (`(N*R, M*WP)`) and adds the gradients of the Gram matrices and query norms atomically;
the two large contractions `dV = dS E` and `dE = dS^T V` are then ordinary matrix products.

Precision: `bf16` casts the embeddings to bfloat16 for the raw-score product (float32
accumulation, everything else float32); `tf32` keeps float32 inputs and lets the tensor cores
round them to tf32; `fp32` is exact IEEE float32 throughout.

Options: every entry point takes one `AttentionOptions` and refuses (`BackendError`) a norm or
pooling that `options.NORMS`/`options.POOLINGS` do not list for "triton" or that has no kernel
code here, rather than letting a kernel compute a different option. The kernels take lambda_1
as a constant and compute no gradient for it, so `batch_scores` refuses a learned lambda_1 (a
tensor that needs a gradient, `model.learn_lambda`) rather than train it as if it were fixed.

Triton is imported on first use, so the package imports without it; on a CPU the kernels run
under `TRITON_INTERPRET=1` (the test suite does this on tiny shapes).

Shapes: `N` images, `M` captions, `R` regions, `W` words, `D` embedding dims; `RP`/`WP` padded.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
from typing import Any

import torch

from scan.errors import BackendError, ConfigError
from scan.similarity.functional import EPS
from scan.similarity.options import AttentionOptions

PRECISIONS = ("fp32", "tf32", "bf16")

# The constexpr codes the kernels branch on (`NORM` in `_normalise`/`_normalise_bwd`, `AGG` in
# `_pool`/`_pool_bwd`). A name missing here has no kernel code and is refused before launch:
# the kernels' `else` branches would otherwise compute `no_norm` or `Sum` for any unknown code.
# The "triton" entries of `options.NORMS`/`options.POOLINGS` must name exactly these keys
# (tests/similarity/test_triton.py checks it).
_NORM_CODES = {
    "clipped_l2norm": 0,  # LeakyReLU(0.1), then L2 over the query axis
    "l2norm": 1,
    "softmax": 2,
    "clipped_l1norm": 3,  # LeakyReLU(0.1), then L1
    "l1norm": 4,
    "clipped": 5,  # LeakyReLU(0.1) only
    "no_norm": 6,
}
_POOL_CODES = {"LogSumExp": 0, "Mean": 1, "Max": 2, "Sum": 3}

# Launch configurations, per kernel and precision: caption word slots per tile (the tile is one
# image's RP padded regions x `columns` = BM captions x WP words), D chunk, warps, pipeline
# stages. Chosen so that ptxas (sm_90a) reports no register spills, or a few bytes, for R = 36
# and WP = 16; timings on an H100 are still to be taken (docs/PERFORMANCE.md). The exact fp32
# product runs on CUDA cores with its operands in registers, hence its smaller tiles.
TILE_CONFIGS = {
    ("fwd", "bf16"): dict(columns=128, block_d=64, num_warps=8, num_stages=3),
    ("fwd", "tf32"): dict(columns=128, block_d=32, num_warps=8, num_stages=3),
    ("fwd", "fp32"): dict(columns=64, block_d=16, num_warps=8, num_stages=2),
    ("bwd", "bf16"): dict(columns=32, block_d=64, num_warps=8, num_stages=2),
    ("bwd", "tf32"): dict(columns=32, block_d=32, num_warps=8, num_stages=2),
    ("bwd", "fp32"): dict(columns=16, block_d=16, num_warps=8, num_stages=2),
}
GROUP_CAPTION_BLOCKS = 64  # caption blocks swept together across images (L2 reuse)

_KERNELS = None


def triton_importable() -> bool:
    """True when the `triton` package can be imported (it is not imported here)."""
    return importlib.util.find_spec("triton") is not None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def is_available(device: torch.device | str) -> bool:
    """Whether the kernels can run on `device`: a CUDA device, or the CPU under TRITON_INTERPRET=1."""
    if not triton_importable():
        return False
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available()
    return _interpreting() and device.type == "cpu"


def _next_pow2(x: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, x))))


def _kernels():
    """JIT-compile the kernels on first use (Triton reads TRITON_INTERPRET at this point)."""
    global _KERNELS
    if _KERNELS is None:
        _KERNELS = _build_kernels()
    return _KERNELS


# Bound by `_build_kernels` on first use: the JIT resolves a kernel's helpers and constants as
# module globals, and importing triton at module level would make it a hard dependency.
triton: Any
tl: Any
_EPS: Any
_EPS2: Any
_NEG: Any


def _build_kernels():
    # The helpers must be module globals for the JIT to resolve them by name from the kernels.
    global triton, tl, _EPS, _EPS2, _NEG
    global _tile_ids, _raw_scores, _tile_masks, _load_context_gram, _load_query_norm
    global _normalise, _normalise_bwd, _pool, _pool_bwd, _tile_forward
    import triton
    import triton.language as tl

    _EPS = tl.constexpr(EPS)
    _EPS2 = tl.constexpr(EPS * EPS)
    _NEG = tl.constexpr(-1.0e30)  # a finite -inf: fully masked rows stay NaN-free

    @triton.jit
    def _tile_ids(N, M, BM: tl.constexpr, GROUP_C: tl.constexpr):
        """Program id -> (image, caption block), grouping GROUP_C caption blocks per sweep."""
        pid = tl.program_id(0)
        num_cb = tl.cdiv(M, BM)
        per_group = GROUP_C * N
        first_cb = (pid // per_group) * GROUP_C
        group_size = tl.minimum(num_cb - first_cb, GROUP_C)
        local = pid % per_group
        return local // group_size, first_cb + local % group_size

    @triton.jit
    def _raw_scores(
        img_ptr,
        cap_ptr,
        n,
        cb,
        M,
        R,
        D,
        RP: tl.constexpr,
        BM: tl.constexpr,
        WP: tl.constexpr,
        BLOCK_D: tl.constexpr,
        DOT_PRECISION: tl.constexpr,
        UPCAST: tl.constexpr,
    ):
        """`(RP, BM*WP)` raw scores of image n's regions against caption block cb's word slots."""
        r = tl.arange(0, RP)
        j = tl.arange(0, BM * WP)
        d = tl.arange(0, BLOCK_D)
        caption_ok = (cb * BM + j // WP) < M
        img_rows = img_ptr + (n * R + r).to(tl.int64)[:, None] * D
        cap_cols = cap_ptr + (cb * BM * WP + j).to(tl.int64)[None, :] * D
        acc = tl.zeros((RP, BM * WP), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + d
            a = tl.load(img_rows + dd[None, :], mask=(r[:, None] < R) & (dd[None, :] < D), other=0.0)
            b = tl.load(cap_cols + dd[:, None], mask=caption_ok[None, :] & (dd[:, None] < D), other=0.0)
            if UPCAST:  # the interpreter's tl.dot mishandles bf16; the products are exact either way
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        return acc

    @triton.jit
    def _tile_masks(wmask_ptr, cb, M, R, RP: tl.constexpr, BM: tl.constexpr, WP: tl.constexpr):
        """Real regions `(RP, 1, 1)`, real words `(1, BM, WP)`, real captions `(BM,)`.

        Caption slots past M get an all-true word mask so that their (discarded) scores stay
        finite: they would otherwise turn into NaN and poison the backward's atomic sums.
        """
        m = tl.arange(0, BM)
        w = tl.arange(0, WP)
        caption_ok = (cb * BM + m) < M
        words = tl.load(
            wmask_ptr + (cb * BM + m).to(tl.int64)[:, None] * WP + w[None, :], mask=caption_ok[:, None], other=1
        )
        region_ok = tl.arange(0, RP) < R
        return region_ok[:, None, None], (words != 0)[None, :, :], caption_ok

    @triton.jit
    def _load_context_gram(
        gram_ptr, n, cb, M, R, RP: tl.constexpr, BM: tl.constexpr, WP: tl.constexpr, T2I: tl.constexpr
    ):
        """t2i: image n's `(RP, RP)` Gram matrix; i2t: the block's `(BM*WP, BM*WP)` block-diagonal one."""
        if T2I:
            r = tl.arange(0, RP)
            ok = (r[:, None] < R) & (r[None, :] < R)
            gram = tl.load(gram_ptr + n.to(tl.int64) * R * R + r[:, None] * R + r[None, :], mask=ok, other=0.0)
        else:
            i = tl.arange(0, BM * WP)
            m_i = i // WP
            same = (m_i[:, None] == m_i[None, :]) & ((cb * BM + m_i) < M)[:, None]
            base = (cb * BM + m_i).to(tl.int64) * WP * WP + (i % WP) * WP
            gram = tl.load(gram_ptr + base[:, None] + (i % WP)[None, :], mask=same, other=0.0)
        return gram

    @triton.jit
    def _load_query_norm(
        qnorm_ptr, n, cb, M, R, RP: tl.constexpr, BM: tl.constexpr, WP: tl.constexpr, T2I: tl.constexpr
    ):
        """t2i: the block's word norms `(1, BM, WP)`; i2t: image n's region norms `(RP, 1, 1)`."""
        if T2I:
            m = tl.arange(0, BM)
            w = tl.arange(0, WP)
            ptrs = qnorm_ptr + (cb * BM + m).to(tl.int64)[:, None] * WP + w[None, :]
            qn = tl.load(ptrs, mask=((cb * BM + m) < M)[:, None], other=0.0)[None, :, :]
        else:
            r = tl.arange(0, RP)
            qn = tl.load(qnorm_ptr + n.to(tl.int64) * R + r, mask=r < R, other=0.0)[:, None, None]
        return qn

    @triton.jit
    def _normalise(s, qmask, NORM: tl.constexpr, Q_AXIS: tl.constexpr):
        """raw_feature_norm over the query axis; returns (clipped scores, normalised, the norm)."""
        if NORM == 0 or NORM == 3 or NORM == 5:  # clipped_*: LeakyReLU(0.1)
            c = tl.where(s > 0, s, 0.1 * s)
        else:
            c = s
        c = tl.where(qmask, c, 0.0)
        if NORM == 0 or NORM == 1:  # (clipped_)l2norm
            nrm = tl.sqrt(tl.sum(c * c, axis=Q_AXIS, keep_dims=True))
            f = c / (nrm + _EPS)
        elif NORM == 3 or NORM == 4:  # (clipped_)l1norm
            nrm = tl.sum(tl.abs(c), axis=Q_AXIS, keep_dims=True)
            f = c / (nrm + _EPS)
        elif NORM == 2:  # softmax
            x = tl.where(qmask, c, _NEG)
            e = tl.where(qmask, tl.exp(x - tl.max(x, axis=Q_AXIS, keep_dims=True)), 0.0)
            nrm = tl.sum(e, axis=Q_AXIS, keep_dims=True)
            f = e / nrm
        else:  # clipped, no_norm
            nrm = tl.sum(c, axis=Q_AXIS, keep_dims=True)  # unused
            f = c
        return c, f, nrm

    @triton.jit
    def _normalise_bwd(df, s, c, f, nrm, qmask, NORM: tl.constexpr, Q_AXIS: tl.constexpr):
        """Gradient of the raw scores from the gradient of the normalised ones."""
        if NORM == 0 or NORM == 1:
            den = nrm + _EPS
            t = tl.sum(df * c, axis=Q_AXIS, keep_dims=True)
            safe = tl.where(nrm > 0, nrm, 1.0)
            dc = df / den - c * (t / (den * den * safe))
        elif NORM == 3 or NORM == 4:
            den = nrm + _EPS
            t = tl.sum(df * c, axis=Q_AXIS, keep_dims=True)
            sign = tl.where(c > 0, 1.0, tl.where(c < 0, -1.0, 0.0))
            dc = df / den - sign * (t / (den * den))
        elif NORM == 2:
            dc = f * (df - tl.sum(f * df, axis=Q_AXIS, keep_dims=True))
        else:
            dc = df
        dc = tl.where(qmask, dc, 0.0)
        if NORM == 0 or NORM == 3 or NORM == 5:
            dc = dc * tl.where(s > 0, 1.0, 0.1)
        return dc

    @triton.jit
    def _pool(rel, qmask, lambda_lse, AGG: tl.constexpr, Q_AXIS: tl.constexpr):
        """Pool relevances over the query axis (keeps dims): LogSumExp, Mean, Max or Sum."""
        if AGG == 0:
            x = tl.where(qmask, rel * lambda_lse, _NEG)
            top = tl.max(x, axis=Q_AXIS, keep_dims=True)
            e = tl.where(qmask, tl.exp(x - top), 0.0)
            out = (top + tl.log(tl.sum(e, axis=Q_AXIS, keep_dims=True))) / lambda_lse
        elif AGG == 1:
            count = tl.sum(tl.where(qmask, 1.0, 0.0), axis=Q_AXIS, keep_dims=True)
            out = tl.sum(tl.where(qmask, rel, 0.0), axis=Q_AXIS, keep_dims=True) / tl.maximum(count, 1.0)
        elif AGG == 2:
            out = tl.max(tl.where(qmask, rel, _NEG), axis=Q_AXIS, keep_dims=True)
        else:
            out = tl.sum(tl.where(qmask, rel, 0.0), axis=Q_AXIS, keep_dims=True)
        return out

    @triton.jit
    def _pool_bwd(rel, out, g, qmask, lambda_lse, AGG: tl.constexpr, Q_AXIS: tl.constexpr):
        """Gradient of each relevance from the gradient `g` of the pooled score."""
        if AGG == 0:
            drel = g * tl.where(qmask, tl.exp(lambda_lse * (rel - out)), 0.0)
        elif AGG == 1:
            count = tl.sum(tl.where(qmask, 1.0, 0.0), axis=Q_AXIS, keep_dims=True)
            drel = tl.where(qmask, g / tl.maximum(count, 1.0), 0.0)
        elif AGG == 2:
            hit = qmask & (rel == out)
            ties = tl.sum(tl.where(hit, 1.0, 0.0), axis=Q_AXIS, keep_dims=True)
            drel = tl.where(hit, g / tl.maximum(ties, 1.0), 0.0)
        else:
            drel = tl.where(qmask, g, 0.0)
        return drel

    @triton.jit
    def _tile_forward(
        s,
        gram,
        qn,
        qmask,
        cmask,
        smooth,
        lambda_lse,
        RP: tl.constexpr,
        BM: tl.constexpr,
        WP: tl.constexpr,
        T2I: tl.constexpr,
        NORM: tl.constexpr,
        AGG: tl.constexpr,
        Q_AXIS: tl.constexpr,
        C_AXIS: tl.constexpr,
        GRAM_PRECISION: tl.constexpr,
    ):
        """Everything after the raw scores `s` `(RP, BM, WP)`, for one tile."""
        c, f, nrm = _normalise(s, qmask, NORM, Q_AXIS)
        logits = tl.where(cmask, f * smooth, _NEG)
        e = tl.exp(logits - tl.max(logits, axis=C_AXIS, keep_dims=True))
        alpha = e / tl.sum(e, axis=C_AXIS, keep_dims=True)  # softmax over the context axis
        dot = tl.sum(alpha * s, axis=C_AXIS, keep_dims=True)  # query . attended
        alpha2 = tl.reshape(alpha, (RP, BM * WP))
        if T2I:
            ga = tl.dot(gram, alpha2, input_precision=GRAM_PRECISION)  # (RP, RP) x (RP, BM * WP)
        else:
            ga = tl.dot(alpha2, gram, input_precision=GRAM_PRECISION)  # (RP, BM * WP) x (BM * WP, BM * WP)
        ga = tl.reshape(ga, (RP, BM, WP))
        q = tl.sum(alpha * ga, axis=C_AXIS, keep_dims=True)  # ||attended||^2
        root = tl.sqrt(tl.maximum(q, _EPS2))
        den = qn * root
        rel = dot / tl.maximum(den, _EPS)  # cosine(query, attended)
        out = _pool(rel, qmask, lambda_lse, AGG, Q_AXIS)  # (1, BM, 1)
        return c, f, nrm, alpha, dot, ga, q, root, den, rel, out

    @triton.jit
    def scores_fwd_kernel(
        img_ptr,
        cap_ptr,
        wmask_ptr,
        gram_ptr,
        qnorm_ptr,
        out_ptr,
        N,
        M,
        R,
        D,
        out_stride,
        smooth,
        lambda_lse,
        RP: tl.constexpr,
        BM: tl.constexpr,
        WP: tl.constexpr,
        BLOCK_D: tl.constexpr,
        T2I: tl.constexpr,
        NORM: tl.constexpr,
        AGG: tl.constexpr,
        Q_AXIS: tl.constexpr,
        C_AXIS: tl.constexpr,
        DOT_PRECISION: tl.constexpr,
        GRAM_PRECISION: tl.constexpr,
        GROUP_C: tl.constexpr,
        UPCAST: tl.constexpr,
    ):
        """out[n, cb*BM + m] = score(image n, caption cb*BM + m)."""
        n, cb = _tile_ids(N, M, BM, GROUP_C)
        s = _raw_scores(img_ptr, cap_ptr, n, cb, M, R, D, RP, BM, WP, BLOCK_D, DOT_PRECISION, UPCAST)
        s = tl.reshape(s, (RP, BM, WP))
        rmask, wmask, caption_ok = _tile_masks(wmask_ptr, cb, M, R, RP, BM, WP)
        if T2I:
            qmask = wmask
            cmask = rmask
        else:
            qmask = rmask
            cmask = wmask
        gram = _load_context_gram(gram_ptr, n, cb, M, R, RP, BM, WP, T2I)
        qn = _load_query_norm(qnorm_ptr, n, cb, M, R, RP, BM, WP, T2I)
        _c, _f, _nrm, _alpha, _dot, _ga, _q, _root, _den, _rel, out = _tile_forward(
            s,
            gram,
            qn,
            qmask,
            cmask,
            smooth,
            lambda_lse,
            RP,
            BM,
            WP,
            T2I,
            NORM,
            AGG,
            Q_AXIS,
            C_AXIS,
            GRAM_PRECISION,
        )
        m = cb * BM + tl.arange(0, BM)
        tl.store(out_ptr + n.to(tl.int64) * out_stride + m, tl.reshape(out, (BM,)), mask=caption_ok)

    @triton.jit
    def scores_bwd_kernel(
        img_ptr,
        cap_ptr,
        wmask_ptr,
        gram_ptr,
        qnorm_ptr,
        gout_ptr,
        ds_ptr,
        dgram_ptr,
        dqnorm_ptr,
        N,
        M,
        R,
        D,
        gout_stride,
        smooth,
        lambda_lse,
        RP: tl.constexpr,
        BM: tl.constexpr,
        WP: tl.constexpr,
        BLOCK_D: tl.constexpr,
        T2I: tl.constexpr,
        NORM: tl.constexpr,
        AGG: tl.constexpr,
        Q_AXIS: tl.constexpr,
        C_AXIS: tl.constexpr,
        DOT_PRECISION: tl.constexpr,
        GRAM_PRECISION: tl.constexpr,
        GROUP_C: tl.constexpr,
        UPCAST: tl.constexpr,
    ):
        """Recompute a tile's forward, then write dS and add dGram and d(query norm) atomically."""
        n, cb = _tile_ids(N, M, BM, GROUP_C)
        s = _raw_scores(img_ptr, cap_ptr, n, cb, M, R, D, RP, BM, WP, BLOCK_D, DOT_PRECISION, UPCAST)
        s = tl.reshape(s, (RP, BM, WP))
        rmask, wmask, caption_ok = _tile_masks(wmask_ptr, cb, M, R, RP, BM, WP)
        if T2I:
            qmask = wmask
            cmask = rmask
        else:
            qmask = rmask
            cmask = wmask
        gram = _load_context_gram(gram_ptr, n, cb, M, R, RP, BM, WP, T2I)
        qn = _load_query_norm(qnorm_ptr, n, cb, M, R, RP, BM, WP, T2I)
        c, f, nrm, alpha, dot, ga, q, root, den, rel, out = _tile_forward(
            s,
            gram,
            qn,
            qmask,
            cmask,
            smooth,
            lambda_lse,
            RP,
            BM,
            WP,
            T2I,
            NORM,
            AGG,
            Q_AXIS,
            C_AXIS,
            GRAM_PRECISION,
        )
        m = cb * BM + tl.arange(0, BM)
        g = tl.load(gout_ptr + n.to(tl.int64) * gout_stride + m, mask=caption_ok, other=0.0)
        g = g[None, :, None]  # (1, BM, 1)

        drel = _pool_bwd(rel, out, g, qmask, lambda_lse, AGG, Q_AXIS)
        den_safe = tl.maximum(den, _EPS)
        ddot = drel / den_safe
        dden = tl.where(den > _EPS, -drel * dot / (den_safe * den_safe), 0.0)
        dq = tl.where(q > _EPS2, dden * qn * 0.5 / root, 0.0)
        dqn = dden * root
        dalpha = ddot * s + 2.0 * dq * ga
        dlogits = alpha * (dalpha - tl.sum(alpha * dalpha, axis=C_AXIS, keep_dims=True))
        ds = ddot * alpha + _normalise_bwd(dlogits * smooth, s, c, f, nrm, qmask, NORM, Q_AXIS)
        ds = tl.where(rmask & wmask, ds, 0.0)

        r = tl.arange(0, RP)
        j = tl.arange(0, BM * WP)
        ds_ptrs = ds_ptr + (n * R + r).to(tl.int64)[:, None] * (M * WP) + (cb * BM * WP + j)[None, :]
        ds_ok = (r[:, None] < R) & ((cb * BM + j // WP) < M)[None, :]
        tl.store(ds_ptrs, tl.reshape(ds, (RP, BM * WP)).to(ds_ptr.dtype.element_ty), mask=ds_ok)

        alpha2 = tl.reshape(alpha, (RP, BM * WP))
        weighted2 = tl.reshape(alpha * dq, (RP, BM * WP))
        if T2I:
            # dG[n] += sum over word slots of dq * alpha alpha^T   (RP, RP)
            dgram = tl.dot(weighted2, tl.trans(alpha2), input_precision=GRAM_PRECISION)
            ok = (r[:, None] < R) & (r[None, :] < R)
            tl.atomic_add(dgram_ptr + n.to(tl.int64) * R * R + r[:, None] * R + r[None, :], dgram, mask=ok)
            # d|e_w| summed over images   (BM, WP)
            w = tl.arange(0, WP)
            mm = cb * BM + tl.arange(0, BM)
            ptrs = dqnorm_ptr + mm.to(tl.int64)[:, None] * WP + w[None, :]
            tl.atomic_add(ptrs, tl.reshape(dqn, (BM, WP)), mask=caption_ok[:, None])
        else:
            # dGc[m] += sum over regions of dq * alpha alpha^T, the diagonal blocks only
            dgram = tl.dot(tl.trans(weighted2), alpha2, input_precision=GRAM_PRECISION)  # (BM * WP, BM * WP)
            m_j = j // WP
            same = (m_j[:, None] == m_j[None, :]) & ((cb * BM + m_j) < M)[:, None]
            base = (cb * BM + m_j).to(tl.int64) * WP * WP + (j % WP) * WP
            tl.atomic_add(dgram_ptr + base[:, None] + (j % WP)[None, :], dgram, mask=same)
            # d|v_r| summed over captions   (RP,)
            dqn_r = tl.reshape(tl.sum(dqn, axis=1), (RP,))
            tl.atomic_add(dqnorm_ptr + n.to(tl.int64) * R + r, dqn_r, mask=r < R)

    return {"fwd": scores_fwd_kernel, "bwd": scores_bwd_kernel}


# ---------------------------------------------------------------------------------------------
# Host side: preparing operands, launching, and the autograd function.


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def _check_options(options: AttentionOptions) -> None:
    """Refuse options without a kernel: the tables must list triton, and the kernels need a code.

    Raises:
        BackendError: The norm or pooling is not implemented by the Triton kernels.
    """
    if not isinstance(options, AttentionOptions):
        raise TypeError(f"options must be a scan.similarity.options.AttentionOptions, got {type(options).__name__}")
    options.require("triton")
    # The tables claim triton here; without a kernel code the launch would compute another
    # option (the kernels' `else` branches), so refuse rather than trust the table alone.
    missing = [
        f"{kind} {name!r}"
        for kind, name, codes in (
            ("raw_feature_norm", options.norm, _NORM_CODES),
            ("pooling", options.agg, _POOL_CODES),
        )
        if name not in codes
    ]
    if missing:
        raise BackendError(f"the triton backend does not implement {' or '.join(missing)}; use backend='torch'")


def _constant_smooth(options: AttentionOptions, smooth: torch.Tensor | None) -> AttentionOptions:
    """`options` with lambda_1 from a `smooth` override that needs no gradient (as a float).

    Raises:
        BackendError: `smooth` needs a gradient: the kernels have none for lambda_1.
    """
    if smooth is None:
        return options
    if smooth.requires_grad and torch.is_grad_enabled():
        raise BackendError(
            "the triton backend does not implement a learned lambda_softmax (model.learn_lambda): "
            "its kernels have no gradient for lambda_1; use backend='torch'"
        )
    return dataclasses.replace(options, smooth=float(smooth))


def _dot_precisions(precision: str) -> tuple[str, str]:
    """tl.dot input precision of the raw-score product and of the small Gram products."""
    if precision == "fp32":
        return "ieee", "ieee"
    return "tf32", "tf32"


def _compute_dtype(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16" else torch.float32


def _caption_buckets(lengths: torch.Tensor, max_chunk: int) -> list[tuple[int, torch.Tensor]]:
    """Caption indices grouped by padded width `WP` (a power of two), in chunks of `max_chunk`."""
    widths = torch.tensor([_next_pow2(int(x)) for x in lengths.tolist()], dtype=torch.long)
    buckets = []
    for wp in sorted(set(widths.tolist())):
        index = torch.nonzero(widths == wp).flatten()
        for start in range(0, len(index), max_chunk):
            buckets.append((wp, index[start : start + max_chunk]))
    return buckets


def _tile_shape(num_regions: int, wp: int, columns: int) -> tuple[int, int]:
    """(RP, BM): padded regions and captions per tile, with every tl.dot dimension >= 16."""
    rp = max(16, _next_pow2(num_regions))
    bm = max(1, columns // wp)
    while bm * wp < 16:
        bm *= 2
    return rp, bm


def _prepare_captions(
    captions: torch.Tensor, mask: torch.Tensor, wp: int, *, device, dtype, direction: str
) -> dict[str, torch.Tensor]:
    """Pad a bucket to width `wp`, zero its padded words, and compute what the kernel reads."""
    m, width = mask.shape
    keep = min(width, wp)
    words = torch.zeros(m, wp, captions.shape[-1], device=device, dtype=dtype)  # (m, WP, D)
    word_mask = torch.zeros(m, wp, device=device, dtype=torch.bool)  # (m, WP)
    word_mask[:, :keep] = mask[:, :keep].to(device)
    # masked_fill, not a product with the mask: padding may hold inf or NaN, which 0 * x keeps.
    words[:, :keep] = captions[:, :keep].to(device, dtype).masked_fill(~word_mask[:, :keep, None], 0)
    prepared = {"words": words, "mask": word_mask.to(torch.int8)}
    as_float = words.float()
    if direction == "t2i":
        prepared["norm"] = as_float.norm(dim=-1)  # (m, WP)
    else:
        prepared["gram"] = torch.bmm(as_float, as_float.transpose(1, 2))  # (m, WP, WP)
    return prepared


def _prepare_images(images: torch.Tensor, *, device, dtype, direction: str) -> dict[str, torch.Tensor]:
    regions = images.to(device, dtype).contiguous()  # (n, R, D)
    prepared = {"regions": regions}
    as_float = regions.float()
    if direction == "t2i":
        prepared["gram"] = torch.bmm(as_float, as_float.transpose(1, 2))  # (n, R, R)
    else:
        prepared["norm"] = as_float.norm(dim=-1)  # (n, R)
    return prepared


def _launch_config(
    kind: str, precision: str, *, wp: int, num_regions: int, embed_dim: int, options: AttentionOptions
) -> dict:
    """Constexprs and launch options of the `kind` ("fwd" or "bwd") kernel for one length bucket."""
    config = TILE_CONFIGS[kind, precision]
    rp, bm = _tile_shape(num_regions, wp, config["columns"])
    dot_precision, gram_precision = _dot_precisions(precision)
    meta = dict(
        RP=rp,
        BM=bm,
        WP=wp,
        BLOCK_D=min(config["block_d"], max(16, _next_pow2(embed_dim))),
        T2I=options.direction == "t2i",
        NORM=_NORM_CODES[options.norm],
        AGG=_POOL_CODES[options.agg],
        Q_AXIS=2 if options.direction == "t2i" else 0,
        C_AXIS=0 if options.direction == "t2i" else 2,
        DOT_PRECISION=dot_precision,
        GRAM_PRECISION=gram_precision,
        GROUP_C=GROUP_CAPTION_BLOCKS,
        UPCAST=_interpreting() and precision == "bf16",
    )
    if not _interpreting():
        meta.update(num_warps=config["num_warps"], num_stages=config["num_stages"])
    return meta


def _forward_block(img: dict, cap: dict, out: torch.Tensor, *, options: AttentionOptions, precision: str):
    """Launch the forward kernel: out `(n, m)` float32 = scores of img's images x cap's captions."""
    regions, words = img["regions"], cap["words"]
    n, num_regions, embed_dim = regions.shape
    m, wp, _ = words.shape
    meta = _launch_config("fwd", precision, wp=wp, num_regions=num_regions, embed_dim=embed_dim, options=options)
    t2i = options.direction == "t2i"
    gram = img["gram"] if t2i else cap["gram"]
    qnorm = cap["norm"] if t2i else img["norm"]
    grid = (n * _cdiv(m, meta["BM"]),)
    _kernels()["fwd"][grid](
        regions, words, cap["mask"], gram, qnorm, out,
        n, m, num_regions, embed_dim, out.stride(0), options.smooth, options.lambda_lse,
        **meta,
    )  # fmt: skip


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@torch.no_grad()
def score_matrix(
    images: torch.Tensor,
    captions: torch.Tensor,
    caption_lengths: torch.Tensor,
    options: AttentionOptions,
    *,
    precision: str = "bf16",
    memory_budget_mb: float = 2048.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The `(N, M)` float32 CPU score matrix of a whole gallery with the fused kernel.

    Captions are grouped into length buckets; the scores of a chunk of images against every
    caption are written on the device in bucket order, put back in caption order there, and
    copied to the host once per image chunk. Chunks of images (with their rows of the output)
    and of captions are sized so that each stays within half of `memory_budget_mb`; the kernel
    itself keeps no intermediate in memory. Captions are moved to the device one chunk at a
    time, once per image chunk (once in all unless the gallery exceeds the budget).

    Args:
        images: `(N, R, D)` region embeddings (any device).
        captions: `(M, W, D)` word embeddings, padded (any device).
        caption_lengths: `(M,)` number of real words of each caption (at least 1).
        options: direction, norm, smooth (lambda_1), agg and lambda_lse.
        precision: `bf16`, `tf32` or `fp32` (see the module docstring).
        memory_budget_mb: bound on the device memory this call holds.
        device: where to run; defaults to `images.device`.

    Raises:
        BackendError: The kernels do not implement the norm or pooling of `options`.
    """
    _check_options(options)
    _check_precision(precision)
    direction = options.direction
    device = images.device if device is None else torch.device(device)
    dtype = _compute_dtype(precision)
    num_images, num_regions, embed_dim = images.shape
    num_captions, width, _ = captions.shape
    lengths = caption_lengths.to("cpu", torch.long)
    item = torch.finfo(dtype).bits // 8
    wp_max = _next_pow2(width)
    per_image = num_regions * (embed_dim * item + 4 * num_regions) + 2 * 4 * num_captions  # + output rows
    per_caption = wp_max * (embed_dim * item + 4 * wp_max + 5)
    half = memory_budget_mb * 2**20 / 2
    image_chunk = max(1, int(half // per_image))
    buckets = _caption_buckets(lengths, max(1, int(half // per_caption)))
    order = torch.cat([index for _, index in buckets])  # output column -> caption
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(num_captions)
    inverse = inverse.to(device)

    def prepare(index: torch.Tensor, wp: int) -> dict[str, torch.Tensor]:
        keep = min(wp, width)
        mask = torch.arange(keep)[None, :] < lengths[index][:, None]  # (m, keep)
        block = captions[index.to(captions.device), :keep]  # (m, keep, D)
        return _prepare_captions(block, mask, wp, device=device, dtype=dtype, direction=direction)

    scores = torch.empty(num_images, num_captions, dtype=torch.float32)
    for start in range(0, num_images, image_chunk):
        img = _prepare_images(images[start : start + image_chunk], device=device, dtype=dtype, direction=direction)
        out = torch.empty(img["regions"].shape[0], num_captions, dtype=torch.float32, device=device)
        column = 0
        for wp, index in buckets:
            _forward_block(
                img, prepare(index, wp), out[:, column : column + len(index)], options=options, precision=precision
            )
            column += len(index)
        scores[start : start + len(out)] = out[:, inverse].cpu()  # back to caption order
    return scores


class TritonScanScores(torch.autograd.Function):
    """Differentiable `(B, B')` SCAN scores of a training batch with the fused kernels."""

    @staticmethod
    def forward(ctx, images, captions, caption_mask, options: AttentionOptions, precision: str):
        direction = options.direction
        dtype = _compute_dtype(precision)
        device = images.device
        mask = caption_mask.to(torch.bool)
        lengths = _mask_extent(mask)
        img = _prepare_images(images.detach(), device=device, dtype=dtype, direction=direction)
        scores = torch.empty(images.shape[0], captions.shape[0], dtype=torch.float32, device=device)
        buckets = _caption_buckets(lengths.cpu(), captions.shape[0])
        caps = []
        for wp, index in buckets:
            index = index.to(device)
            cap = _prepare_captions(
                captions.detach()[index], mask[index], wp, device=device, dtype=dtype, direction=direction
            )
            out = torch.empty(images.shape[0], len(index), dtype=torch.float32, device=device)
            _forward_block(img, cap, out, options=options, precision=precision)
            scores[:, index] = out
            caps.append((index, cap))
        ctx.save_for_backward(images, captions)
        ctx.mask = mask
        ctx.prepared = (img, caps)
        ctx.options = options
        ctx.precision = precision
        return scores.to(images.dtype)

    @staticmethod
    def backward(ctx, grad_scores):
        images, captions = ctx.saved_tensors
        mask = ctx.mask
        img, caps = ctx.prepared
        options = ctx.options
        direction = options.direction
        grad_scores = grad_scores.float().contiguous()
        regions = img["regions"]  # (N, R, D) compute dtype
        num_images, num_regions, embed_dim = regions.shape
        grad_images = torch.zeros(images.shape, dtype=torch.float32, device=images.device)
        grad_captions = torch.zeros(captions.shape, dtype=torch.float32, device=captions.device)
        grad_image_gram = (
            torch.zeros(num_images, num_regions, num_regions, device=images.device) if direction == "t2i" else None
        )
        grad_image_norm = torch.zeros(num_images, num_regions, device=images.device) if direction == "i2t" else None
        regions_f = regions.float()
        flat_regions = regions_f.reshape(num_images * num_regions, embed_dim)
        for index, cap in caps:
            words = cap["words"]  # (m, WP, D)
            m, wp, _ = words.shape
            meta = _launch_config(
                "bwd", ctx.precision, wp=wp, num_regions=num_regions, embed_dim=embed_dim, options=options
            )
            grad_s = torch.empty(num_images * num_regions, m * wp, dtype=torch.float32, device=regions.device)
            if grad_image_gram is not None:  # t2i: the context is the image
                gram, qnorm = img["gram"], cap["norm"]
                grad_gram, grad_qnorm = grad_image_gram, torch.zeros(m, wp, device=regions.device)
            else:  # i2t: the context is the caption
                assert grad_image_norm is not None
                gram, qnorm = cap["gram"], img["norm"]
                grad_gram, grad_qnorm = torch.zeros(m, wp, wp, device=regions.device), grad_image_norm
            block_grad = grad_scores[:, index].contiguous()
            grid = (num_images * _cdiv(m, meta["BM"]),)
            _kernels()["bwd"][grid](
                regions, words, cap["mask"], gram, qnorm, block_grad,
                grad_s, grad_gram, grad_qnorm,
                num_images, m, num_regions, embed_dim, block_grad.stride(0),
                options.smooth, options.lambda_lse,
                **meta,
            )  # fmt: skip
            words_f = words.float()
            grad_images += (grad_s @ words_f.reshape(m * wp, embed_dim)).view(num_images, num_regions, embed_dim)
            grad_words = (grad_s.t() @ flat_regions).view(m, wp, embed_dim)  # (m, WP, D)
            if direction == "t2i":
                grad_words += grad_qnorm[..., None] * words_f / words_f.norm(dim=-1, keepdim=True).clamp(min=EPS)
            else:
                grad_words += torch.bmm(grad_gram + grad_gram.transpose(1, 2), words_f)
            keep = min(wp, captions.shape[1])
            grad_captions[index, :keep] += grad_words[:, :keep].masked_fill(~mask[index, :keep, None], 0)
        if grad_image_gram is not None:  # t2i
            grad_images += torch.bmm(grad_image_gram + grad_image_gram.transpose(1, 2), regions_f)
        if grad_image_norm is not None:  # i2t
            grad_images += grad_image_norm[..., None] * regions_f / regions_f.norm(dim=-1, keepdim=True).clamp(min=EPS)
        return grad_images.to(images.dtype), grad_captions.to(captions.dtype), None, None, None


def _mask_extent(mask: torch.Tensor) -> torch.Tensor:
    """`(M, W)` word mask -> `(M,)` index of the last real word + 1 (the width a caption needs)."""
    positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    return (mask * positions).amax(dim=1).clamp(min=1)


def batch_scores(
    images: torch.Tensor,
    captions: torch.Tensor,
    caption_mask: torch.Tensor,
    options: AttentionOptions,
    *,
    precision: str = "bf16",
    smooth: torch.Tensor | None = None,
) -> torch.Tensor:
    """Differentiable `(B, B')` scores of a training batch (forward and backward in Triton).

    Args:
        images: `(B, R, D)` region embeddings on the GPU.
        captions: `(B', W, D)` word embeddings, padded (padding never gets a gradient).
        caption_mask: `(B', W)` True at real words; every caption needs at least one.
        options: direction, norm, smooth (lambda_1), agg and lambda_lse.
        precision: `bf16`, `tf32` or `fp32` (see the module docstring).
        smooth: lambda_1 as a 0-dim tensor in place of `options.smooth`; accepted only where it
            needs no gradient (e.g. a learned lambda_1 under `torch.no_grad()`).

    Raises:
        BackendError: The kernels do not implement the norm or pooling of `options`, or `smooth`
            needs a gradient.
    """
    _check_options(options)
    _check_precision(precision)
    options = _constant_smooth(options, smooth)
    return TritonScanScores.apply(images, captions, caption_mask, options, precision)
