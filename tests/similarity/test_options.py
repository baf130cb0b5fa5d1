"""`AttentionOptions` checks itself and names the config field at fault; the option tables."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from typing import get_args, get_type_hints

import pytest

from scan.errors import ConfigError
from scan.similarity.options import DIRECTIONS, NORMS, POOLINGS, AttentionOptions, NormSpec, PoolingSpec


def test_defaults_are_the_model_configs():
    from scan.config import ModelConfig
    from scan.models.scan import attention_options

    assert attention_options(ModelConfig()) == AttentionOptions()


def test_every_valid_combination_builds():
    for direction in DIRECTIONS:
        for norm in NORMS:
            for agg in POOLINGS:
                options = AttentionOptions(direction=direction, norm=norm, smooth=4.0, agg=agg, lambda_lse=5.0)
                assert (options.direction, options.norm, options.agg) == (direction, norm, agg)


@pytest.mark.parametrize(
    "field,value,config_field,message",
    [
        ("direction", "both", "model.direction", "'both' is not a direction; choose one of ['t2i', 'i2t']"),
        ("norm", "l3norm", "model.raw_feature_norm", "'l3norm' is not a raw-feature norm; choose one of"),
        ("agg", "Summ", "model.agg", "'Summ' is not a pooling; choose one of ['LogSumExp', 'Mean', 'Max', 'Sum']"),
        ("agg", "sum", "model.agg", "is not a pooling"),  # names are case-sensitive, as in the config
        ("smooth", 0.0, "model.lambda_softmax", "must be a finite number > 0, got 0.0"),
        ("smooth", -9.0, "model.lambda_softmax", "> 0"),
        ("smooth", math.inf, "model.lambda_softmax", "finite"),
        ("smooth", math.nan, "model.lambda_softmax", "finite"),
        ("smooth", "9", "model.lambda_softmax", "expected a number, got '9'"),
        ("smooth", True, "model.lambda_softmax", "expected a number"),
        ("lambda_lse", 0, "model.lambda_lse", "> 0"),
        ("lambda_lse", None, "model.lambda_lse", "expected a number, got None"),
    ],
)
def test_bad_value_is_a_config_error_naming_the_field(field, value, config_field, message):
    with pytest.raises(ConfigError) as caught:
        AttentionOptions(**{field: value})
    text = str(caught.value)
    assert text.startswith(f"{config_field}: ")
    assert message in text


def test_temperatures_are_stored_as_floats():
    options = AttentionOptions(smooth=9, lambda_lse=6)
    assert type(options.smooth) is float and type(options.lambda_lse) is float
    assert options == AttentionOptions(smooth=9.0, lambda_lse=6.0)
    assert hash(options) == hash(AttentionOptions(smooth=9.0, lambda_lse=6.0))


def test_frozen():
    options = AttentionOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.agg = "Sum"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.smooth = -1.0  # type: ignore[misc]
    # A changed copy is checked like a new one.
    assert dataclasses.replace(options, agg="Mean").agg == "Mean"
    with pytest.raises(ConfigError, match="model.agg"):
        dataclasses.replace(options, agg="Median")


def test_field_types_are_the_table_names():
    hints = get_type_hints(AttentionOptions)
    assert get_args(hints["direction"]) == DIRECTIONS == ("t2i", "i2t")
    assert get_args(hints["norm"]) == tuple(NORMS)
    assert get_args(hints["agg"]) == tuple(POOLINGS)
    assert hints["smooth"] is float and hints["lambda_lse"] is float


def test_tables():
    assert list(NORMS) == ["clipped_l2norm", "l2norm", "softmax", "clipped_l1norm", "l1norm", "clipped", "no_norm"]
    assert list(POOLINGS) == ["LogSumExp", "Mean", "Max", "Sum"]
    for table, kind in ((NORMS, NormSpec), (POOLINGS, PoolingSpec)):
        for name, spec in table.items():
            assert isinstance(spec, kind) and spec.name == name and spec.description
            assert isinstance(spec.backends, frozenset) and spec.backends <= {"torch", "triton"}
            assert "torch" in spec.backends  # the reference path implements everything
            with pytest.raises(dataclasses.FrozenInstanceError):
                spec.backends = frozenset()  # type: ignore[misc]


def test_missing_in_names_what_a_backend_lacks(monkeypatch):
    options = AttentionOptions(norm="softmax", agg="Max")
    assert options.missing_in("triton") == [] and options.implemented_by("triton")
    monkeypatch.setitem(NORMS, "softmax", dataclasses.replace(NORMS["softmax"], backends=frozenset({"torch"})))
    monkeypatch.setitem(POOLINGS, "Max", dataclasses.replace(POOLINGS["Max"], backends=frozenset({"torch"})))
    assert options.missing_in("triton") == ["raw_feature_norm 'softmax'", "pooling 'Max'"]
    assert not options.implemented_by("triton") and options.implemented_by("torch")


def test_module_imports_without_torch():
    """scan.config validates configs through this module, so it must stay light."""
    import scan

    code = (
        "import sys, types\n"
        # A bare `scan` package: its real __init__ imports the whole library (and torch).
        "package = types.ModuleType('scan'); package.__path__ = [sys.argv[1]]; sys.modules['scan'] = package\n"
        "from scan.similarity.options import AttentionOptions\n"
        "AttentionOptions(agg='Mean')\n"
        "heavy = sorted(name for name in ('torch', 'numpy', 'triton') if name in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code, scan.__path__[0]], check=True)
