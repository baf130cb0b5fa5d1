"""Try `scan` as a careless user would: bad files, bad options, and count what they get back.

Each case runs the installed command line in a subprocess on inputs made in a temporary folder
(a tiny synthetic data set and model, copies of a few real photos), and is classified by what the
user sees:

- `clear`: exit status 2 (or 1 where documented), one `scan: error:` line, no traceback;
- `traceback`: a Python traceback reached the user;
- `silent`: exit status 0 although the input was wrong;
- `unclear`: any other non-zero exit (e.g. several lines of noise, or no `scan: error:` line).

    .venv/bin/python benchmarks/bad_input_sweep.py            # prints a Markdown table
    .venv/bin/python benchmarks/bad_input_sweep.py --verbose  # and each case's stderr

Exit status 1 if any case is not `clear`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO.parent / "shared" / "data" / "flickr8k-800"
SCAN = [sys.executable, "-m", "scan"]


@dataclass
class Case:
    name: str  # what the user did wrong
    argv: Callable[[Path], list[str]]  # the command line, given the work folder
    prepare: Callable[[Path], None] | None = None  # makes the bad input in the work folder
    expected_exit: int = 2


def _write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")


def _photo_folder(work: Path, name: str, captions: str) -> Path:
    folder = work / name
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for photo in sorted((PHOTOS / "images").glob("*.jpg"))[:3]:
        shutil.copy(photo, folder / "images" / photo.name)
    _write(folder / "captions.txt", captions)
    return folder


def _names() -> list[str]:
    return [p.name for p in sorted((PHOTOS / "images").glob("*.jpg"))[:3]]


def _csv(rows: list[tuple[str, str]]) -> str:
    return "image,caption\n" + "".join(f"{a},{b}\n" for a, b in rows)


def _five(name: str) -> list[tuple[str, str]]:
    return [(name, f"A dog runs on the grass number {k} .") for k in range(5)]


def _copy_split(work: Path, name: str) -> Path:
    folder = work / name
    folder.mkdir(exist_ok=True)
    for path in (work / "data").glob("test_*"):
        shutil.copy(path, folder / path.name)
    return folder


def cases() -> list[Case]:
    model = lambda w: str(w / "run")
    data = lambda w: str(w / "data")
    out: list[Case] = []

    # --- command line and config
    out += [
        Case("no command at all", lambda w: []),
        Case("unknown command", lambda w: ["trian"]),
        Case("unknown config field", lambda w: ["train", "--config", "synthetic", "train.lrr=1"]),
        Case("negative epochs", lambda w: ["train", "--config", "synthetic", "train.epochs=-2"]),
        Case("zero batch size", lambda w: ["train", "--config", "synthetic", "data.batch_size=0"]),
        Case("negative learning rate", lambda w: ["train", "--config", "synthetic", "train.lr=-1e-3"]),
        Case("misspelt pooling", lambda w: ["train", "--config", "synthetic", "model.agg=Avg"]),
        Case("misspelt norm", lambda w: ["train", "--config", "synthetic", "model.raw_feature_norm=l2"]),
        Case("unknown text encoder", lambda w: ["train", "--config", "synthetic", "model.text_encoder=bert"]),
        Case("a recipe that does not exist", lambda w: ["train", "--config", "f30k_t2i"]),
        Case(
            "YAML with a syntax error",
            lambda w: ["train", "--config", str(w / "bad.yaml")],
            lambda w: _write(w / "bad.yaml", "model: [1\n"),
        ),
        Case("override without a section", lambda w: ["train", "--config", "synthetic", "lr=1"]),
        Case(
            "a GPU on a machine without one",
            lambda w: ["train", "--config", "synthetic", "--data", data(w), "--device", "cuda"],
        ),
        Case("no data folder for training", lambda w: ["train", "--config", "synthetic", "--run-dir", str(w / "r1")]),
        Case(
            "a data folder that does not exist",
            lambda w: ["train", "--config", "synthetic", "--data", str(w / "nope"), "--run-dir", str(w / "r2")],
        ),
        Case(
            "train into a finished run without --resume",
            lambda w: ["train", "--config", "synthetic", "--data", data(w), "--run-dir", model(w)],
        ),
        Case(
            "--resume a run that does not exist",
            lambda w: ["train", "--config", "synthetic", "--data", data(w), "--run-dir", str(w / "r3"), "--resume"],
        ),
        Case(
            "--resume with a different recipe",
            lambda w: [
                "train",
                "--config",
                "synthetic",
                "--data",
                data(w),
                "--run-dir",
                model(w),
                "--resume",
                "train.lr=0.5",
                "model.embed_dim=16",
                "model.word_dim=16",
                "train.epochs=1",
                "train.max_steps=4",
            ],
        ),
    ]
    # --- evaluation
    out += [
        Case("evaluate a folder that is not a model", lambda w: ["eval", "--model", str(w), "--data", data(w)]),
        Case(
            "evaluate a model without its vocabulary",
            lambda w: ["eval", "--model", str(w / "novocab"), "--data", data(w)],
            lambda w: (
                shutil.copytree((w / "run" / "checkpoints" / "latest").resolve(), w / "novocab"),
                (w / "novocab" / "vocab.json").unlink(),
            ),
        ),
        Case(
            "evaluate on a split that does not exist",
            lambda w: ["eval", "--model", model(w), "--data", data(w), "--split", "val2"],
        ),
        Case(
            "features of another dimension",
            lambda w: ["eval", "--model", model(w), "--data", str(w / "wide")],
            lambda w: (
                np.save(_copy_split(w, "wide") / "test_ims.npy", np.zeros((100, 12, 7), np.float32)),
                (w / "wide" / "test_boxes.npy").unlink(),
            ),
        ),
        Case(
            "features extracted with other settings",
            lambda w: ["eval", "--model", str(w / "gridmodel"), "--data", str(w / "bottomup")],
            None,
        ),
        Case(
            "more --name than --model",
            lambda w: ["eval", "--model", model(w), "--name", "a", "--name", "b", "--data", data(w)],
        ),
        Case(
            "truncated weights",
            lambda w: ["eval", "--model", str(w / "torn"), "--data", data(w)],
            lambda w: (
                shutil.copytree((w / "run" / "checkpoints" / "latest").resolve(), w / "torn"),
                (w / "torn" / "model.safetensors").write_bytes(b"\0" * 100),
            ),
        ),
    ]
    # --- captions and photos
    n = _names()
    out += [
        Case(
            "an unbalanced quote in captions.txt",
            lambda w: ["extract", "--data", str(w / "quote"), "--out", str(w / "o1"), "--mode", "grid"],
            lambda w: _photo_folder(
                w,
                "quote",
                _csv([*_five(n[0])[:2], (n[0], '"A dog runs'), *_five(n[0])[3:], *_five(n[1]), *_five(n[2])]),
            ),
        ),
        Case(
            "a photo named outside the folder",
            lambda w: ["extract", "--data", str(w / "escape"), "--out", str(w / "o2"), "--mode", "grid"],
            lambda w: _photo_folder(w, "escape", _csv([*_five(n[0]), *_five("../../etc/hostname"), *_five(n[2])])),
        ),
        Case(
            "captions.txt not in UTF-8",
            lambda w: ["extract", "--data", str(w / "latin"), "--out", str(w / "o3"), "--mode", "grid"],
            lambda w: _write(
                _photo_folder(w, "latin", "") / "captions.txt",
                (_csv([*_five(n[0]), *_five(n[1])]) + f"{n[2]},Un caf\xe9 .\n" * 5).encode("latin-1"),
            ),
        ),
        Case(
            "a photo with 3 captions",
            lambda w: ["extract", "--data", str(w / "few"), "--out", str(w / "o4"), "--mode", "grid"],
            lambda w: _photo_folder(w, "few", _csv([*_five(n[0]), *_five(n[1])[:3], *_five(n[2])])),
        ),
        Case(
            "a Karpathy JSON with split 'validation'",
            lambda w: ["extract", "--data", str(w / "json"), "--out", str(w / "o5"), "--mode", "grid"],
            lambda w: _write(
                w / "json" / "dataset_x.json",
                json.dumps(
                    {"images": [{"filename": n[0], "split": "validation", "sentences": [{"raw": "A dog ."}] * 5}]}
                ),
            ),
        ),
        Case(
            "a folder with no captions",
            lambda w: ["extract", "--data", str(w / "empty"), "--out", str(w / "o6")],
            lambda w: (w / "empty").mkdir(),
        ),
        Case(
            "grid mode with a non-square region count",
            lambda w: [
                "extract",
                "--data",
                str(PHOTOS),
                "--out",
                str(w / "o7"),
                "--mode",
                "grid",
                "--num-regions",
                "35",
            ],
        ),
        Case(
            "extract into a folder another extraction holds",
            lambda w: ["extract", "--data", str(PHOTOS), "--out", str(w / "busy"), "--mode", "grid"],
            None,
        ),
    ]
    # --- vocabularies and precomputed captions
    out += [
        Case(
            "vocab check with a broken JSON",
            lambda w: ["vocab", "check", str(w / "v.json"), str(w / "data" / "test_caps.txt")],
            lambda w: _write(w / "v.json", "[1, 2"),
        ),
        Case(
            "vocab build from a file that does not exist",
            lambda w: ["vocab", "build", str(w / "nope.txt"), "--out", str(w / "v2.json")],
        ),
        Case(
            "7 captions per image inferred",
            lambda w: ["eval", "--model", model(w), "--data", str(w / "seven")],
            lambda w: (_copy_split(w, "seven") / "test_caps.txt").write_text("a dog .\n" * 700),
        ),
        Case(
            "demo on a folder that does not exist", lambda w: ["demo", "--data", str(w / "nope"), "--out", str(w / "d")]
        ),
        Case(
            "demo with a bad override",
            lambda w: ["demo", "--data", str(PHOTOS), "--out", str(w / "d2"), "train.epochs=0"],
        ),
    ]
    return out


def _make_world(work: Path) -> None:
    """A tiny data set and a model trained on it for a few steps, as the cases' raw material."""
    from scan.data.synthetic import write_synthetic_precomp

    write_synthetic_precomp(work / "data", num_train=40, num_dev=10, num_test=100, seed=0)
    subprocess.run(
        [*SCAN, "train", "--config", "synthetic", "--data", str(work / "data"), "--run-dir", str(work / "run"),
         "model.embed_dim=16", "model.word_dim=16", "train.epochs=1", "train.max_steps=4", "train.progress=false"],
        check=True, capture_output=True,
    )  # fmt: skip


def _run(case: Case, work: Path, extra_setup: dict[str, Callable[[Path], object]]) -> tuple[str, int, str, float]:
    if case.prepare is not None:
        case.prepare(work)
    holder = extra_setup.get(case.name)
    context = holder(work) if holder else None
    started = time.perf_counter()
    try:
        result = subprocess.run([*SCAN, *case.argv(work)], capture_output=True, text=True, timeout=600,
                                stdin=subprocess.DEVNULL)  # fmt: skip
    finally:
        if context is not None:
            context.release()  # type: ignore[attr-defined]
    seconds = time.perf_counter() - started
    err = result.stderr
    if "Traceback (most recent call last)" in err:
        verdict = "traceback"
    elif result.returncode == 0:
        verdict = "silent"
    elif result.returncode == case.expected_exit and ("scan: error:" in err or "usage:" in err):
        verdict = "clear"  # one `scan: error:` line, or argparse's usage and error
    else:
        verdict = "unclear"
    return verdict, result.returncode, err, seconds


def _mismatched_extraction(work: Path) -> None:
    """A model that says it was trained on grid features, and features that say bottom-up."""
    shutil.copytree((work / "run" / "checkpoints" / "latest").resolve(), work / "gridmodel")
    config = (work / "gridmodel" / "config.yaml").read_text()
    (work / "gridmodel" / "config.yaml").write_text(
        config.replace("extract: {}", "extract: {mode: grid, num_regions: 12, image_size: 448}")
    )
    folder = _copy_split(work, "bottomup")
    (folder / "test_extract.json").write_text(
        json.dumps({"config": {"mode": "bottomup", "num_regions": 12, "image_size": 448}})
    )


def _hold_busy(work: Path) -> object:
    from scan.atomic import FolderLock

    return FolderLock(work / "busy", purpose="scan extract").acquire()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--verbose", action="store_true", help="print each case's stderr")
    args = parser.parse_args(argv)
    env_note = f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="scan-sweep-") as tmp:
        work = Path(tmp)
        _make_world(work)
        _mismatched_extraction(work)
        extra = {"extract into a folder another extraction holds": _hold_busy}
        for case in cases():
            verdict, code, err, seconds = _run(case, work, extra)
            first = next(
                (line for line in err.splitlines() if line.startswith("scan: error:")),
                err.strip().splitlines()[-1] if err.strip() else "",
            )
            rows.append((case.name, verdict, code, first))
            if args.verbose:
                print(f"--- {case.name}: {verdict} (exit {code}, {seconds:.1f} s)\n{err}", file=sys.stderr)
    counts = {v: sum(r[1] == v for r in rows) for v in ("clear", "unclear", "traceback", "silent")}
    print("| what the user did | outcome | exit | what they see (first line) |")
    print("|---|---|---:|---|")
    for name, verdict, code, first in rows:
        shown = first.replace("|", "\\|").replace(tmp, "…")
        print(f"| {name} | {verdict} | {code} | `{shown[:160]}` |")
    print()
    print(
        f"{len(rows)} cases: "
        + ", ".join(f"{v} {c}" for v, c in counts.items())
        + f" ({env_note}, {time.perf_counter() - started:.0f} s)"
    )
    print("command: .venv/bin/python benchmarks/bad_input_sweep.py")
    return 0 if counts["clear"] == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
