"""`scan index` and `scan search` as a user runs them: build, search both ways, explain, errors, kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("faiss")

from photo_models import NUM_PHOTOS
from scan.cli import index as index_cli
from scan.cli import search as search_cli
from scan.search.index import STORE_FOLDER, Index


@pytest.fixture
def index_folder(photo_model, photos, feature_cache, tmp_path, capsys) -> Path:
    out = tmp_path / "photos.index"
    code = index_cli.main(
        [
            "build",
            "--model",
            str(photo_model),
            "--photos",
            str(photos),
            "--out",
            str(out),
            "--captions",
            str(photos.parent / "captions.txt"),
            "--cache",
            str(feature_cache),
            "--workers",
            "1",
            "--quiet",
        ]
    )
    assert code == 0
    (tmp_path / "build.out").write_text(capsys.readouterr().out, encoding="utf-8")
    return out


def test_build_prints_a_summary_and_info_describes_the_index(index_folder, capsys):
    printed = (index_folder.parent / "build.out").read_text(encoding="utf-8")
    assert f"now {NUM_PHOTOS} photos and {5 * NUM_PHOTOS} captions" in printed
    assert index_cli.main(["info", str(index_folder), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["photos"] == NUM_PHOTOS and info["first_stage"] == "flat"


def test_search_prints_ranked_photos_and_json(index_folder, capsys):
    capsys.readouterr()
    assert search_cli.main([str(index_folder), "a dog runs on the grass", "-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["1", "2", "3"]
    assert search_cli.main([str(index_folder), "a dog runs on the grass", "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert [hit["rank"] for hit in hits] == [1, 2, 3]
    assert all(Path(hit["path"]).is_file() for hit in hits)
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]


def test_search_by_photo_prints_captions(index_folder, photos, feature_cache, capsys):
    capsys.readouterr()
    photo = next(photos.glob("*.jpg"))
    args = [str(index_folder), "--image", str(photo), "-k", "4", "--json", "--cache", str(feature_cache)]
    assert search_cli.main(args) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert len(hits) == 4 and all(hit["caption"] for hit in hits)


def test_explain_writes_one_small_picture_per_hit(index_folder, tmp_path, capsys):
    out = tmp_path / "why"
    assert search_cli.main([str(index_folder), "a dog in the snow", "-k", "2", "--explain", str(out), "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    pictures = [Path(hit["explanation"]) for hit in hits]
    assert sorted(pictures) == sorted(out.iterdir())
    assert all(0 < picture.stat().st_size < 500_000 for picture in pictures)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["", "-k", "3"], "give either a query text"),
        (["   ", "-k", "3"], "non-empty"),
        (["qqqzzz xxyyq"], "unknown"),
        (["a dog", "-k", "0"], "positive integer"),
        (["a dog", "-k", "999"], "larger than the collection"),
        (["a dog", "--shortlist", "2", "-k", "3"], "shortlist must be at least k"),
    ],
)
def test_bad_searches_exit_2_with_one_line(index_folder, capsys, args, message):
    capsys.readouterr()
    assert search_cli.main([str(index_folder), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scan: error:") and message in err
    assert "Traceback" not in err


def test_searching_a_folder_that_is_not_an_index_is_one_line(tmp_path, capsys):
    assert search_cli.main([str(tmp_path), "a dog"]) == 2
    assert "not an index" in capsys.readouterr().err


def _scan(*args: str) -> list[str]:
    return [sys.executable, "-m", "scan", *args]


def test_a_killed_add_leaves_the_old_index_searchable_and_a_rerun_completes_it(
    photo_model, photos, feature_cache, tmp_path
):
    first = sorted(photos.glob("*.jpg"))[:3]
    out = tmp_path / "killed.index"
    index = Index.build(photo_model, first[0], out, cache=feature_cache, progress=False, workers=1)
    index.add_photos(first[1:], cache=feature_cache, progress=False, workers=1)
    assert len(index) == 3
    # Photos one by one, each its own shard: kill the add once it has written a shard or two.
    add = ["index", "add", str(out), "--photos", str(photos), "--cache", str(feature_cache)]
    add += ["--batch-size", "1", "--workers", "1", "--quiet"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(_scan(*add), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    shards = out / STORE_FOLDER
    before = len(list(shards.glob("shard-*")))
    deadline = time.monotonic() + 120
    while len(list(shards.glob("shard-*"))) < before + 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the add finished before it could be killed"

    survivor = Index.open(out)  # the old index (plus whatever the add completed) still answers
    assert 3 <= len(survivor) < NUM_PHOTOS
    assert len(survivor.search("a dog", k=3)) == 3

    done = subprocess.run(_scan(*add), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    complete = Index.open(out)
    assert len(complete) == NUM_PHOTOS
    hashes = [complete.store.item(i)["sha256"] for i in complete.store.ids()]
    assert len(set(hashes)) == NUM_PHOTOS  # nothing added twice
    assert complete.repaired == 0
    assert len(complete.search("a dog", k=NUM_PHOTOS)) == NUM_PHOTOS
