"""The `scan` command: subcommands callable as functions, clear one-line errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scan.cli.main import main
from scan.data.synthetic import write_synthetic_precomp

# Small splits under the paper's protocol names: the size warning is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:protocol .* is defined on a split")

CONFIG = str(Path(__file__).parents[2] / "configs" / "synthetic.yaml")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("synthetic")
    write_synthetic_precomp(folder, num_train=200, num_dev=30, num_test=40, seed=3)
    return folder


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("train", "eval", "extract", "vocab", "demo"):
        assert name in out
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    assert "--resume" in capsys.readouterr().out


def test_train_then_eval_with_ensemble(data_dir, tmp_path, capsys):
    for direction in ("t2i", "i2t"):
        code = main(
            [
                "train",
                "--config",
                CONFIG,
                "--data",
                str(data_dir),
                "--run-dir",
                str(tmp_path / direction),
                "train.max_steps=12",
                "train.progress=false",
                f"model.direction={direction}",
            ]
        )
        assert code == 0
    results = tmp_path / "results.json"
    code = main(
        [
            "eval",
            "--model",
            str(tmp_path / "t2i"),
            "--model",
            str(tmp_path / "i2t"),
            "--ensemble",
            "--data",
            str(data_dir),
            "--split",
            "test",
            "--protocol",
            "all",
            "--protocol",
            "coco1k",
            "--json",
            str(results),
        ]
    )
    assert code == 0
    table = capsys.readouterr().out
    assert "ensemble(t2i+i2t) [coco1k]" in table and "rsum" in table
    stored = json.loads(results.read_text())
    assert set(stored) == {f"{name} [{p}]" for name in ("t2i", "i2t", "ensemble(t2i+i2t)") for p in ("all", "coco1k")}
    assert len(stored["t2i [coco1k]"]["folds"]) == 5


def test_bad_input_is_one_clear_line(data_dir, tmp_path, capsys):
    assert (
        main(["train", "--config", CONFIG, "--data", str(tmp_path / "nowhere"), "--run-dir", str(tmp_path / "r")]) == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("scan: error:") and "train_ims.npy" in err and "Traceback" not in err
    assert main(["train", "--config", CONFIG, "model.lambda_softmax=high"]) == 2
    assert "model.lambda_softmax" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path), "--data", str(data_dir)]) == 2
    assert "no model found" in capsys.readouterr().err
    assert main(["nonsense"]) == 2


def test_vocab_build_and_check(data_dir, tmp_path, capsys):
    out = tmp_path / "vocab.json"
    assert main(["vocab", "build", str(data_dir / "train_caps.txt"), "--out", str(out), "--threshold", "2"]) == 0
    assert json.loads(out.read_text())["idx2word"]["0"] == "<pad>"
    assert main(["vocab", "check", str(out), str(data_dir / "test_caps.txt")]) == 0
    assert "% of the tokens" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    assert main(["vocab", "check", str(bad), str(data_dir / "test_caps.txt")]) == 2
    assert "bad.json" in capsys.readouterr().err


def test_real_f30k_vocabulary_checks_real_captions(capsys):
    shared = Path(__file__).parents[2] / ".." / "shared" / "data" / "scan-format"
    if not shared.exists():
        pytest.skip("../shared/data/scan-format is not beside the repository")
    code = main(["vocab", "check", str(shared / "f30k_precomp_vocab.json"), str(shared / "f30k_precomp_test_caps.txt")])
    assert code == 0
    line = capsys.readouterr().out
    assert "8480 words" in line
    assert float(line.split("; ")[1].split("%")[0]) < 1.25
