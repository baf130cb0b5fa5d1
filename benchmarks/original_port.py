"""A faithful port of the SCAN authors' evaluation-time scoring (kuanghuei/SCAN, 2018).

This is the baseline that `benchmarks/scoring.py` times our paths against, so it keeps the
original's structure and cost on purpose: `shard_xattn_t2i`/`shard_xattn_i2t` cut the gallery
into 128 x 128 shards, and inside each shard `xattn_score_t2i`/`xattn_score_i2t` loop in Python
over the captions, repeat each caption once per image of the shard, and call `func_attention`,
which forms the attended vectors explicitly. Embeddings are float64 numpy arrays, as they were in
the original `encode_data` (`np.zeros` defaults to float64), so every tensor is float64.

The only departures from the released code are the ones Python 3 and a modern PyTorch force, or
that stop it from crashing, none of which changes the arithmetic or the loop structure:
- `Variable(..., volatile=True)` becomes `torch.no_grad()`; `.cuda()` becomes `.to(device)`, so the
  port also runs on the CPU.
- `(len(images)-1)/shard_size + 1` becomes integer division (`//`), as Python 2 did.
- `nn.Softmax()` without `dim` becomes `torch.softmax(..., dim=1)`, the dimension the old implicit
  rule picked for 2-D input.
- `l1norm_d`, which the released code called but never defined, becomes the `l1norm` it meant.
- `cosine_similarity` no longer calls `.squeeze()`, which broke a shard holding a single image or
  a single-word caption; for every other shape it was a no-op.
- the `\\r>> shard_xattn batch (i,j)` progress line on stdout is left out.

No masks are used (each caption is sliced to its length, as the original did) and LogSumExp
exponentiates without the max shift, exactly as released.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Options:
    """The fields of the original `opt` namespace that scoring reads."""

    raw_feature_norm: str = "clipped_l2norm"  # normalisation of raw scores over the query axis
    lambda_softmax: float = 9.0  # inverse temperature of the attention softmax (lambda_1)
    agg_func: str = "LogSumExp"  # pooling of relevances: LogSumExp, Mean, Max, Sum
    lambda_lse: float = 6.0  # lambda_2 of LogSumExp pooling


def l1norm(X, dim, eps=1e-8):
    """L1-normalize columns of X"""
    norm = torch.abs(X).sum(dim=dim, keepdim=True) + eps
    X = torch.div(X, norm)
    return X


def l2norm(X, dim, eps=1e-8):
    """L2-normalize columns of X"""
    norm = torch.pow(X, 2).sum(dim=dim, keepdim=True).sqrt() + eps
    X = torch.div(X, norm)
    return X


def func_attention(query, context, opt, smooth, eps=1e-8):
    """
    query: (n_context, queryL, d)
    context: (n_context, sourceL, d)
    """
    _batch_size_q, queryL = query.size(0), query.size(1)
    batch_size, sourceL = context.size(0), context.size(1)

    # Get attention
    # --> (batch, d, queryL)
    queryT = torch.transpose(query, 1, 2)

    # (batch, sourceL, d)(batch, d, queryL)
    # --> (batch, sourceL, queryL)
    attn = torch.bmm(context, queryT)
    if opt.raw_feature_norm == "softmax":
        # --> (batch*sourceL, queryL)
        attn = attn.view(batch_size * sourceL, queryL)
        attn = torch.softmax(attn, dim=1)
        # --> (batch, sourceL, queryL)
        attn = attn.view(batch_size, sourceL, queryL)
    elif opt.raw_feature_norm == "l2norm":
        attn = l2norm(attn, 2)
    elif opt.raw_feature_norm == "clipped_l2norm":
        attn = torch.nn.LeakyReLU(0.1)(attn)
        attn = l2norm(attn, 2)
    elif opt.raw_feature_norm == "l1norm":
        attn = l1norm(attn, 2)
    elif opt.raw_feature_norm == "clipped_l1norm":
        attn = torch.nn.LeakyReLU(0.1)(attn)
        attn = l1norm(attn, 2)
    elif opt.raw_feature_norm == "clipped":
        attn = torch.nn.LeakyReLU(0.1)(attn)
    elif opt.raw_feature_norm == "no_norm":
        pass
    else:
        raise ValueError("unknown first norm type:", opt.raw_feature_norm)
    # --> (batch, queryL, sourceL)
    attn = torch.transpose(attn, 1, 2).contiguous()
    # --> (batch*queryL, sourceL)
    attn = attn.view(batch_size * queryL, sourceL)
    attn = torch.softmax(attn * smooth, dim=1)
    # --> (batch, queryL, sourceL)
    attn = attn.view(batch_size, queryL, sourceL)
    # --> (batch, sourceL, queryL)
    attnT = torch.transpose(attn, 1, 2).contiguous()

    # --> (batch, d, sourceL)
    contextT = torch.transpose(context, 1, 2)
    # (batch x d x sourceL)(batch x sourceL x queryL)
    # --> (batch, d, queryL)
    weightedContext = torch.bmm(contextT, attnT)
    # --> (batch, queryL, d)
    weightedContext = torch.transpose(weightedContext, 1, 2)

    return weightedContext, attnT


def cosine_similarity(x1, x2, dim=1, eps=1e-8):
    """Returns cosine similarity between x1 and x2, computed along dim."""
    w12 = torch.sum(x1 * x2, dim)
    w1 = torch.norm(x1, 2, dim)
    w2 = torch.norm(x2, 2, dim)
    return w12 / (w1 * w2).clamp(min=eps)


def _aggregate(row_sim, opt):
    """The pooling block that the original repeats verbatim in both score functions."""
    if opt.agg_func == "LogSumExp":
        row_sim.mul_(opt.lambda_lse).exp_()
        row_sim = row_sim.sum(dim=1, keepdim=True)
        row_sim = torch.log(row_sim) / opt.lambda_lse
    elif opt.agg_func == "Max":
        row_sim = row_sim.max(dim=1, keepdim=True)[0]
    elif opt.agg_func == "Sum":
        row_sim = row_sim.sum(dim=1, keepdim=True)
    elif opt.agg_func == "Mean":
        row_sim = row_sim.mean(dim=1, keepdim=True)
    else:
        raise ValueError(f"unknown aggfunc: {opt.agg_func}")
    return row_sim


def xattn_score_t2i(images, captions, cap_lens, opt):
    """
    Images: (n_image, n_regions, d) matrix of images
    Captions: (n_caption, max_n_word, d) matrix of captions
    CapLens: (n_caption) array of caption lengths
    """
    similarities = []
    n_image = images.size(0)
    n_caption = captions.size(0)
    for i in range(n_caption):
        # Get the i-th text description
        n_word = int(cap_lens[i])
        cap_i = captions[i, :n_word, :].unsqueeze(0).contiguous()
        # --> (n_image, n_word, d)
        cap_i_expand = cap_i.repeat(n_image, 1, 1)
        """
            word(query): (n_image, n_word, d)
            image(context): (n_image, n_regions, d)
            weiContext: (n_image, n_word, d)
            attn: (n_image, n_region, n_word)
        """
        weiContext, _attn = func_attention(cap_i_expand, images, opt, smooth=opt.lambda_softmax)
        cap_i_expand = cap_i_expand.contiguous()
        weiContext = weiContext.contiguous()
        # (n_image, n_word)
        row_sim = cosine_similarity(cap_i_expand, weiContext, dim=2)
        row_sim = _aggregate(row_sim, opt)
        similarities.append(row_sim)

    # (n_image, n_caption)
    similarities = torch.cat(similarities, 1)
    return similarities


def xattn_score_i2t(images, captions, cap_lens, opt):
    """
    Images: (batch_size, n_regions, d) matrix of images
    Captions: (batch_size, max_n_words, d) matrix of captions
    CapLens: (batch_size) array of caption lengths
    """
    similarities = []
    n_image = images.size(0)
    n_caption = captions.size(0)
    n_region = images.size(1)  # noqa: F841  (kept from the original)
    for i in range(n_caption):
        # Get the i-th text description
        n_word = int(cap_lens[i])
        cap_i = captions[i, :n_word, :].unsqueeze(0).contiguous()
        # (n_image, n_word, d)
        cap_i_expand = cap_i.repeat(n_image, 1, 1)
        """
            word(query): (n_image, n_word, d)
            image(context): (n_image, n_region, d)
            weiContext: (n_image, n_region, d)
            attn: (n_image, n_word, n_region)
        """
        weiContext, _attn = func_attention(images, cap_i_expand, opt, smooth=opt.lambda_softmax)
        # (n_image, n_region)
        row_sim = cosine_similarity(images, weiContext, dim=2)
        row_sim = _aggregate(row_sim, opt)
        similarities.append(row_sim)

    # (n_image, n_caption)
    similarities = torch.cat(similarities, 1)
    return similarities


def _shard_xattn(score_fn, images, captions, caplens, opt, shard_size, device):
    """The body that `shard_xattn_t2i` and `shard_xattn_i2t` share in the original."""
    n_im_shard = (len(images) - 1) // shard_size + 1
    n_cap_shard = (len(captions) - 1) // shard_size + 1

    d = np.zeros((len(images), len(captions)))
    with torch.no_grad():
        for i in range(n_im_shard):
            im_start, im_end = shard_size * i, min(shard_size * (i + 1), len(images))
            for j in range(n_cap_shard):
                cap_start, cap_end = shard_size * j, min(shard_size * (j + 1), len(captions))
                im = torch.from_numpy(images[im_start:im_end]).to(device)
                s = torch.from_numpy(captions[cap_start:cap_end]).to(device)
                l = caplens[cap_start:cap_end]  # noqa: E741  (the original's name)
                sim = score_fn(im, s, l, opt)
                d[im_start:im_end, cap_start:cap_end] = sim.data.cpu().numpy()
    return d


def shard_xattn_t2i(images, captions, caplens, opt, shard_size=128, device="cpu"):
    """
    Computer pairwise t2i image-caption distance with locality sharding
    """
    return _shard_xattn(xattn_score_t2i, images, captions, caplens, opt, shard_size, device)


def shard_xattn_i2t(images, captions, caplens, opt, shard_size=128, device="cpu"):
    """
    Computer pairwise i2t image-caption distance with locality sharding
    """
    return _shard_xattn(xattn_score_i2t, images, captions, caplens, opt, shard_size, device)


def shard_xattn(images, captions, caplens, opt, *, direction, shard_size=128, device="cpu"):
    """`evalrank`'s choice between the two, on `opt.cross_attn`."""
    if direction == "t2i":
        return shard_xattn_t2i(images, captions, caplens, opt, shard_size, device)
    if direction == "i2t":
        return shard_xattn_i2t(images, captions, caplens, opt, shard_size, device)
    raise NotImplementedError(direction)


# ---------------------------------------------------------------------------------------------
# evaluation.py's ranking: `numpy.argsort` order, so a tie with the ground truth is broken by
# position (the sort's), not against it. `sims` is (images, 5 * images), caption 5 i + k of image i.


def i2t(sims):
    """Images->Text (the original's `i2t`): `(r1, r5, r10, medr, meanr)` and the 0-based ranks."""
    npts = sims.shape[0]
    ranks = np.zeros(npts)
    for index in range(npts):
        inds = np.argsort(sims[index])[::-1]
        # Score
        rank = 1e20
        for i in range(5 * index, 5 * index + 5, 1):
            tmp = np.where(inds == i)[0][0]
            if tmp < rank:
                rank = tmp
        ranks[index] = rank
    r1 = 100.0 * len(np.where(ranks < 1)[0]) / len(ranks)
    r5 = 100.0 * len(np.where(ranks < 5)[0]) / len(ranks)
    r10 = 100.0 * len(np.where(ranks < 10)[0]) / len(ranks)
    medr = np.floor(np.median(ranks)) + 1
    meanr = ranks.mean() + 1
    return (r1, r5, r10, medr, meanr), ranks


def t2i(sims):
    """Text->Images (the original's `t2i`): `(r1, r5, r10, medr, meanr)` and the 0-based ranks."""
    npts = sims.shape[0]
    ranks = np.zeros(5 * npts)
    sims = sims.T
    for index in range(npts):
        for i in range(5):
            inds = np.argsort(sims[5 * index + i])[::-1]
            ranks[5 * index + i] = np.where(inds == index)[0][0]
    r1 = 100.0 * len(np.where(ranks < 1)[0]) / len(ranks)
    r5 = 100.0 * len(np.where(ranks < 5)[0]) / len(ranks)
    r10 = 100.0 * len(np.where(ranks < 10)[0]) / len(ranks)
    medr = np.floor(np.median(ranks)) + 1
    meanr = ranks.mean() + 1
    return (r1, r5, r10, medr, meanr), ranks
