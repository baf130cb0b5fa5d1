"""Benchmark: training starts on a data set of COCO's full size with little memory.

Writes a precomputed folder of COCO's training shape, 113,287 images x 36 regions x 2048 dims
(566,435 captions), as a float16 `.npy` made with `open_memmap`: a sparse file, 16.7 GB apparent,
where only `--filled` rows are written with random values and the rest read as zeros (what is
measured is the reader and the training loop, not the features' content). The captions are the
Flickr8k-800 captions, cycled. Then runs `scan train --config coco_t2i_avg` (the authors' COCO
recipe: D = 1024, batch 128, bi-GRU) for `--steps` steps on the CPU as a subprocess and prints
the wall time, the steps it trained, and its peak resident memory (the child's ru_maxrss).
The float32 size the same shape would have is printed beside it: `scan convert --dtype float16`
halves it.

    python benchmarks/full_size.py --work /tmp/coco-shape --steps 5
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CAPTIONS = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k-800" / "captions.txt"
IMAGES, REGIONS, DIM, PER_IMAGE = 113_287, 36, 2048, 5


def write_split(folder: Path, split: str, images: int, filled: int, captions: list[str]) -> None:
    features = np.lib.format.open_memmap(folder / f"{split}_ims.npy", mode="w+", dtype=np.float16,
                                         shape=(images, REGIONS, DIM))  # fmt: skip
    rng = np.random.default_rng(0)
    for start in range(0, min(filled, images), 1024):
        count = min(1024, filled - start)
        features[start : start + count] = rng.standard_normal((count, REGIONS, DIM)).astype(np.float16)
    features.flush()
    del features
    lines = (captions[i % len(captions)] for i in range(images * PER_IMAGE))
    (folder / f"{split}_caps.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="a folder with 17 GB of address space (a sparse file)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--filled", type=int, default=2048, help="rows written with random values")
    args = parser.parse_args()
    work = Path(args.work)
    data = work / "coco_shape"
    if not (data / "train_caps.txt").exists():
        data.mkdir(parents=True, exist_ok=True)
        lines = CAPTIONS.read_text(encoding="utf-8").splitlines()[1:]
        captions = [line.partition(",")[2].strip() for line in lines if line.strip()]
        began = time.perf_counter()
        write_split(data, "train", IMAGES, args.filled, captions)
        write_split(data, "dev", 1000, 1000, captions)
        print(f"wrote {data} in {time.perf_counter() - began:.0f} s")
    ims = data / "train_ims.npy"
    on_disk = ims.stat().st_blocks * 512
    print(f"train_ims.npy: {IMAGES} x {REGIONS} x {DIM} float16, {ims.stat().st_size / 1e9:.1f} GB apparent "
          f"({on_disk / 1e9:.2f} GB allocated); as float32: {IMAGES * REGIONS * DIM * 4 / 1e9:.1f} GB")  # fmt: skip
    run_dir = work / "run"
    command = [sys.executable, "-m", "scan", "train", "--config", "coco_t2i_avg", "--data", str(data),
               "--run-dir", str(run_dir), "--device", "cpu", f"train.max_steps={args.steps}",
               "train.progress=false", "train.log_every_steps=1", "data.workers=0", "data.val_max_images=100",
               "train.checkpoint_every_steps=0"]  # fmt: skip
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    began = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - began
    if result.returncode != 0:
        raise SystemExit(result.stdout[-2000:] + result.stderr[-4000:])
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    steps = [line for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"lr"' in line]
    print(f"scan train --config coco_t2i_avg: {len(steps)} steps (and a validation on 100 dev images) in {wall:.0f} s "
          f"including set-up (vocabulary of {IMAGES * PER_IMAGE} captions); peak resident memory {peak_mb:,.0f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
