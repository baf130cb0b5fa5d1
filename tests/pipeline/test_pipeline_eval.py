"""`scan eval`'s job: the options it is given are the ones used."""

from __future__ import annotations

import pytest

from scan import pipeline
from scan.errors import ConfigError


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_scoring_precision_reaches_the_scorer(synthetic_data, tiny_run, monkeypatch, precision):
    """Before: `--scoring-precision` was overwritten by the encoders' training precision."""
    seen = []
    real = pipeline.score_split

    def spy(model, encoded, **kwargs):
        seen.append(kwargs["precision"])
        return real(model, encoded, **kwargs)

    monkeypatch.setattr(pipeline, "score_split", spy)
    pipeline.evaluate(
        pipeline.EvalOptions(
            models=[str(tiny_run)], data=str(synthetic_data), scoring_precision=precision, device="cpu"
        )
    )
    assert seen == [precision]


def test_one_name_per_model(synthetic_data, tiny_run):
    with pytest.raises(ConfigError, match="one per --model"):
        pipeline.evaluate(pipeline.EvalOptions(models=[str(tiny_run)], names=["a", "b"], data=str(synthetic_data)))
