"""Benchmark: SCAN pairwise scoring, the authors' original evaluation loop against our paths.

Generates inputs of the real shapes (36 regions, D = 1024 unit vectors, caption lengths like
Flickr30K's, about 12 words on average) and, in one run, times:

- the faithful port of the original evaluation (`original_port.py`: 128 x 128 shards, a Python
  loop over captions, float64 as the original's numpy arrays were) on a slice of the gallery,
  extrapolated to the whole gallery by its pairs/s (pass the full sizes to measure it whole);
- every path of ours through `scan.similarity.dispatch.score_matrix`, on the whole gallery.

It prints pairs/s, the ratio to the original, peak memory, and the largest relative error of
each path against the original's float64 scores on the slice (max |ours - ref| / max |ref|), then
one JSON line with those figures. With `--batch B` (default 128) it also times one training
step's scores, forward and backward, against the original `xattn_score_*` in float32 with
autograd, as the original training ran.

    python benchmarks/scoring.py --images 1000 --captions 5000 --direction t2i --device cpu
    python benchmarks/scoring.py --images 5000 --captions 25000 --direction t2i --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import original_port
from scan.similarity import dispatch
from scan.similarity.options import AttentionOptions

NUM_REGIONS = 36
EMBED_DIM = 1024
DEFAULTS = {  # the authors' recipes: t2i lambda_1 = 9, LSE lambda_2 = 6; i2t lambda_1 = 4, lambda_2 = 5
    "t2i": dict(smooth=9.0, lambda_lse=6.0),
    "i2t": dict(smooth=4.0, lambda_lse=5.0),
}


def caption_lengths(count: int, generator: torch.Generator, source: str | None) -> torch.Tensor:
    """Flickr30K-like lengths: from a caption file (tokens + <start>/<end>) or log-normal, mean ~12."""
    if source:
        lines = Path(source).read_text().splitlines()
        real = torch.tensor([len(line.split()) + 2 for line in lines if line.strip()])
        return real[torch.arange(count) % len(real)]
    log_lengths = torch.randn(count, generator=generator) * 0.4 + float(np.log(11.0))
    return log_lengths.exp().round().clamp(3, 60).long()


def make_inputs(num_images: int, num_captions: int, seed: int, lengths_from: str | None):
    """Unit region and word vectors, zero padding (as the original's np.zeros buffers)."""
    g = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(num_images, NUM_REGIONS, EMBED_DIM, generator=g), dim=-1)  # (N, R, D)
    lengths = caption_lengths(num_captions, g, lengths_from)  # (M,)
    width = int(lengths.max())
    captions = torch.zeros(num_captions, width, EMBED_DIM)  # (M, W, D)
    for start in range(0, num_captions, 4096):  # in chunks: the full randn would double the memory
        block = F.normalize(torch.randn(min(4096, num_captions - start), width, EMBED_DIM, generator=g), dim=-1)
        block *= (torch.arange(width)[None, :] < lengths[start : start + 4096, None])[..., None]
        captions[start : start + 4096] = block
    return images, captions, lengths


class PeakMemory:
    """Peak memory a block of code adds: the CUDA allocator's peak, or on the CPU the process's
    peak resident set (VmHWM, reset through /proc/self/clear_refs; no sampling thread, which
    would take a core from the two OpenMP threads and slow them down badly)."""

    def __init__(self, device: torch.device):
        self.device = device

    @staticmethod
    def _status(field: str) -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak RSS to the current RSS
            self.base = self._status("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.mb = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        else:
            self.mb = (self._status("VmHWM") - self.base) / 2**20


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.double() - ref).abs().max() / ref.abs().max().clamp(min=1e-12))


def default_paths(device: torch.device) -> list[tuple[str, str]]:
    if device.type == "cuda":
        paths = [("torch", "fp32"), ("torch", "bf16")]
        if "triton" in dispatch.available_backends(device):
            paths = [("triton", "bf16"), ("triton", "tf32"), ("triton", "fp32"), *paths]
        return paths
    return [("torch", "fp32")]


def time_original(images, captions, lengths, *, direction, options, device, orig_images, orig_captions):
    """Run the port on the first images x an evenly spread sample of captions; return scores, s."""
    caption_index = torch.linspace(0, len(lengths) - 1, orig_captions).round().long()
    ims = images[:orig_images].double().numpy()  # float64, as np.zeros made them
    caps = captions[caption_index].double().numpy()
    lens = lengths[caption_index].tolist()
    opt = original_port.Options(
        raw_feature_norm=options["norm"],
        lambda_softmax=options["smooth"],
        agg_func=options["agg"],
        lambda_lse=options["lambda_lse"],
    )
    sync(device)
    start = time.perf_counter()
    ref = original_port.shard_xattn(ims, caps, lens, opt, direction=direction, device=device)
    sync(device)
    return torch.from_numpy(ref), caption_index, time.perf_counter() - start


def time_ours(images, captions, lengths, *, backend, precision, options, device, budget):
    attention = AttentionOptions(**options)
    kwargs = dict(backend=backend, precision=precision, device=device, memory_budget_mb=budget)
    dispatch.score_matrix(images[:64], captions[:256], lengths[:256], attention, **kwargs)  # warm-up, JIT compile
    with PeakMemory(device) as memory:
        sync(device)
        start = time.perf_counter()
        scores = dispatch.score_matrix(images, captions, lengths, attention, **kwargs)
        sync(device)
        seconds = time.perf_counter() - start
    return scores, seconds, memory.mb


def time_train_step(batch, *, direction, options, device, paths, repeats, seed):
    """One batch's (B, B) scores, forward + backward: the original loop in float32 vs ours."""
    images, captions, lengths = make_inputs(batch, batch, seed + 1, None)
    images, captions = images.to(device), captions.to(device)
    mask = (torch.arange(captions.shape[1])[None] < lengths[:, None]).to(device)
    weights = torch.randn(batch, batch, device=device)
    opt = original_port.Options(options["norm"], options["smooth"], options["agg"], options["lambda_lse"])
    score_fn = original_port.xattn_score_t2i if direction == "t2i" else original_port.xattn_score_i2t

    def run(fn):
        im = images.clone().requires_grad_()
        cap = captions.clone().requires_grad_()
        (fn(im, cap) * weights).sum().backward()
        return im.grad, cap.grad

    def timed(fn):
        run(fn)  # warm-up
        sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            grads = run(fn)
        sync(device)
        return (time.perf_counter() - start) / repeats, grads

    original_s, (ref_im, ref_cap) = timed(lambda im, cap: score_fn(im, cap, lengths.tolist(), opt))
    attention = AttentionOptions(**options)
    rows = []
    for backend, precision in paths:
        seconds, (g_im, g_cap) = timed(
            lambda im, cap, backend=backend, precision=precision: dispatch.batch_scores(
                im, cap, mask, attention, backend=backend, precision=precision
            )
        )
        rows.append(
            dict(
                path=f"{backend}/{precision}",
                ms=seconds * 1e3,
                speedup=original_s / seconds,
                grad_rel_err=max(rel_err(g_im, ref_im.double()), rel_err(g_cap, ref_cap.double())),
            )
        )
    return dict(batch=batch, original_ms=original_s * 1e3, paths=rows)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    with open("/proc/cpuinfo") as cpuinfo:
        model = next(
            (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
            platform.processor(),
        )
    return f"{model}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--captions", type=int, default=5000)
    parser.add_argument("--direction", choices=("t2i", "i2t"), default="t2i")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--norm", default="clipped_l2norm")
    parser.add_argument("--agg", default="LogSumExp")
    parser.add_argument("--smooth", type=float, default=None, help="lambda_1 (default: the recipe's)")
    parser.add_argument("--lambda-lse", type=float, default=None, help="lambda_2 (default: the recipe's)")
    parser.add_argument("--original-images", type=int, default=128, help="slice the original port runs on")
    parser.add_argument("--original-captions", type=int, default=640)
    parser.add_argument("--paths", default=None, help="comma-separated backend/precision, e.g. torch/fp32")
    parser.add_argument("--memory-budget-mb", type=float, default=None)
    parser.add_argument("--batch", type=int, default=128, help="training-step batch (0: skip)")
    parser.add_argument("--train-repeats", type=int, default=3)
    parser.add_argument("--lengths-from", default=None, help="caption file whose lengths to use")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    options = dict(direction=args.direction, norm=args.norm, agg=args.agg, **DEFAULTS[args.direction])
    if args.smooth is not None:
        options["smooth"] = args.smooth
    if args.lambda_lse is not None:
        options["lambda_lse"] = args.lambda_lse
    AttentionOptions(**options)  # a misspelt --norm or --agg fails here, before any timing
    paths = [tuple(p.split("/")) for p in args.paths.split(",")] if args.paths else default_paths(device)
    orig_images = min(args.original_images, args.images)
    orig_captions = min(args.original_captions, args.captions)
    pairs = args.images * args.captions

    load_before = os.getloadavg()[0]  # other work on the machine makes every figure slower
    images, captions, lengths = make_inputs(args.images, args.captions, args.seed, args.lengths_from)
    print(
        f"{args.images} images x {args.captions} captions ({pairs / 1e6:.1f}M pairs), {args.direction}, "
        f"{options}, mean caption length {lengths.float().mean():.1f}, on {device_name(device)}",
        flush=True,
    )

    ref, caption_index, original_s = time_original(
        images, captions, lengths, direction=args.direction, options=options, device=device,
        orig_images=orig_images, orig_captions=orig_captions,
    )  # fmt: skip
    original_rate = orig_images * orig_captions / original_s
    measured_whole = orig_images == args.images and orig_captions == args.captions
    result = dict(
        command="python benchmarks/scoring.py " + " ".join(sys.argv[1:] if argv is None else argv),
        device=device_name(device),
        images=args.images,
        captions=args.captions,
        direction=args.direction,
        options=options,
        mean_caption_length=round(float(lengths.float().mean()), 2),
        original=dict(
            pairs_per_s=original_rate,
            measured_pairs=orig_images * orig_captions,
            seconds=pairs / original_rate,
            extrapolated=not measured_whole,
        ),
        paths=[],
    )
    header = f"{'path':<16}{'seconds':>10}{'pairs/s':>14}{'x original':>12}{'peak MB':>10}{'max rel err':>13}"
    print(header)
    note = "measured" if measured_whole else f"extrapolated from {orig_images}x{orig_captions}"
    print(
        f"{'original (f64)':<16}{pairs / original_rate:>10.1f}{original_rate:>14,.0f}{1.0:>12.1f}{'':>10}{'ref':>13}  ({note})"
    )
    for backend, precision in paths:
        scores, seconds, memory_mb = time_ours(
            images, captions, lengths, backend=backend, precision=precision, options=options, device=device,
            budget=args.memory_budget_mb,
        )  # fmt: skip
        error = rel_err(scores[:orig_images, caption_index], ref)
        rate = pairs / seconds
        row = dict(
            path=f"{backend}/{precision}",
            seconds=seconds,
            pairs_per_s=rate,
            speedup=rate / original_rate,
            peak_mb=memory_mb,
            max_rel_err=error,
        )
        result["paths"].append(row)
        print(
            f"{row['path']:<16}{seconds:>10.2f}{rate:>14,.0f}{row['speedup']:>12.1f}{memory_mb:>10.0f}{error:>13.1e}",
            flush=True,
        )

    if args.batch:
        train = time_train_step(
            args.batch, direction=args.direction, options=options, device=device, paths=paths,
            repeats=args.train_repeats, seed=args.seed,
        )  # fmt: skip
        result["train"] = train
        print(f"\ntraining step, batch {args.batch}, scores forward + backward (original in float32):")
        print(f"{'path':<16}{'ms':>10}{'x original':>12}{'grad rel err':>14}")
        print(f"{'original (f32)':<16}{train['original_ms']:>10.1f}{1.0:>12.1f}{'ref':>14}")
        for row in train["paths"]:
            print(f"{row['path']:<16}{row['ms']:>10.1f}{row['speedup']:>12.1f}{row['grad_rel_err']:>14.1e}")
    result["load_average"] = dict(before=load_before, after=os.getloadavg()[0])
    print(f"\n1-minute load average: {load_before:.2f} before, {result['load_average']['after']:.2f} after")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
