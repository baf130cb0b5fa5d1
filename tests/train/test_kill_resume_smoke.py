"""Smoke test of benchmarks/kill_resume.py: one training run SIGKILLed once, resumed, bit-identical.

The benchmark itself (5 trials, several kills each, training and extraction) takes minutes; this
runs its machinery once at a tiny size on the live code, so the script cannot rot unnoticed and
the resume claim is checked end to end through the real CLI and a real SIGKILL.
"""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "kill_resume.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("kill_resume", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_one_kill_then_resume_gives_identical_weights(tmp_path):
    kill_resume = _load_script()
    job = kill_resume.TrainJob(
        tmp_path,
        config=kill_resume.synthetic_config(tmp_path),
        num_train=40,
        num_dev=10,
        epochs=1,
        batch_size=16,
        checkpoint_every=3,
        data_seed=0,
    )
    ref = kill_resume.reference_run(job, tmp_path)
    assert (ref.folder / "checkpoints" / "latest" / "model.safetensors").exists()

    # One kill, drawn after the reference's first checkpoint appeared, so the rerun normally resumes.
    result = kill_resume.run_trial(job, ref, tmp_path, 1, random.Random(0), max_kills=1, earliest=ref.startup * 1.2)

    assert result.error is None, result.error
    assert result.kills == 1
    assert result.resumed_runs + result.restarts == 1
    assert result.identical, result.details
    assert result.max_abs_diff == 0.0
