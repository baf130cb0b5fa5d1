"""Every choice `scan demo` offers is a valid extraction and a valid recipe, before any work starts."""

from __future__ import annotations

import pytest

from scan.cli.demo import build_parser
from scan.config import load_config
from scan.errors import ConfigError
from scan.features.extract import ExtractConfig
from scan.pipeline import (
    DEMO_CONFIG,
    DEMO_MODE,
    DEMO_REGIONS,
    DEMO_TEXT_ENCODER,
    DEMO_TEXT_ENCODERS,
    DemoOptions,
    run_demo,
)


@pytest.mark.parametrize("mode", list(DEMO_REGIONS))
def test_each_region_choice_is_a_valid_extraction(mode):
    config = ExtractConfig(**DEMO_REGIONS[mode])
    config.validate()
    assert config.total_regions >= 36
    assert build_parser().parse_args(["--mode", mode]).mode == mode


@pytest.mark.parametrize("text_encoder", list(DEMO_TEXT_ENCODERS))
def test_each_text_encoder_choice_is_a_valid_recipe(text_encoder):
    config = load_config(DEMO_CONFIG, DEMO_TEXT_ENCODERS[text_encoder])
    assert config.model.text_encoder in ("gru", "minilm")
    assert build_parser().parse_args(["--text-encoder", text_encoder]).text_encoder == text_encoder


def test_the_defaults_are_among_the_choices():
    assert DEMO_MODE in DEMO_REGIONS and DEMO_TEXT_ENCODER in DEMO_TEXT_ENCODERS


def test_an_unknown_region_choice_is_refused_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="--mode"):
        run_demo(DemoOptions(out=str(tmp_path / "out"), mode="hexagons"))
    assert not (tmp_path / "out" / "features-hexagons").exists()
