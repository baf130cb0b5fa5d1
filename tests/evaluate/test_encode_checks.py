"""Features are checked against the model before anything is encoded, and what encodes badly is said."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from scan.data.precomp import PrecompSplit
from scan.errors import ModelMismatchError
from scan.evaluate.encode import check_split_fits_model, encode_split
from scan.evaluate.protocols import evaluate_scores
from scan.models.loading import load_model

SETTINGS = {
    "mode": "grid",
    "num_regions": 36,
    "image_size": 448,
    "max_size": 768,
    "output_stride": 16,
    "roi_samples": 14,
    "detector_threshold": 0.01,
    "max_detections": 100,
    "iou_threshold": 0.5,
    "min_score": 0.01,
    "min_box_size": 4.0,
    "dtype": "float32",
    "captions_per_image": 5,
}


def copy_split(source: Path, target: Path, split: str = "test") -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for path in source.glob(f"{split}_*"):
        shutil.copy(path, target / path.name)
    return target


def test_features_of_another_dimension_are_refused_before_encoding(synthetic_data, tiny_run, tmp_path):
    folder = copy_split(synthetic_data, tmp_path / "wide")
    features = np.load(folder / "test_ims.npy")
    np.save(folder / "test_ims.npy", np.concatenate([features, features], axis=2))  # (N, R, 2F)
    split = PrecompSplit.open(folder, "test")
    trained = load_model(tiny_run)
    with pytest.raises(ModelMismatchError, match=r"test_ims.npy.*dims per region"):
        check_split_fits_model(trained.config, split, model_folder=trained.folder)
    with pytest.raises(ModelMismatchError, match="dims per region"):
        encode_split(trained.model, split, trained.tokenizer, device="cpu")


def test_features_extracted_with_other_settings_are_refused(synthetic_data, tiny_run, tmp_path):
    trained = load_model(tiny_run)
    trained.config.data.extract = dict(SETTINGS)  # as if trained on `scan extract --mode grid` features
    folder = copy_split(synthetic_data, tmp_path / "other")
    made_with = dict(SETTINGS, mode="bottomup", image_size=320, dtype="float16")
    (folder / "test_extract.json").write_text(json.dumps({"config": made_with}))
    split = PrecompSplit.open(folder, "test")
    with pytest.raises(ModelMismatchError, match="mode: 'bottomup' here, 'grid' in training") as error:
        check_split_fits_model(trained.config, split, model_folder=trained.folder)
    assert "image_size" in str(error.value) and "dtype" not in str(error.value)  # storage is not meaning
    (folder / "test_extract.json").write_text(json.dumps({"config": dict(SETTINGS, dtype="float16")}))
    check_split_fits_model(trained.config, PrecompSplit.open(folder, "test"), model_folder=trained.folder)


def test_captions_the_vocabulary_does_not_know_are_warned_about(synthetic_data, tiny_run, tmp_path):
    folder = copy_split(synthetic_data, tmp_path / "foreign")
    lines = (folder / "test_caps.txt").read_text().splitlines()
    (folder / "test_caps.txt").write_text("\n".join("ein hund läuft über die wiese" for _ in lines) + "\n")
    trained = load_model(tiny_run)
    with pytest.warns(UserWarning, match=r"100% of the caption words are unknown"):
        encode_split(trained.model, PrecompSplit.open(folder, "test"), trained.tokenizer, device="cpu")


def test_known_captions_give_no_warning(synthetic_data, tiny_run, recwarn):
    trained = load_model(tiny_run)
    encode_split(trained.model, PrecompSplit.open(synthetic_data, "test"), trained.tokenizer, device="cpu")
    assert not [w for w in recwarn if "unknown" in str(w.message) or "encode to zero" in str(w.message)]


def test_absurd_feature_values_are_warned_about(synthetic_data, tiny_run, tmp_path):
    folder = copy_split(synthetic_data, tmp_path / "absurd")
    features = np.load(folder / "test_ims.npy")
    features[:3] = 3e38  # finite, but the projection overflows: no direction survives
    np.save(folder / "test_ims.npy", features)
    trained = load_model(tiny_run)
    with pytest.warns(UserWarning, match=r"3 of \d+ images encode to zero or non-finite vectors"):
        encode_split(trained.model, PrecompSplit.open(folder, "test"), trained.tokenizer, device="cpu")


def test_coco_protocols_on_a_split_of_another_size_warn():
    scores = np.random.default_rng(0).normal(size=(10, 50))
    with pytest.warns(UserWarning, match="coco1k.*5000 images, but this one has 10"):
        evaluate_scores(scores, protocol="coco1k")
    with pytest.warns(UserWarning, match="coco5k"):
        evaluate_scores(scores, protocol="coco5k")
