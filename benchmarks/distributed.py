"""Benchmark: training on 1 and 2 processes (torchrun, Gloo on the CPU), speed and what cross-rank negatives give.

Speed: the demo's SCAN t2i recipe on the demo's features for `--steps` optimizer steps, as one
process (torch using every core) and as 2 processes under torchrun (one thread each: the cores
are shared out, not oversubscribed), with the global batch `data.batch_size` the same in both.
Steps/s come from the training loop's own clock in `metrics.jsonl` (between the first and the
last logged step), with validation off, so start-up and validation are not counted.

Quality (`--quality`): the whole demo recipe (8 epochs) on 2 processes, with negatives searched
within each rank's half of the batch (the default) and over the whole batch
(`train.cross_rank_negatives=true`), and on one process; the best dev rsum of each (the test
split is not looked at: this is a choice).

    python benchmarks/distributed.py --features reports/flickr8k-demo/features-bottomup \\
        --out reports/distributed --steps 100 --quality
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

CONFIG = "demo_flickr8k"


def run(processes: int, features: Path, run_dir: Path, overrides: list[str], threads: int, device: str = "cpu") -> None:
    if run_dir.exists():
        shutil.rmtree(run_dir)
    args = ["train", "--config", CONFIG, "--data", str(features), "--run-dir", str(run_dir), "--device", device]
    args += ["train.progress=false", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if processes == 1:
        command = [sys.executable, "-m", "scan", *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
        command += ["-m", "scan", *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", required=True, help="the demo's features folder")
    parser.add_argument("--out", required=True, help="where the runs go (replaced)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--quality", action="store_true", help="also train the whole recipe three ways")
    parser.add_argument("--device", default="cpu", help="cpu (Gloo), or cuda (NCCL: one GPU per process)")
    args = parser.parse_args()
    out, features = Path(args.out), Path(args.features)
    cores = os.cpu_count() or 1
    print(f"{cores} CPUs; demo recipe, global batch 128, {args.steps} steps")
    print("| processes | threads each | negatives | steps/s | captions/s | x one process |")
    print("|---:|---:|---|---:|---:|---:|")
    speed = [
        ("one", 1, cores, []),
        ("two", 2, max(1, cores // 2), []),
        ("two-cross", 2, max(1, cores // 2), ["train.cross_rank_negatives=true"]),
    ]
    base = None
    for name, processes, threads, extra in speed:
        run_dir = out / f"speed-{name}"
        overrides = [f"train.max_steps={args.steps}", "train.log_every_steps=10", "train.checkpoint_every_steps=0"]
        overrides.append("data.val_split=")  # no validation inside the timed loop (rank 0 would do it alone)
        run(processes, features, run_dir, [*overrides, *extra], threads, args.device)
        logged = [r for r in records(run_dir) if "time" in r]
        first, last = logged[0], logged[-1]
        rate = (last["step"] - first["step"]) / (last["time"] - first["time"])
        base = base or rate
        negatives = "whole batch" if extra else ("batch" if processes == 1 else "own half")
        print(f"| {processes} | {threads} | {negatives} | {rate:.2f} | {rate * 128:.0f} | {rate / base:.2f} |")

    if args.quality:
        print("\n| training | best dev rsum | at step |")
        print("|---|---:|---:|")
        for name, processes, threads, extra in [
            ("one process", 1, cores, []),
            ("2 processes, negatives within each rank's half", 2, max(1, cores // 2), []),
            ("2 processes, negatives over the whole batch", 2, max(1, cores // 2), ["train.cross_rank_negatives=true"]),
        ]:
            run_dir = out / ("quality-" + name.replace(" ", "-").replace(",", "").replace("'", ""))
            run(processes, features, run_dir, extra, threads, args.device)
            dev = [r for r in records(run_dir) if "rsum" in r]
            best = max(dev, key=lambda r: r["rsum"])
            print(f"| {name} | {best['rsum']:.1f} | {best['step']} |")


if __name__ == "__main__":
    main()
