"""Configs are checked when they load: ranges, fixed choices, and the recipes that ship with the package."""

from __future__ import annotations

import os

import pytest

from scan.config import config_from_dict, find_config, load_config, packaged_configs
from scan.errors import ConfigError, ScanError


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("train.epochs=-1", "train.epochs"),
        ("train.epochs=0", "train.epochs"),
        ("data.batch_size=0", "data.batch_size"),
        ("data.batch_size=1", "data.batch_size"),
        ("train.lr=-1e-4", "train.lr"),
        ("train.lr=0", "train.lr"),
        ("train.lr=.nan", "train.lr"),
        ("train.margin=-0.2", "train.margin"),
        ("train.grad_clip=-1", "train.grad_clip"),
        ("data.workers=-2", "data.workers"),
        ("train.log_every_steps=0", "train.log_every_steps"),
        ("model.lambda_softmax=0", "model.lambda_softmax"),
        ("model.lambda_lse=-6", "model.lambda_lse"),
        ("model.embed_dim=0", "model.embed_dim"),
        ("model.direction=both", "model.direction"),
        ("model.architecture=clip", "model.architecture"),
        ("model.agg=Summ", "model.agg"),
        ("model.raw_feature_norm=l3norm", "model.raw_feature_norm"),
        ("model.text_encoder=bert", "model.text_encoder"),
        ("train.precision=fp16", "train.precision"),
        ("train.scoring_backend=cuda", "train.scoring_backend"),
        ("train.scoring_precision=fp64", "train.scoring_precision"),
    ],
)
def test_invalid_values_are_refused_when_the_config_loads(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")) as error:
        load_config("synthetic", [override])
    assert isinstance(error.value, ScanError)


def test_a_valid_recipe_loads_and_checks_the_stored_form_too():
    config = load_config("synthetic", ["train.lr=1e-3", "model.agg=LogSumExp"])
    assert config.train.lr == 1e-3
    values = config.to_dict()
    values["train"]["epochs"] = -3
    with pytest.raises(ConfigError, match="train.epochs"):
        config_from_dict(values, source="run/config.yaml")


def test_packaged_recipes_are_found_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here: the package's own copies are used
    names = packaged_configs()
    for name in ("f30k_t2i_avg", "f30k_i2t_lse", "coco_t2i_avg", "coco_i2t_lse", "demo_flickr8k", "synthetic"):
        assert name in names
        assert load_config(name).model.embed_dim > 0
    assert find_config("configs/f30k_i2t_lse.yaml") == names["f30k_i2t_lse"]
    assert load_config("f30k_i2t_lse.yaml").model.direction == "i2t"
    with pytest.raises(ConfigError, match="no packaged recipe") as error:
        load_config("f30k_t2i")  # a name the first README used, which never existed
    assert "f30k_t2i_avg" in str(error.value)


def test_a_file_path_wins_over_a_packaged_name(tmp_path):
    own = tmp_path / "synthetic.yaml"
    own.write_text("train:\n  epochs: 3\n")
    assert load_config(own).train.epochs == 3
    assert load_config(os.fspath(own)).train.epochs == 3


def test_non_utf8_config_names_the_file(tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("train:\n  run_dir: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="latin1.yaml"):
        load_config(bad)
