"""Kill -9 at random moments, resume, compare: are the final outputs bit-identical?

Measures the claim "random SIGKILLs during training and during feature extraction, then resume:
the final outputs are bit-identical to an uninterrupted run".

* **train**: writes a small synthetic precomputed data set (:func:`scan.data.synthetic.write_synthetic_precomp`)
  and runs ``scan train --config configs/synthetic.yaml`` as a subprocess. One uninterrupted
  reference run; then, per trial, the same training in a fresh run dir is SIGKILLed (its whole
  process group) at random moments, 1 to ``--max-kills-per-trial`` times, and rerun with
  ``--resume`` (or, when it died before its first checkpoint existed, rerun from scratch) until it
  finishes. The final ``checkpoints/latest`` and ``checkpoints/best`` weights (and the latest
  optimizer state and schedule position) are compared tensor by tensor with the reference.
* **extract**: builds a small Karpathy-format folder from real photos (``../shared/data/flickr8k-800``)
  and runs ``scan extract --mode grid`` (and ``--mode bottomup`` with ``--bottomup``) the same way:
  the extractor resumes by itself, so the rerun is the same command. Every output file
  (``{split}_ims.npy``, ``_boxes.npy``, ``_caps.txt``, ``_ids.txt``, ``_extract.json``) is
  compared byte for byte with the reference.

Kill moments are drawn uniformly over the expected remaining duration of each attempt (start-up
plus the remaining share of the work, both measured on the reference run), from a seeded RNG.
Leftover files that only a hard kill leaves behind (hidden ``*.tmp`` files, ``.step-*.tmp-*``
folders) are listed but are not outputs and do not count as differences.

    .venv/bin/python benchmarks/kill_resume.py --trials 5
    .venv/bin/python benchmarks/kill_resume.py --only extract --bottomup --trials 3

Prints a Markdown table and the command line; exits 1 if any trial's final outputs differ (or a
rerun failed), 0 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC_CONFIG_PLACES = (Path("configs") / "synthetic.yaml", Path("src") / "scan" / "configs" / "synthetic.yaml")
PHOTOS_SOURCE = REPO.parent / "shared" / "data" / "flickr8k-800"
EXTRACT_SPLITS = ("train", "dev", "test")
EXTRACT_SUFFIXES = ("_ims.npy", "_boxes.npy", "_caps.txt", "_ids.txt", "_extract.json")


SUBPROCESS_ENV: dict[str, str] = {}  # extra environment of every `scan` subprocess (PYTHONPATH of a snapshot)


def snapshot_source(work: Path, commit: str | None = None) -> Path:
    """Copy src/ into `work` and use that copy from now on, here and in every subprocess.

    Other people may be editing src/ while the benchmark runs for minutes; a snapshot keeps every
    attempt (and the reference) on the same code. With `commit`, src/ of that commit (`git archive`,
    read-only) instead of the working tree. Checked by importing what the jobs run.
    """
    tree = work / ("src-commit" if commit else "src-snapshot")  # holds src/ (and configs/ where there is one)
    tree.mkdir()
    if commit is None:
        shutil.copytree(REPO / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        if (REPO / "configs").is_dir():
            shutil.copytree(REPO / "configs", tree / "configs")
    else:
        for part in ("src", "configs"):
            archive = subprocess.run(["git", "archive", "--format=tar", commit, part], cwd=REPO, capture_output=True)
            if archive.returncode == 0:
                subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
            elif part == "src":
                raise RuntimeError(f"git archive {commit} src failed: {archive.stderr.decode(errors='replace')}")
    target = tree / "src"
    SUBPROCESS_ENV["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH", "")]))
    check = subprocess.run(
        [
            sys.executable,
            "-c",
            "import scan.cli.main, scan.cli.train, scan.cli.extract, scan.train.recipe, "
            "scan.features.extract, scan.data.synthetic; print(scan.__file__)",
        ],
        env=dict(os.environ, **SUBPROCESS_ENV),
        capture_output=True,
        text=True,
    )
    if check.returncode != 0 or not check.stdout.strip().startswith(str(target)):
        raise RuntimeError(f"the snapshot of src/ does not import (someone mid-edit? retry):\n{check.stderr[-2000:]}")
    sys.path.insert(0, str(target))
    return target


def code_version() -> str:
    """The commit, and whether src/ has uncommitted changes (read-only git calls)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "--no-optional-locks", "status", "--porcelain", "--", "src"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head or 'unknown'}" + (" + uncommitted changes in src/" if dirty else "")


def synthetic_config(work: Path, snapshot: Path | None = None) -> Path:
    """A copy (in `work`) of the synthetic recipe: from the snapshot's tree if it has one, else the repository's."""
    roots = ([snapshot.parent] if snapshot is not None else []) + [REPO]
    for root in roots:
        for place in SYNTHETIC_CONFIG_PLACES:
            if (root / place).exists():
                target = work / "synthetic.yaml"
                shutil.copy(root / place, target)
                return target
    raise FileNotFoundError(f"no synthetic.yaml in {', '.join(map(str, SYNTHETIC_CONFIG_PLACES))}")


def scan_command() -> list[str]:
    """The `scan` console script of this interpreter's environment (or `python -m scan.cli.main`)."""
    beside = Path(sys.executable).parent / "scan"
    if beside.exists():
        return [str(beside)]
    venv = REPO / ".venv" / "bin" / "scan"
    if venv.exists():
        return [str(venv)]
    return [sys.executable, "-m", "scan.cli.main"]


# ----------------------------------------------------------------------------- running and killing


@dataclass
class Attempt:
    seconds: float  # wall time of this attempt
    killed: bool  # SIGKILLed by us (else it ran to its end)
    returncode: int
    log: Path  # its stdout + stderr


def run_attempt(
    cmd: list[str], log: Path, kill_after: float | None, *, marker: Path | None = None
) -> tuple[Attempt, float | None]:
    """Run `cmd` in its own process group; SIGKILL the group after `kill_after` seconds if still running.

    Returns the attempt and, when `marker` is given, the seconds until that path first existed
    (polled every 20 ms), used on reference runs to measure the start-up time.
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1", **SUBPROCESS_ENV)
    with open(log, "w") as out:
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True)
        marker_seconds = None
        deadline = None if kill_after is None else start + kill_after
        while True:
            if marker is not None and marker_seconds is None and (marker.exists() or marker.is_symlink()):
                marker_seconds = time.monotonic() - start
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: data-loader workers too
                proc.wait()
                break
            try:
                proc.wait(
                    timeout=0.02
                    if marker is not None and marker_seconds is None
                    else (None if deadline is None else max(0.0, min(0.5, deadline - now)))
                )
                break
            except subprocess.TimeoutExpired:
                continue
        seconds = time.monotonic() - start
    # Killed only if the signal is what ended it: a process that had already exited keeps its status.
    return Attempt(seconds, proc.returncode == -signal.SIGKILL, proc.returncode, log), marker_seconds


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ----------------------------------------------------------------------------- jobs


@dataclass
class Reference:
    folder: Path
    seconds: float  # wall time of the uninterrupted run
    startup: float  # seconds until its first checkpoint appeared (start-up plus one checkpoint's work)


@dataclass
class Comparison:
    identical: bool
    max_abs_diff: float
    details: list[str] = field(default_factory=list)  # what differs
    leftovers: list[str] = field(default_factory=list)  # stray files a hard kill left (not outputs)
    rng_identical: bool | None = None  # train: the RNG state saved in checkpoints/latest equals the reference's


def stray_hidden(ref: Path, got: Path, subfolders: tuple[str, ...]) -> list[str]:
    """Hidden entries (temporary files and folders) in `got` that the reference run does not have."""
    out = []
    for sub in subfolders:
        if not (got / sub).is_dir():
            continue
        have = {p.name for p in (ref / sub).iterdir()} if (ref / sub).is_dir() else set()
        out += [
            str(Path(sub) / p.name)
            for p in sorted((got / sub).iterdir())
            if p.name.startswith(".") and p.name not in have
        ]
    return out


class TrainJob:
    """`scan train` on a synthetic data set; resumable with --resume once checkpoints/latest exists."""

    def __init__(
        self,
        work: Path,
        *,
        config: Path,
        num_train: int,
        num_dev: int,
        epochs: int,
        batch_size: int,
        checkpoint_every: int,
        data_seed: int,
        extra_overrides: list[str] | None = None,
        name: str = "train",
    ) -> None:
        from scan.data.synthetic import write_synthetic_precomp

        self.name = name
        self.config = config
        self.data = work / f"{name.replace(' ', '-')}-data"
        write_synthetic_precomp(
            self.data, num_train=num_train, num_dev=num_dev, num_test=max(num_dev, 5), seed=data_seed
        )
        self.overrides = [
            "train.progress=false",
            f"train.checkpoint_every_steps={checkpoint_every}",
            f"train.epochs={epochs}",
            f"train.lr_decay_epochs={max(1, epochs * 3 // 4)}",
            f"data.batch_size={batch_size}",
            "data.workers=0",
            "train.device=cpu",
            *(extra_overrides or []),
        ]
        self.total_steps = epochs * -(-num_train * 5 // batch_size)
        extra = "".join(f", {o}" for o in extra_overrides or [])
        self.label = (
            f"{name} ({num_train} images, {self.total_steps} steps, checkpoint every {checkpoint_every}{extra})"
        )

    def command(self, folder: Path, *, resume: bool) -> list[str]:
        cmd = [
            *scan_command(),
            "train",
            "--config",
            str(self.config),
            "--data",
            str(self.data),
            "--run-dir",
            str(folder),
        ]
        return cmd + (["--resume"] if resume else []) + self.overrides

    def marker(self, folder: Path) -> Path:
        return folder / "checkpoints" / "latest"

    def has_state(self, folder: Path) -> bool:
        """Whether a rerun can resume: `scan train --resume` needs checkpoints/latest."""
        return (folder / "checkpoints" / "latest").exists()

    def rerun_is_resume(self, folder: Path) -> bool:
        return self.has_state(folder)

    def done_fraction(self, folder: Path) -> float:
        try:
            step = json.loads((folder / "checkpoints" / "latest" / "state.json").read_text())["step"]
        except (OSError, ValueError, KeyError):
            return 0.0
        return min(1.0, step / max(1, self.total_steps))

    def compare(self, ref: Path, got: Path) -> Comparison:
        import torch
        from safetensors.torch import load_file

        out = Comparison(True, 0.0)
        for which in ("latest", "best"):
            for file in ("model.safetensors", "optimizer.safetensors") if which == "latest" else ("model.safetensors",):
                a_path, b_path = ref / "checkpoints" / which / file, got / "checkpoints" / which / file
                if not b_path.exists():
                    out.identical = False
                    out.details.append(f"{which}/{file} missing")
                    continue
                a, b = load_file(str(a_path)), load_file(str(b_path))
                if a.keys() != b.keys():
                    out.identical = False
                    out.details.append(f"{which}/{file}: tensor names differ")
                    continue
                for key in sorted(a):
                    if a[key].shape != b[key].shape:
                        out.identical = False
                        out.details.append(f"{which}/{file}:{key} shape {tuple(a[key].shape)} vs {tuple(b[key].shape)}")
                        continue
                    if not torch.equal(a[key], b[key]):
                        out.identical = False
                        diff = (a[key].double() - b[key].double()).abs().max().item()
                        out.max_abs_diff = max(out.max_abs_diff, diff)
                        out.details.append(f"{which}/{file}:{key} max abs diff {diff:.3g}")
        # Where the run ended and which checkpoint is best (not the run dir, which differs by design).
        if (got / "checkpoints" / "latest" / "state.json").exists():
            sa = json.loads((ref / "checkpoints" / "latest" / "state.json").read_text())
            sb = json.loads((got / "checkpoints" / "latest" / "state.json").read_text())
            for key in ("step", "epoch", "batch_in_epoch", "best_rsum", "best_step"):
                if sa.get(key) != sb.get(key):
                    out.identical = False
                    out.details.append(f"state.json {key}: {sa.get(key)} vs reference {sb.get(key)}")
            # The saved torch RNG state is the run's internal state, not an output: reported apart.
            out.rng_identical = sa.get("rng") == sb.get("rng")
            if not out.rng_identical:
                out.details.append("latest/state.json: torch RNG state differs from the reference's (not an output)")
        for which in ("latest", "best"):
            a, b = (ref / "checkpoints" / which).resolve().name, (got / "checkpoints" / which).resolve().name
            if a != b:
                out.identical = False
                out.details.append(f"checkpoints/{which} -> {b}, reference -> {a}")
        out.leftovers = stray_hidden(ref, got, ("", "checkpoints"))
        return out

    def metrics_identical(self, ref: Path, got: Path) -> bool:
        """metrics.jsonl equal record for record, ignoring the wall-clock `time` field."""

        def records(folder: Path) -> list[dict[str, Any]]:
            lines = (folder / "metrics.jsonl").read_text().splitlines() if (folder / "metrics.jsonl").exists() else []
            return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in lines if line]

        return records(ref) == records(got)


def make_photo_folder(folder: Path, counts: dict[str, int], source: Path = PHOTOS_SOURCE) -> Path:
    """A small Karpathy-format copy of the real photos: `images/` + `dataset_flickr8k_small.json`."""
    dataset = json.loads((source / "dataset_flickr8k_800.json").read_text())
    chosen = [
        image
        for split, count in counts.items()
        for image in [im for im in dataset["images"] if im["split"] == split][:count]
    ]
    (folder / "images").mkdir(parents=True)
    for image in chosen:
        shutil.copy(source / "images" / image["filename"], folder / "images" / image["filename"])
    (folder / "dataset_flickr8k_small.json").write_text(json.dumps({"dataset": "flickr8k", "images": chosen}))
    return folder


class ExtractJob:
    """`scan extract` on a few real photos; the rerun is the same command (it resumes by itself)."""

    name = "extract"

    def __init__(self, photos: Path, *, mode: str, batch_size: int, counts: dict[str, int], workers: int = 0) -> None:
        self.photos = photos
        self.mode = mode
        self.batch_size = batch_size
        self.counts = {"train": counts["train"], "dev": counts["val"], "test": counts["test"]}
        self.workers = workers
        self.name = f"extract {mode}"
        total = sum(self.counts.values())
        self.label = f"extract --mode {mode} ({total} photos, batch size {batch_size})"

    def command(self, folder: Path, *, resume: bool) -> list[str]:
        del resume  # the extractor finds its own progress
        cmd = [
            *scan_command(),
            "extract",
            "--data",
            str(self.photos),
            "--out",
            str(folder),
            "--mode",
            self.mode,
            "--batch-size",
            str(self.batch_size),
            "--quiet",
        ]
        return cmd + (["--workers", str(self.workers)] if self.workers else [])

    def marker(self, folder: Path) -> Path:
        return folder / "train_extract.progress.json"

    def _done_images(self, folder: Path) -> int:
        done = 0
        for split, n in self.counts.items():
            if (folder / f"{split}_extract.json").exists():
                done += n
                continue
            with contextlib.suppress(OSError, ValueError, KeyError):
                done += int(json.loads((folder / f"{split}_extract.progress.json").read_text())["done"])
        return done

    def has_state(self, folder: Path) -> bool:
        """Whether anything an extraction keeps (a finished split or a batch's progress) is on disk."""
        return self._done_images(folder) > 0

    def rerun_is_resume(self, folder: Path) -> bool:
        return self.has_state(folder)

    def done_fraction(self, folder: Path) -> float:
        return self._done_images(folder) / max(1, sum(self.counts.values()))

    def compare(self, ref: Path, got: Path) -> Comparison:
        import numpy as np

        out = Comparison(True, 0.0)
        expected = sorted(p.name for p in ref.iterdir() if p.is_file() and not p.name.startswith("."))
        present = sorted(p.name for p in got.iterdir() if p.is_file() and not p.name.startswith("."))
        for name in expected:
            if not (got / name).exists():
                out.identical = False
                out.details.append(f"{name} missing")
            elif not filecmp.cmp(ref / name, got / name, shallow=False):
                out.identical = False
                detail = f"{name} differs"
                if name.endswith(".npy"):
                    a, b = np.load(ref / name), np.load(got / name)
                    if a.shape == b.shape:
                        diff = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
                        out.max_abs_diff = max(out.max_abs_diff, diff)
                        detail += f" (max abs diff {diff:.3g})"
                    else:
                        detail += f" (shape {b.shape} vs {a.shape})"
                out.details.append(detail)
        for name in sorted(set(present) - set(expected)):  # e.g. a .partial or progress file left behind
            out.identical = False
            out.details.append(f"extra file {name}")
        out.leftovers = stray_hidden(ref, got, ("",))
        return out

    def metrics_identical(self, ref: Path, got: Path) -> bool | None:
        return None


# ----------------------------------------------------------------------------- trials


@dataclass
class TrialResult:
    job: str
    index: int
    kills: int = 0
    resumed_runs: int = 0
    restarts: int = 0  # reruns from scratch (killed before anything was checkpointed)
    kill_times: list[float] = field(default_factory=list)
    kill_progress: list[float] = field(default_factory=list)  # share of the work checkpointed when killed
    redraws: int = 0  # fresh starts because the first attempt finished before its kill moment
    seconds: float = 0.0
    identical: bool = False
    max_abs_diff: float = 0.0
    metrics_identical: bool | None = None
    rng_identical: bool | None = None
    details: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    error: str | None = None


def reference_run(job, work: Path) -> Reference:
    folder = work / f"{job.name.replace(' ', '-')}-reference"
    attempt, first = run_attempt(
        job.command(folder, resume=False), work / f"{folder.name}.log", None, marker=job.marker(folder)
    )
    if attempt.returncode != 0:
        raise RuntimeError(f"reference {job.name} run failed (exit {attempt.returncode}):\n{log_tail(attempt.log)}")
    return Reference(folder, attempt.seconds, first if first is not None else 0.0)


def run_trial(
    job,
    ref: Reference,
    work: Path,
    index: int,
    rng: random.Random,
    max_kills: int,
    *,
    max_attempts: int = 50,
    max_redraws: int = 3,
    earliest: float = 0.0,
) -> TrialResult:
    """Kill the job 1..max_kills times at random moments, rerun until it finishes, compare with the reference.

    A trial whose first attempt finishes before its kill moment (the machine ran faster than the
    reference did) tests nothing: it is redrawn in a fresh folder, up to `max_redraws` times, with the
    expected duration lowered to the time that attempt took. `earliest` (seconds) bounds the kill
    moments from below (the smoke test uses it to land its kill after the first checkpoint).
    """
    result = TrialResult(job.name, index)
    folder = work / f"{job.name.replace(' ', '-')}-trial{index}"
    planned = rng.randint(1, max_kills)
    started = time.monotonic()
    for redraw in range(max_redraws + 1):
        if folder.exists():
            shutil.rmtree(folder)
        result.kills = result.resumed_runs = result.restarts = 0
        result.kill_times, result.kill_progress = [], []
        for attempt_no in range(max_attempts):
            resume = job.rerun_is_resume(folder) if attempt_no else False
            if attempt_no:
                if resume:
                    result.resumed_runs += 1
                else:
                    result.restarts += 1
            kill_after = None
            if result.kills < planned:
                # Uniform over this attempt's expected duration: start-up plus the work still to do.
                remaining = ref.startup + max(0.0, ref.seconds - ref.startup) * (1.0 - job.done_fraction(folder))
                kill_after = rng.uniform(min(earliest, remaining), remaining)
            log = work / f"{folder.name}.redraw{redraw}.attempt{attempt_no}.log"
            attempt, _ = run_attempt(job.command(folder, resume=resume), log, kill_after)
            if attempt.killed:
                result.kills += 1
                result.kill_times.append(round(attempt.seconds, 2))
                result.kill_progress.append(round(job.done_fraction(folder), 3))
                continue
            if attempt.returncode != 0:
                result.error = f"attempt {attempt_no} exited {attempt.returncode}:\n{log_tail(log)}"
            elif attempt_no == 0:  # finished before its kill moment
                ref.seconds = min(ref.seconds, attempt.seconds)
            break
        else:
            result.error = f"did not finish in {max_attempts} attempts"
        if result.kills or result.error is not None:
            break
        result.redraws += 1
    result.seconds = time.monotonic() - started
    if result.error is None:
        comparison = job.compare(ref.folder, folder)
        result.identical = comparison.identical and result.kills > 0
        if not result.kills:
            comparison.details.append(
                f"never killed: every attempt finished before its kill moment ({result.redraws} redraws)"
            )
        result.max_abs_diff = comparison.max_abs_diff
        result.details = comparison.details
        result.leftovers = comparison.leftovers
        result.rng_identical = comparison.rng_identical
        result.metrics_identical = job.metrics_identical(ref.folder, folder)
    return result


def run_job(
    job, work: Path, trials: int, rng: random.Random, max_kills: int, *, verbose: bool = True
) -> tuple[Reference, list[TrialResult]]:
    ref = reference_run(job, work)
    if verbose:
        print(f"[{job.name}] reference: {ref.seconds:.1f} s (first checkpoint after {ref.startup:.1f} s)", flush=True)
    results = []
    for index in range(1, trials + 1):
        result = run_trial(job, ref, work, index, rng, max_kills)
        results.append(result)
        if verbose:
            state = "ERROR" if result.error else ("identical" if result.identical else "DIFFERENT")
            print(
                f"[{job.name}] trial {index}: {result.kills} kill(s) at {result.kill_times} s "
                f"(checkpointed share {result.kill_progress}), {result.resumed_runs} resumed, "
                f"{result.restarts} from scratch, {result.redraws} redraw(s), {result.seconds:.1f} s: {state}"
                + (
                    f"; metrics.jsonl {'identical' if result.metrics_identical else 'DIFFERENT'} (w/o time)"
                    if result.metrics_identical is not None
                    else ""
                ),
                flush=True,
            )
            for line in result.details[:10]:
                print(f"    {line}", flush=True)
            if result.leftovers:
                print(f"    leftovers (not outputs): {result.leftovers}", flush=True)
            if result.error:
                print("    " + result.error.replace("\n", "\n    "), flush=True)
    return ref, results


# ----------------------------------------------------------------------------- report


def table(rows: list[tuple[Any, Reference, list[TrialResult]]]) -> str:
    head = (
        "| job | reference run (s) | trials | kills | resumed runs | restarts from scratch | "
        "final outputs identical | max abs diff | stray temp files |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    for job, ref, results in rows:
        ok = sum(r.identical and r.error is None for r in results)
        errors = sum(r.error is not None for r in results)
        identical = (
            f"{ok}/{len(results)}"
            + (" yes" if ok == len(results) else " NO")
            + (f" ({errors} errored)" if errors else "")
        )
        stray = sum(len(r.leftovers) for r in results)
        lines.append(
            f"| {job.label} | {ref.seconds:.1f} | {len(results)} | {sum(r.kills for r in results)} | "
            f"{sum(r.resumed_runs for r in results)} | {sum(r.restarts for r in results)} | {identical} | "
            f"{max((r.max_abs_diff for r in results), default=0.0):.3g} | {stray} |"
        )
    return "\n".join(lines)


def trial_table(rows: list[tuple[Any, Reference, list[TrialResult]]]) -> str:
    lines = [
        "| job | trial | kills | kill times (s) | resumed runs | restarts from scratch | identical | "
        "metrics.jsonl (w/o time) | saved RNG state |",
        "|---|---:|---:|---|---:|---:|---|---|---|",
    ]
    for job, _, results in rows:
        for r in results:
            ident = "error" if r.error else ("yes" if r.identical else "NO")
            metrics = "-" if r.metrics_identical is None else ("yes" if r.metrics_identical else "NO")
            rng_state = "-" if r.rng_identical is None else ("same" if r.rng_identical else "differs")
            times = ", ".join(f"{t:.1f}" for t in r.kill_times) or "-"
            lines.append(
                f"| {job.name} | {r.index} | {r.kills} | {times} | {r.resumed_runs} | {r.restarts} | {ident} | {metrics} | {rng_state} |"
            )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--trials", type=int, default=5, help="interrupted runs per job (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill schedule (default: %(default)s)")
    p.add_argument(
        "--max-kills-per-trial",
        type=int,
        default=3,
        help="each trial is killed 1..N times, N drawn per trial (default: %(default)s)",
    )
    p.add_argument(
        "--work-dir", type=Path, default=None, help="where runs go (default: a temporary folder, removed after)"
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary work dir")
    p.add_argument("--only", choices=("train", "extract"), default=None, help="run only one job")
    p.add_argument(
        "--no-snapshot",
        action="store_true",
        help="run the live src/ instead of a copy taken at the start (a copy keeps every run on the same code)",
    )
    p.add_argument(
        "--snapshot-commit",
        metavar="REV",
        default=None,
        help="run src/ as of this commit (git archive) instead of the working tree's",
    )
    g = p.add_argument_group("train job")
    g.add_argument("--num-train", type=int, default=300, help="synthetic training images (default: %(default)s)")
    g.add_argument("--num-dev", type=int, default=50, help="synthetic validation images (default: %(default)s)")
    g.add_argument("--epochs", type=int, default=4, help="(default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=32, help="captions per batch (default: %(default)s)")
    g.add_argument(
        "--checkpoint-every", type=int, default=20, help="train.checkpoint_every_steps (default: %(default)s)"
    )
    g.add_argument(
        "--minilm",
        action="store_true",
        help="also train with model.text_encoder=minilm (the fine-tuned pretrained text encoder, whose "
        "dropout draws from the torch RNG; slower: --minilm-train images, --minilm-epochs)",
    )
    g.add_argument("--minilm-train", type=int, default=100, help="(default: %(default)s)")
    g.add_argument("--minilm-epochs", type=int, default=1, help="(default: %(default)s)")
    g = p.add_argument_group("extract job")
    g.add_argument("--photos", type=Path, default=PHOTOS_SOURCE, help="flickr8k-800 folder (default: %(default)s)")
    g.add_argument(
        "--images",
        type=int,
        nargs=3,
        default=(24, 8, 8),
        metavar=("TRAIN", "VAL", "TEST"),
        help="photos per split (default: 24 8 8)",
    )
    g.add_argument(
        "--extract-batch-size", type=int, default=4, help="images per extraction checkpoint (default: %(default)s)"
    )
    g.add_argument("--bottomup", action="store_true", help="also run --mode bottomup (the detector; slower)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    script = Path(__file__).resolve()
    command = shlex.join(
        [
            os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO)) else sys.executable,
            str(script.relative_to(REPO)) if script.is_relative_to(REPO) else str(script),
            *(sys.argv[1:] if argv is None else argv),
        ]
    )
    rng = random.Random(args.seed)
    temporary = args.work_dir is None
    work = Path(tempfile.mkdtemp(prefix="kill_resume-")) if temporary else args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    rows = []
    version = code_version()
    snapshot = None
    try:
        if not args.no_snapshot:
            snapshot = snapshot_source(work, args.snapshot_commit)
            if args.snapshot_commit:
                version = f"src/ of {args.snapshot_commit} (git archive)"
            else:
                version += " (a copy of src/ taken at the start)"
        if args.only in (None, "train"):
            config = synthetic_config(work, snapshot)
            job = TrainJob(
                work,
                config=config,
                num_train=args.num_train,
                num_dev=args.num_dev,
                epochs=args.epochs,
                batch_size=args.batch_size,
                checkpoint_every=args.checkpoint_every,
                data_seed=args.seed,
            )
            rows.append((job, *run_job(job, work, args.trials, rng, args.max_kills_per_trial)))
            if args.minilm:
                job = TrainJob(
                    work,
                    config=config,
                    num_train=args.minilm_train,
                    num_dev=20,
                    epochs=args.minilm_epochs,
                    batch_size=args.batch_size,
                    checkpoint_every=4,
                    data_seed=args.seed,
                    extra_overrides=["model.text_encoder=minilm"],
                    name="train minilm",
                )
                rows.append((job, *run_job(job, work, args.trials, rng, args.max_kills_per_trial)))
        if args.only in (None, "extract"):
            if not (args.photos / "dataset_flickr8k_800.json").exists():
                print(f"extract job skipped: {args.photos} has no dataset_flickr8k_800.json", file=sys.stderr)
            else:
                photos = make_photo_folder(
                    work / "photos", dict(zip(("train", "val", "test"), args.images, strict=True)), args.photos
                )
                for mode in ("grid", "bottomup") if args.bottomup else ("grid",):
                    job = ExtractJob(
                        photos,
                        mode=mode,
                        batch_size=args.extract_batch_size,
                        counts=dict(zip(("train", "val", "test"), args.images, strict=True)),
                    )
                    rows.append((job, *run_job(job, work, args.trials, rng, args.max_kills_per_trial)))
    finally:
        if temporary and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - started
    print()
    print(table(rows))
    print()
    print(trial_table(rows))
    print()
    print(
        f"Kill moments uniform over each attempt's expected remaining duration (seed {args.seed}); each trial killed "
        f"1..{args.max_kills_per_trial} times, SIGKILL to the process group. Identical: every tensor of "
        "checkpoints/latest (model + optimizer) and checkpoints/best equal (torch.equal), the same final step, best step "
        "and best rsum, and latest/best pointing at the same step (the saved torch RNG state is reported apart); for extraction every output file equal byte for byte and no extra files. "
        "Stray temp files: hidden *.tmp files / .step-*.tmp-* folders a hard kill leaves (not read by anything)."
    )
    print(f"Code: {version}")
    print(
        f"Command: `{command}`; total wall time {elapsed:.0f} s"
        + ("" if temporary and not args.keep else f"; runs in {work}")
    )
    bad = any(r.error is not None or not r.identical for _, _, results in rows for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
