"""Training end to end on generated data: it learns, it resumes, its checkpoints are safe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from scan import checkpoint as ckpt
from scan.config import ConfigError, load_config
from scan.data.precomp import PrecompSplit
from scan.data.synthetic import write_synthetic_precomp
from scan.evaluate.encode import encode_split, score_split
from scan.evaluate.metrics import retrieval_metrics
from scan.models.loading import load_model
from scan.train import recipe

CONFIG = Path(__file__).parents[2] / "configs" / "synthetic.yaml"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("synthetic")
    write_synthetic_precomp(folder, num_train=300, num_dev=50, num_test=100, seed=0)
    return folder


def make_config(data_dir: Path, run_dir: Path, *extra: str):
    return load_config(CONFIG, [f"data.path={data_dir}", f"train.run_dir={run_dir}", "train.progress=false", *extra])


def test_scan_learns_far_above_chance(data_dir, tmp_path):
    """Chance R@1 on 100 test images is 1% (t2i) and about 5% (i2t, 5 captions per image)."""
    config = make_config(data_dir, tmp_path / "run")
    run = recipe.setup(config)
    test = PrecompSplit.open(data_dir, "test")

    def test_metrics():
        encoded = encode_split(run.model, test, run.tokenizer, device=run.device)
        return retrieval_metrics(score_split(run.model, encoded, device=run.device), encoded.caption_image)

    before = test_metrics()
    summary = recipe.train(run)
    after = test_metrics()
    bound = 40.0  # R@1 in percent, in both directions
    assert before["t2i_r1"] < bound and before["i2t_r1"] < bound, before
    assert after["t2i_r1"] > bound and after["i2t_r1"] > bound, after
    assert summary["steps"] == run.total_steps == config.train.epochs * 47  # ceil(1500 / 32)

    # The run folder tells the story: resolved config, vocabulary, a metrics log, a loadable best model.
    assert (tmp_path / "run" / "config.yaml").exists() and (tmp_path / "run" / "vocab.json").exists()
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("rsum" in line for line in lines) and any("loss" in line for line in lines)
    trained = load_model(tmp_path / "run")
    assert trained.folder.name == f"step-{summary['best_step']:08d}"
    encoded = encode_split(trained.model, test, trained.tokenizer, device=torch.device("cpu"))
    reloaded = retrieval_metrics(score_split(trained.model, encoded, device=torch.device("cpu")), encoded.caption_image)
    assert reloaded["rsum"] > 6 * bound


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("direction", ["i2t"])
def test_interrupted_run_resumes_to_the_same_model(data_dir, tmp_path, direction):
    extra = (
        "train.epochs=2",
        f"model.direction={direction}",
        "model.lambda_softmax=4.0",
        "train.checkpoint_every_steps=10",
    )
    # The uninterrupted run.
    straight = recipe.setup(make_config(data_dir, tmp_path / "straight", *extra))
    recipe.train(straight)

    # The same run, killed mid-epoch at step 33 (last checkpoint: step 30).
    config = make_config(data_dir, tmp_path / "killed", *extra)
    run = recipe.setup(config)

    def crash(r):
        if r.step == 33:
            raise Interrupt

    with pytest.raises(Interrupt):
        recipe.train(run, on_step=crash)
    latest = (tmp_path / "killed" / "checkpoints" / "latest").resolve()
    assert latest.name == "step-00000030"
    with pytest.raises(ConfigError, match="--resume"):
        recipe.setup(make_config(data_dir, tmp_path / "killed", *extra))
    resumed = recipe.setup(make_config(data_dir, tmp_path / "killed", *extra), resume=True)
    assert resumed.step == 30 and resumed.batch_in_epoch == 30
    summary = recipe.train(resumed)
    assert summary["steps"] == straight.step == 2 * 47
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items(), strict=False):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    # The metrics log has no duplicated steps from the lost part of the run.
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
        if "loss" in line
    ]
    assert steps == sorted(set(steps))
    assert load_model(tmp_path / "killed").model is not None


def test_resume_refuses_a_different_recipe(data_dir, tmp_path):
    run = recipe.setup(make_config(data_dir, tmp_path / "r", "train.max_steps=3"))
    recipe.train(run)
    with pytest.raises(ConfigError, match="train.lr"):
        recipe.setup(make_config(data_dir, tmp_path / "r", "train.lr=0.1"), resume=True)


def test_a_crash_while_saving_never_becomes_latest(data_dir, tmp_path, monkeypatch):
    run = recipe.setup(make_config(data_dir, tmp_path / "run", "train.max_steps=2"))
    recipe.train(run)
    good = (tmp_path / "run" / "checkpoints" / "latest").resolve()

    def half_write(tensors, path, *args, **kwargs):
        Path(path).write_bytes(b"\x00" * 10)  # a torn file, then the process dies
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", half_write)
    run.step += 1
    with pytest.raises(OSError):
        recipe.save(run)
    assert (tmp_path / "run" / "checkpoints" / "latest").resolve() == good
    monkeypatch.undo()
    assert load_model(tmp_path / "run").folder == good


def test_truncated_weights_are_a_clear_error(data_dir, tmp_path):
    run = recipe.setup(make_config(data_dir, tmp_path / "run", "train.max_steps=1"))
    recipe.train(run)
    weights = (tmp_path / "run" / "checkpoints" / "latest" / ckpt.MODEL_FILE).resolve()
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ckpt.CheckpointError, match="model.safetensors"):
        load_model(tmp_path / "run" / "checkpoints" / "latest")


def test_baseline_trains_through_the_same_recipe(data_dir, tmp_path):
    run = recipe.setup(make_config(data_dir, tmp_path / "vse", "model.architecture=vse", "train.epochs=4"))
    recipe.train(run)
    assert run.best_rsum > 100  # chance rsum is about 3*1% + 3*5% plus change


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="train.lrr"):
        load_config(CONFIG, ["train.lrr=1"])
    with pytest.raises(ConfigError, match="expected an integer"):
        load_config(CONFIG, ["train.epochs=many"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  agg: [1\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)
    with pytest.raises(ConfigError, match="data.path"):
        recipe.setup(load_config(CONFIG, [f"train.run_dir={tmp_path}/x"]))


def test_overrides_parse_numbers_like_a_person_writes_them():
    config = load_config(CONFIG, ["train.lr=5e-3", "model.lambda_lse=20", "train.max_violation=false"])
    assert config.train.lr == 0.005 and config.model.lambda_lse == 20.0 and config.train.max_violation is False
