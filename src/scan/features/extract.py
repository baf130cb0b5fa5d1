"""Raw photos -> SCAN's precomputed region-feature layout (the image side of SCAN Sec. 3.1 / 4).

SCAN consumes, per split, ``{split}_ims.npy`` ``(N, R, F)`` region features and ``{split}_caps.txt``
(5 captions per image, in image order). The authors took ``R = 36`` regions from bottom-up
attention (Faster R-CNN on Visual Genome, ``F = 2048``); this module makes the same layout from
any folder of captioned photos with small models that run on a laptop CPU:

* ``mode="bottomup"``: boxes from an SSD-MobileNetV2 COCO detector (:mod:`.detector`), reduced
  to 36 by class-agnostic NMS and filled from the whole image and coarse grids when it finds fewer
  (:func:`.roi.select_regions`);
* ``mode="grid"``: the 6x6 grid of cells over the image (no detector), the "grid features" baseline.

``add_grids`` appends the cells of coarser or further grids to either: ``mode="grid"`` with
``add_grids=(3, 1)`` is a spatial pyramid (36 + 9 + 1 regions at three scales), ``mode="bottomup"``
with ``add_grids=(6,)`` gives the detector's boxes and the grid cells together (36 + 36).

Each box's feature is the mean of a 14x14 grid of bilinear samples (RoIAlign, ``aligned=True``;
:func:`.roi.roi_align`) of the 1280-channel EfficientNet-Lite0 or Lite2 head map
(:mod:`.backbone`, stride 16): ``F = 1280``.

Written per split into ``out_folder``: ``{split}_ims.npy`` ``(N, R, F)`` (float32 or float16),
``{split}_boxes.npy`` ``(N, R, 4)`` float32 pixel ``x1, y1, x2, y2`` in the original image (after
EXIF rotation, as a viewer shows it), ``{split}_caps.txt``, ``{split}_ids.txt`` (file names) and
``{split}_extract.json`` (config, models, counts, failures, and a fingerprint of config + models +
source list).

Properties, and how they are kept:

* **Resumable.** Features go into preallocated ``.partial`` ``.npy`` memmaps; after every batch they
  are flushed and ``{split}_extract.progress.json`` records how many images are done, so a killed
  run continues from its last batch. Finished files are renamed into place atomically; the JSON is
  written last and is the mark of completion.
* **Cached.** When the JSON's fingerprint matches and the files are there, a run does nothing (the
  models are not even loaded) and says so.
* **Parallel, and deterministic.** ``workers`` threads each take one image at a time through
  decoding, the detector and the backbone, on one CPU thread each (see :class:`RegionExtractor`
  for why that beats batched or multi-threaded convolutions on a CPU); ``batch_size`` images make
  one checkpoint. Each image's numbers do not depend on which thread or batch computed them, NMS
  ties break by index, and the split of unsplit data is hash-based, so two runs with the same
  config and library versions write identical bytes (the JSON holds no timestamps), whatever
  ``workers`` and ``batch_size`` are: these two are left out of the fingerprint.
* **Shardable.** Under ``torchrun`` (``current``: a :class:`scan.distributed.World` of several
  processes) each rank takes a contiguous share of the images and writes its rows into the same
  ``.partial`` memmaps, with a progress file of its own (``{split}_extract.progress-{r}-of-{N}.json``);
  once every rank is done, rank 0 writes the outputs exactly as one process would, so the files
  are byte-identical to a single-process run's. The output folder must be one that every process
  sees (a shared filesystem across machines). A killed sharded run resumes with the same number
  of processes; with another number, the shares change and the rows are recomputed.
* **Exclusive.** A run holds the output folder's lock (:class:`scan.atomic.FolderLock`) while it
  writes, so a second run into the same folder stops with :class:`scan.errors.FolderBusyError`
  instead of mixing features of other settings into the same arrays.
* **Never silent about bad images.** An unreadable or truncated image is reported on stderr by
  name, left out of the split together with its captions, and listed in the summary and the JSON.
  With ``strict=True`` the run instead fails after trying every image, listing all bad files (the
  partial work is kept, so a non-strict rerun finishes without redoing it).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from scan.atomic import FolderLock, write_text_atomic
from scan.data.raw import (
    CAPTIONS_PER_IMAGE,
    ImageRecord,
    read_image_folder,
    select_split,
)
from scan.distributed import World
from scan.errors import ConfigError, DataError, ExtractionError, ScanError
from scan.features.roi import grid_boxes, grid_size, roi_align, select_regions

__all__ = [
    "ExtractConfig",
    "ExtractSummary",
    "ExtractionError",
    "FailedImage",
    "ImageLoadError",
    "RegionExtractor",
    "extract_dataset",
    "extract_split",
    "extraction_settings",
    "load_image",
    "one_thread_per_image",
    "rgb8",
]

FORMAT = "scan-extract/1"  # bumped when the meaning of the written files changes
LOCK_PURPOSE = "scan extract"  # what another run is told holds the output folder
DEFAULT_SPLITS = ("train", "dev", "test")


@dataclass
class ExtractConfig:
    mode: str = "bottomup"  # "bottomup": detector boxes (+ grid fill); "grid": a sqrt(R) x sqrt(R) grid
    num_regions: int = 36  # regions of the mode per image (grid mode needs a square number)
    add_grids: tuple[int, ...] = ()  # sides of further grids whose cells follow the mode's regions
    backbone: str = "lite0"  # EfficientNet-Lite variant: "lite0" or "lite2" (scan.features.backbone.VARIANTS)
    image_size: int = 448  # shorter side of the backbone input in pixels (aspect kept)
    max_size: int = 768  # cap on the longer side of the backbone input in pixels
    output_stride: int = 16  # backbone feature-map stride: 16 (dilated last stage) or 32
    roi_samples: int = 14  # bilinear samples per box side, averaged into the region feature
    dtype: str = "float32"  # stored feature dtype: "float32" (SCAN's) or "float16" (half the disk)
    batch_size: int = 8  # images per checkpoint (features flushed, progress saved)
    workers: int = 0  # images processed at once, each on one CPU thread; 0: one per CPU
    detector_threshold: float = 0.01  # lowest detector confidence returned (bottomup)
    max_detections: int = 100  # most detector candidates per image (bottomup)
    iou_threshold: float = 0.5  # class-agnostic NMS overlap, also for skipping grid fill boxes
    min_score: float = 0.01  # detections below this score are not used as regions
    min_box_size: float = 4.0  # detections with a side shorter than this (pixels) are not used
    captions_per_image: int = CAPTIONS_PER_IMAGE  # captions written per image (SCAN: 5)
    strict: bool = False  # fail the run on any unreadable image instead of skipping it

    # Settings that change how the work is scheduled, not what is written.
    EXECUTION_FIELDS: ClassVar[tuple[str, ...]] = ("batch_size", "workers", "strict")
    # Settings a RegionExtractor is built with (the rest only affect how results are stored).
    MODEL_FIELDS: ClassVar[tuple[str, ...]] = (
        "mode",
        "num_regions",
        "add_grids",
        "backbone",
        "image_size",
        "max_size",
        "output_stride",
        "roi_samples",
        "detector_threshold",
        "max_detections",
        "iou_threshold",
        "min_score",
        "min_box_size",
    )

    # Settings added after FORMAT 1, with the value every earlier extraction had: left out of the
    # fingerprint at that value, so features extracted before they existed are still up to date.
    LATER_FIELDS: ClassVar[dict[str, Any]] = {"add_grids": (), "backbone": "lite0"}

    def __post_init__(self) -> None:
        self.add_grids = tuple(self.add_grids)  # a list from JSON or argparse; the fingerprint needs one form

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> ExtractConfig:
        """The config an extraction record holds (`{split}_extract.json`'s `config`, a model's `data.extract`).

        Settings the record lacks take their defaults, the values earlier versions always used;
        settings this version does not know are ignored.
        """
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in settings.items() if k in known})

    @property
    def total_regions(self) -> int:
        """R: the regions written per image, the mode's and then every added grid's cells."""
        return self.num_regions + sum(side * side for side in self.add_grids)

    def validate(self) -> None:
        """Check every setting; raises `ConfigError` naming the option (as `scan extract` spells it)."""
        from scan.features.backbone import VARIANTS

        problems = []
        if self.mode not in ("bottomup", "grid"):
            problems.append(f"--mode must be 'bottomup' or 'grid', got {self.mode!r}")
        if self.backbone not in VARIANTS:
            problems.append(f"--backbone must be one of {sorted(VARIANTS)}, got {self.backbone!r}")
        bad_grids = [side for side in self.add_grids if not isinstance(side, int) or side < 1]
        if bad_grids:
            problems.append(f"--add-grids takes grid sides of at least 1, got {list(self.add_grids)}")
        if self.num_regions < 1:
            problems.append(f"--num-regions must be positive, got {self.num_regions}")
        elif self.mode == "grid" and math.isqrt(self.num_regions) ** 2 != self.num_regions:
            problems.append(f"--num-regions must be a square number in grid mode (36 is 6 x 6), got {self.num_regions}")
        if self.dtype not in ("float32", "float16"):
            problems.append(f"--dtype must be 'float32' or 'float16', got {self.dtype!r}")
        if self.output_stride not in (16, 32):
            problems.append(f"output_stride must be 16 or 32, got {self.output_stride}")
        if self.batch_size < 1:
            problems.append(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.roi_samples < 1:
            problems.append(f"roi_samples must be >= 1, got {self.roi_samples}")
        if self.image_size < 32:
            problems.append(f"--image-size must be >= 32 pixels, got {self.image_size}")
        if self.workers < 0:
            problems.append(f"--workers must be >= 0, got {self.workers}")
        if self.captions_per_image < 1:
            problems.append(f"captions_per_image must be >= 1, got {self.captions_per_image}")
        if problems:
            raise ConfigError("; ".join(problems))

    def model_fields(self) -> dict[str, Any]:
        """The settings that determine the boxes and features (those of a RegionExtractor)."""
        return {k: getattr(self, k) for k in self.MODEL_FIELDS}

    def output_fields(self) -> dict[str, Any]:
        """The settings that determine the written bytes (those in the fingerprint)."""
        return {
            k: v
            for k, v in asdict(self).items()
            if k not in self.EXECUTION_FIELDS and not (k in self.LATER_FIELDS and v == self.LATER_FIELDS[k])
        }


class ImageLoadError(ScanError, OSError):
    """An image file could not be decoded (missing, truncated, not an image); the message names it.

    Inside an extraction it never escapes: the image is recorded as a :class:`FailedImage` and
    left out (or, in strict mode, listed in an :class:`scan.errors.ExtractionError`). Callers of
    :func:`load_image` get it directly; as a :class:`ScanError` the command line shows it as one
    line, and as an ``OSError`` it is caught where a file error would be.
    """


@dataclass
class FailedImage:
    filename: str  # the record's file name
    reason: str  # why it could not be used


@dataclass
class ExtractSummary:
    split: str  # output split name
    out_folder: Path  # where the files are
    num_images: int  # images written (N)
    num_captions: int  # captions written (N * captions_per_image)
    num_regions: int  # R
    feature_dim: int  # F
    failed: list[FailedImage] = field(default_factory=list)  # images left out, with reasons
    cached: bool = False  # True: the files were up to date and nothing was done
    resumed_from: int = 0  # images already done by an earlier, interrupted run
    seconds: float = 0.0  # wall time of this call
    seconds_per_image: float = 0.0  # wall time per image processed by this call
    mean_detected_regions: float | None = None  # bottomup: regions that are detections (not fill)


def load_image(path: str | Path) -> np.ndarray:
    """Decode an image file to RGB ``uint8`` ``(H, W, 3)``, upright per its EXIF orientation.

    Raises:
        ImageLoadError: naming the file, for a missing, truncated or undecodable image.
    """
    from PIL import Image, ImageFile, ImageOps

    path = Path(path)
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone relaxed PIL globally; truncation must still fail
        raise ImageLoadError(
            f"{path}: PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set, so truncated images would pass "
            "silently; set it back to False before extracting"
        )
    try:
        with Image.open(path) as opened:
            opened.load()
            array = rgb8(ImageOps.exif_transpose(opened))
    except FileNotFoundError:
        raise ImageLoadError(f"{path}: image file not found") from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise ImageLoadError(f"{path}: cannot decode image: {type(e).__name__}: {e}") from None
    if array.ndim != 3 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageLoadError(f"{path}: empty image {array.shape}")
    return array


def rgb8(image: Any) -> np.ndarray:
    """RGB ``uint8`` ``(H, W, 3)`` of a decoded PIL image, with 16-bit grey rescaled, not clipped.

    PIL decodes 16-bit grey files (PNG, TIFF) to the integer modes ``"I;16"``, ``"I;16B"``, ``"I"``,
    ..., and its ``convert("RGB")`` clips those to 0..255: every pixel above 255 of 65535, i.e. nearly
    the whole image, turns white. They are divided by 257 instead (65535 / 257 == 255, so 16-bit
    level ``257 k`` is 8-bit level ``k``). 32-bit ``"I"`` is read on the 16-bit range, as that is what
    PIL gives for 16-bit files; values outside it are clipped. 16-bit RGB needs nothing here: PIL
    already reduces it to 8-bit ``"RGB"`` when decoding.
    """
    if image.mode.startswith("I"):
        grey = np.clip(np.asarray(image, dtype=np.float64), 0, 65535) / 257.0  # (H, W)
        grey8 = np.rint(grey).astype(np.uint8)  # k + 0.5 never occurs: no rounding ties
        return np.repeat(grey8[:, :, None], 3, axis=2)  # (H, W, 3)
    return np.array(image.convert("RGB"), dtype=np.uint8)


@contextmanager
def one_thread_per_image(*, opencv: bool) -> Iterator[None]:
    """Run torch (and OpenCV) ops on one intra-op thread inside the block, then restore the counts.

    The extraction runs ``workers`` images side by side, each on one thread (see
    :class:`RegionExtractor`). The thread counts are process-wide, so they are set only for the
    extraction itself: a caller that trains or serves afterwards gets its own settings back.
    """
    torch_threads = torch.get_num_threads()
    cv2: Any = None
    if opencv:
        with suppress(ImportError):  # then there is no detector either, and building one says what to install
            import cv2
    cv2_threads = cv2.getNumThreads() if cv2 is not None else 0
    torch.set_num_threads(1)
    if cv2 is not None:
        cv2.setNumThreads(1)
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        if cv2 is not None:
            cv2.setNumThreads(cv2_threads)


@functools.lru_cache(maxsize=16)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _digest(path: Path) -> str:
    st = path.stat()
    return _file_digest(str(path), st.st_size, st.st_mtime_ns)


def model_fingerprint(config: ExtractConfig) -> dict[str, str]:
    """SHA-256 prefixes of the model files the config uses (without loading the models)."""
    from scan.features.backbone import weights_path

    out = {"backbone": _digest(weights_path(config.backbone))}
    if config.mode == "bottomup":
        from scan.features.detector import ssd_model_files

        graph, cfg = ssd_model_files()
        out["detector"] = _digest(graph)
        out["detector_config"] = _digest(cfg)
    return out


def source_fingerprint(records: Sequence[ImageRecord]) -> str:
    """Hash of the source list: file names, captions, and each file's size and mtime."""
    h = hashlib.sha256()
    for r in records:
        try:
            st = r.path.stat()
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(json.dumps([r.filename, stamp, r.captions], ensure_ascii=False).encode("utf-8"))
    return h.hexdigest()


def _fingerprint(config: ExtractConfig, models: dict[str, str], source: str) -> str:
    blob = json.dumps(
        {"format": FORMAT, "config": config.output_fields(), "models": models, "source": source}, sort_keys=True
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class RegionExtractor:
    """The models of one extraction: image -> ``R`` boxes and their ``F``-dim features.

    Loads the backbone, and the detector in ``bottomup`` mode, once; reuse it across splits.
    :meth:`extract` may be called from several threads at once.

    Threads: :func:`extract_split` and :func:`extract_dataset` run torch (and OpenCV) on one
    intra-op thread for the duration of the extraction, restoring the caller's counts afterwards
    (building an extractor changes nothing process-wide), and run ``workers`` images side by side
    instead. On a CPU, one image per thread beats both batched convolutions (measured: 0.09
    s/image at batch 1 against 0.17 at batch 4, 448x608 input) and multi-threaded ones, whose
    OpenMP barriers crawl when other processes share the cores (10x slower on a loaded 2-core
    machine); and a single-threaded image computes the same bits whichever thread runs it, so the
    output does not depend on scheduling. Calling :meth:`extract` directly leaves the thread
    counts to the caller.
    """

    def __init__(self, config: ExtractConfig) -> None:
        from scan.features.backbone import EfficientNetLiteBackbone

        config.validate()
        self.config = config
        self.backbone = EfficientNetLiteBackbone(
            config.backbone,
            output_stride=config.output_stride,
            shorter_side=config.image_size,
            max_longer_side=config.max_size,
        )
        self.detector = None
        if config.mode == "bottomup":
            from scan.features.detector import SSDMobileNetDetector

            self.detector = SSDMobileNetDetector(
                confidence_threshold=config.detector_threshold,
                max_detections=config.max_detections,
                num_threads=None,  # not set process-wide here: one_thread_per_image does it per extraction
            )
        self.feature_dim = self.backbone.info.num_features
        self._detector_lock = threading.Lock()  # an OpenCV net must not run in two threads at once

    def model_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"backbone": asdict(self.backbone.info)}
        info["detector"] = asdict(self.detector.info) if self.detector is not None else None
        return info

    def boxes(self, image: np.ndarray) -> tuple[np.ndarray, int]:
        """``R`` pixel boxes ``(R, 4)`` for an RGB ``uint8`` image, and how many are detections."""
        boxes, num_detected = self._mode_boxes(image)
        if not self.config.add_grids:
            return boxes, num_detected
        added = [grid_boxes(image.shape[:2], side) for side in self.config.add_grids]
        return np.concatenate([boxes, *added]), num_detected

    def _mode_boxes(self, image: np.ndarray) -> tuple[np.ndarray, int]:
        cfg = self.config
        if self.detector is None:
            return grid_boxes(image.shape[:2], grid_size(cfg.num_regions)), 0
        with self._detector_lock:
            boxes, scores, _labels = self.detector.detect(image)
        return select_regions(
            boxes,
            scores,
            image_size=image.shape[:2],
            num_regions=cfg.num_regions,
            iou_threshold=cfg.iou_threshold,
            min_score=cfg.min_score,
            min_size=cfg.min_box_size,
            return_num_detected=True,
        )

    def extract(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """Features ``(R, F)`` float32, pixel boxes ``(R, 4)`` and the number of detected regions."""
        boxes, num_detected = self.boxes(image)
        return self.features(image, boxes), boxes, num_detected

    @torch.inference_mode()
    def features(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Region features ``(R, F)`` float32 of pixel ``boxes`` ``(R, 4)`` in ``image``."""
        h, w = image.shape[:2]
        x = self.backbone.prepare(image)  # (3, h', w')
        fmap = self.backbone(x.unsqueeze(0))[0]  # (F, h'/s, w'/s)
        sy, sx = x.shape[1] / h, x.shape[2] / w
        scaled = torch.from_numpy(boxes.astype(np.float32)) * torch.tensor([sx, sy, sx, sy])  # (R, 4)
        # One bin of roi_samples^2 samples: the same points and mean as RoIAlign with 7x7 bins of
        # 2x2 samples followed by average pooling (bottom-up attention's head), at a fraction of the cost.
        pooled = roi_align(
            fmap,
            scaled,
            spatial_scale=1.0 / self.backbone.stride,
            output_size=1,
            sampling_ratio=self.config.roi_samples,
        )  # (R, F, 1, 1)
        return pooled.flatten(1).numpy()  # (R, F)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def _write_text_atomic(path: Path, lines: Sequence[str]) -> None:
    write_text_atomic(path, "".join(line + "\n" for line in lines))


def extraction_settings(folder: str | Path, split: str) -> dict[str, Any] | None:
    """The settings a split's features were extracted with (`{split}_extract.json`'s `config`).

    Returns:
        The settings, or None when the split has no extraction record (e.g. the authors'
        released features).

    Raises:
        DataError: the record exists but is not readable JSON with a `config` object.
    """
    path = Path(folder) / f"{split}_extract.json"
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"unreadable extraction record: {error}", path=path) from None
    settings = record.get("config") if isinstance(record, dict) else None
    if not isinstance(settings, dict):
        raise DataError("expected an object with the extraction settings", path=path, field="config")
    return settings


def _paths(out: Path, split: str) -> dict[str, Path]:
    return {
        "ims": out / f"{split}_ims.npy",
        "boxes": out / f"{split}_boxes.npy",
        "caps": out / f"{split}_caps.txt",
        "ids": out / f"{split}_ids.txt",
        "json": out / f"{split}_extract.json",
        "ims_partial": out / f"{split}_ims.npy.partial",
        "boxes_partial": out / f"{split}_boxes.npy.partial",
        "progress": out / f"{split}_extract.progress.json",
    }


def _is_cached(paths: dict[str, Path], fingerprint: str) -> dict[str, Any] | None:
    """The stored extraction record if the final files are there and match, else ``None``."""
    try:
        record = json.loads(paths["json"].read_text(encoding="utf-8"))
        if record.get("fingerprint") != fingerprint:
            return None
        n, r, f = record["counts"]["images"], record["num_regions"], record["feature_dim"]
        ims = np.load(paths["ims"], mmap_mode="r")
        boxes = np.load(paths["boxes"], mmap_mode="r")
        if ims.shape != (n, r, f) or boxes.shape != (n, r, 4) or str(ims.dtype) != record["dtype"]:
            return None
        ids = paths["ids"].read_text(encoding="utf-8").splitlines()
        caps = paths["caps"].read_text(encoding="utf-8").splitlines()
        if len(ids) != n or len(caps) != n * record["captions_per_image"]:
            return None
        return record
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _check_records(records: Sequence[ImageRecord], config: ExtractConfig, split: str) -> list[list[str]]:
    """Validate names and captions up front; the captions to write, one line each."""
    if not records:
        raise DataError(f"split {split!r} has no images")
    seen: set[str] = set()
    captions = []
    for r in records:
        if r.filename in seen:
            raise DataError(f"image listed twice in split {split!r}", path=r.path)
        seen.add(r.filename)
        if "\n" in r.filename or "\r" in r.filename:
            raise DataError("file name contains a newline", path=r.path)
        # Collapse every kind of whitespace, including the ones str.splitlines() breaks on
        # (\v, \f, \x1c-\x1e, \x85, \u2028, \u2029), so one caption is always one line.
        caps = [" ".join(c.split()) for c in r.captions]
        if len(caps) != config.captions_per_image:
            raise DataError(
                f"image has {len(caps)} captions, the layout needs exactly {config.captions_per_image}",
                path=r.path,
                field="captions",
            )
        for k, c in enumerate(caps):
            if not c:
                raise DataError("empty caption", path=r.path, field=f"captions[{k}]")
        captions.append(caps)
    return captions


def _num_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _process(record: ImageRecord, extractor: RegionExtractor) -> tuple[np.ndarray, np.ndarray, int] | ImageLoadError:
    """One image: ``(features (R, F), boxes (R, 4), num_detected)``, or why it cannot be used."""
    try:
        image = load_image(record.path)
    except ImageLoadError as e:
        return e
    try:
        boxes, num_detected = extractor.boxes(image)
    except Exception as e:  # OpenCV rejecting an image: that image fails, not the run
        return ImageLoadError(f"{record.path}: region detection failed: {type(e).__name__}: {e}")
    return extractor.features(image, boxes), boxes, num_detected


def extract_split(
    records: Sequence[ImageRecord],
    out_folder: str | Path,
    split: str,
    config: ExtractConfig | None = None,
    *,
    progress: bool = True,
    extractor: RegionExtractor | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    current: World | None = None,
) -> ExtractSummary:
    """Extract one split's region features into SCAN's layout (see the module docstring).

    Args:
        records: The split's images, in the order to write them.
        out_folder: Output folder (created if missing).
        split: Output split name (``train``, ``dev``, ``test``, ...): the file name prefix.
        config: Extraction settings; ``None`` uses the defaults.
        progress: Show a progress bar and status lines on stderr (failures are reported always).
        extractor: Loaded models to reuse; ``None`` loads them when there is work to do.
        on_batch: Called as ``on_batch(done, total)`` after each batch is safely on disk.
        current: The processes sharing the work (``torchrun``); ``None``: this process alone.
            Every rank calls this with the same arguments; rank 0 holds the lock and writes the
            outputs.

    Returns:
        What was done: counts, failures, whether the result was cached or resumed, timing.

    Raises:
        DataError: a record has the wrong number of captions, an empty caption, a duplicate name.
        ExtractionError: ``config.strict`` and some images could not be read (all are listed).
        FolderBusyError: another extraction is writing ``out_folder`` (it holds the folder's lock
            for its whole run; two runs would mix features of different settings in one array).
    """
    config = config or ExtractConfig()
    config.validate()
    current = current or World()
    with _folder_lock(out_folder, current), one_thread_per_image(opencv=config.mode == "bottomup"):
        return _extract_split(
            records,
            Path(out_folder),
            split,
            config,
            progress=progress,
            extractor=extractor,
            on_batch=on_batch,
            current=current,
        )


@contextmanager
def _folder_lock(folder: str | Path, current: World) -> Iterator[None]:
    """The output folder's lock, held by rank 0 for all ranks (an flock has one holder).

    The other ranks wait until rank 0 holds it, so none writes into a folder another run is
    using; a busy folder makes rank 0 fail, and torchrun then stops the waiting ranks.
    """
    if current.main:
        with FolderLock(folder, purpose=LOCK_PURPOSE):
            current.barrier()
            yield
    else:
        current.barrier()
        yield


def _share(n: int, current: World) -> tuple[int, int]:
    """This rank's contiguous rows ``[lo, hi)`` of ``n``: shares differ by at most one row."""
    return n * current.rank // current.size, n * (current.rank + 1) // current.size


def _progress_path(paths: dict[str, Path], rank: int, size: int) -> Path:
    if size == 1:
        return paths["progress"]
    return paths["progress"].with_name(paths["progress"].name.replace(".progress.", f".progress-{rank}-of-{size}."))


def _progress_files(paths: dict[str, Path]) -> list[Path]:
    """Every progress file of the split, of any number of processes."""
    return sorted(paths["progress"].parent.glob(paths["progress"].name.replace(".progress.", ".progress*.")))


def _read_progress(
    path: Path, fingerprint: str, lo: int, hi: int
) -> tuple[int, list[tuple[int, FailedImage]], list[int]]:
    """``(next row, failures so far, detection counts)`` of a rank's share, from its progress file.

    A missing, unreadable or foreign file (other settings, sources or share) starts the share afresh.
    """
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        share = state.get("share")  # absent in a one-process file of an earlier version
        if state.get("fingerprint") != fingerprint or (share is not None and list(share) != [lo, hi]):
            raise ValueError("another run's progress")
        done = int(state["done"])
        failed = [(int(x["index"]), FailedImage(x["filename"], x["reason"])) for x in state["failed"]]
        detected = [int(x) for x in state["detected"]]
        if len(detected) != 2 or not lo <= done <= hi:
            raise ValueError("old progress format")
        return done, failed, detected
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return lo, [], [0, 0]


def _progress_fingerprint(paths: dict[str, Path], rank: int, size: int) -> str | None:
    """The fingerprint a rank's progress file records, or None when it has none."""
    try:
        state = json.loads(_progress_path(paths, rank, size).read_text(encoding="utf-8"))
        return state.get("fingerprint") if isinstance(state, dict) else None
    except (OSError, ValueError):
        return None


def _open_partials(
    paths: dict[str, Path], fingerprint: str, shape: tuple[int, int, int], dtype: np.dtype, current: World
) -> tuple[np.memmap, np.memmap]:
    """The ``.partial`` memmaps every rank writes its rows into.

    Kept from an interrupted run of the same settings and sources when any rank of it (with this
    many processes) recorded progress, so no finished share is redone; else made afresh by rank 0,
    with every stale progress file removed.
    """
    if current.main:
        try:
            ims = np.lib.format.open_memmap(paths["ims_partial"], mode="r")
            boxes = np.lib.format.open_memmap(paths["boxes_partial"], mode="r")
            resumable = (
                ims.shape == shape
                and ims.dtype == dtype
                and boxes.shape == (*shape[:2], 4)
                and any(_progress_fingerprint(paths, rank, current.size) == fingerprint for rank in range(current.size))
            )
            del ims, boxes
        except (OSError, ValueError, AttributeError):
            resumable = False
        if not resumable:
            for stale in _progress_files(paths):
                stale.unlink(missing_ok=True)
            for key, dims, kind in (("ims_partial", shape, dtype), ("boxes_partial", (*shape[:2], 4), np.float32)):
                made = np.lib.format.open_memmap(paths[key], mode="w+", dtype=kind, shape=dims)
                made.flush()
                del made
    current.barrier()  # the partial files are there (and stale progress gone) before any rank opens them
    return (
        np.lib.format.open_memmap(paths["ims_partial"], mode="r+"),
        np.lib.format.open_memmap(paths["boxes_partial"], mode="r+"),
    )


def _extract_split(
    records: Sequence[ImageRecord],
    out: Path,
    split: str,
    config: ExtractConfig,
    *,
    progress: bool,
    extractor: RegionExtractor | None,
    on_batch: Callable[[int, int], None] | None,
    current: World,
) -> ExtractSummary:
    """:func:`extract_split` for a caller that holds ``out``'s lock and set the thread counts.

    (The lock is an flock: a second one taken by the same process on the same folder would fail,
    so :func:`extract_dataset` takes it once and calls this for each split.)
    """
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    paths = _paths(out, split)
    captions = _check_records(records, config, split)
    fingerprint = _fingerprint(config, model_fingerprint(config), source_fingerprint(records))
    n = len(records)

    cached = _is_cached(paths, fingerprint)
    current.barrier()  # every rank has looked before rank 0 can change anything
    if cached is not None:
        if progress and current.main:
            _log(
                f"{split}: {paths['ims']} is up to date ({cached['counts']['images']} images, same config and "
                "sources); nothing to do"
            )
        return _summary_of_record(cached, out, split, seconds=time.perf_counter() - start)

    extractor = extractor or RegionExtractor(config)
    if extractor.config.model_fields() != config.model_fields():
        raise ValueError("the extractor was built for different model settings than this config")
    r, f_dim = config.total_regions, extractor.feature_dim
    dtype = np.dtype(config.dtype)

    # Resume this rank's share from a matching interrupted run, or start it afresh.
    lo, hi = _share(n, current)
    progress_file = _progress_path(paths, current.rank, current.size)
    ims, boxes_mm = _open_partials(paths, fingerprint, (n, r, f_dim), dtype, current)
    done, failed, detected = _read_progress(progress_file, fingerprint, lo, hi)  # detected: (regions, images)
    if done > lo and progress:
        _log(f"{split}: resuming an interrupted extraction at image {done} of {n}")
    resumed_from = done

    bar = None
    if progress and current.main:
        from tqdm import tqdm

        share = f", rank 0 of {current.size}" if current.distributed else ""
        bar = tqdm(
            total=hi - lo,
            initial=done - lo,
            desc=f"extract {split} ({config.mode}{share})",
            unit="img",
            file=sys.stderr,
        )
    bs = config.batch_size
    starts = list(range(done, hi, bs))
    # Processes on one machine share its CPUs: each takes its part of them.
    pool = ThreadPoolExecutor(max_workers=config.workers or max(1, _num_cpus() // current.local_size))

    def submit(k: int) -> list[Future]:
        if k >= len(starts):
            return []
        return [pool.submit(_process, records[i], extractor) for i in range(starts[k], min(starts[k] + bs, hi))]

    pending = submit(0)
    try:
        for k, first in enumerate(starts):
            last = min(first + bs, hi)
            batch, pending = pending, submit(k + 1)  # queue the next batch: workers never wait on I/O
            for i, future in zip(range(first, last), batch, strict=True):
                item = future.result()
                if isinstance(item, ImageLoadError):
                    failed.append((i, FailedImage(records[i].filename, str(item))))
                    _log(f"{split}: skipping unreadable image {records[i].filename}: {item}")
                    continue
                feats, bx, n_det = item
                ims[i] = feats.astype(dtype)
                boxes_mm[i] = bx
                detected[0] += int(n_det)
                detected[1] += 1
            ims.flush()
            boxes_mm.flush()
            done = last
            _write_json_atomic(
                progress_file,
                {
                    "fingerprint": fingerprint,
                    "share": [lo, hi],
                    "done": done,
                    "failed": [{"index": i, **asdict(fi)} for i, fi in failed],
                    "detected": detected,
                },
            )
            if bar is not None:
                bar.update(last - first)
            if on_batch is not None:
                on_batch(done, n)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()
    processed = hi - resumed_from
    if current.distributed:
        if not done == hi:  # pragma: no cover - the loop above ends at hi
            raise ExtractionError(f"{split}: rank {current.rank} stopped at image {done} of its share [{lo}, {hi})", [])
        current.barrier()  # every rank's rows and progress are on disk
        if not current.main:
            del ims, boxes_mm
            current.barrier()  # rank 0 writes the outputs
            record = _is_cached(paths, fingerprint)
            if record is None:
                raise ExtractionError(f"{split}: rank 0 did not write {paths['json']}", [])
            return _summary_of_record(record, out, split, seconds=time.perf_counter() - start, cached=False)
        failed, detected = _merge_progress(paths, fingerprint, n, current.size)

    failed_idx = {i for i, _ in failed}
    failed_list = [fi for _, fi in sorted(failed, key=lambda t: t[0])]
    if failed_list:
        listing = "\n".join(f"  {fi.filename}: {fi.reason}" for fi in failed_list)
        if config.strict:
            del ims, boxes_mm
            raise ExtractionError(
                f"{split}: {len(failed_list)} of {n} images could not be read (strict mode; the others are "
                f"extracted and kept in {paths['ims_partial']}, rerun without --strict to skip the bad ones):\n"
                f"{listing}",
                failed_list,
            )
        _log(f"{split}: left out {len(failed_list)} unreadable image(s) and their captions:\n{listing}")

    keep = [i for i in range(n) if i not in failed_idx]
    if not keep:
        del ims, boxes_mm
        raise ExtractionError(f"{split}: none of the {n} images could be read", failed_list)
    # The JSON marks a complete set: drop an older one before replacing any of its files, so a crash
    # in between can never leave a JSON that vouches for files it did not describe.
    paths["json"].unlink(missing_ok=True)
    if failed_idx:  # compact the rows of the good images into new files, in chunks
        for key, src in (("ims", ims), ("boxes", boxes_mm)):
            tmp = paths[key].with_name(paths[key].name + ".compact")
            dst = np.lib.format.open_memmap(tmp, mode="w+", dtype=src.dtype, shape=(len(keep), *src.shape[1:]))
            for a in range(0, len(keep), 1024):
                dst[a : a + 1024] = src[keep[a : a + 1024]]
            dst.flush()
            del dst
            os.replace(tmp, paths[key])
        del ims, boxes_mm
        paths["ims_partial"].unlink()
        paths["boxes_partial"].unlink()
    else:
        del ims, boxes_mm
        os.replace(paths["ims_partial"], paths["ims"])
        os.replace(paths["boxes_partial"], paths["boxes"])
    _write_text_atomic(paths["caps"], [c for i in keep for c in captions[i]])
    _write_text_atomic(paths["ids"], [records[i].filename for i in keep])
    mean_detected = round(detected[0] / detected[1], 4) if config.mode == "bottomup" and detected[1] else None
    record = {
        "format": FORMAT,
        "split": split,
        "fingerprint": fingerprint,
        "config": config.output_fields(),  # everything that determines the written bytes
        "execution": {k: getattr(config, k) for k in config.EXECUTION_FIELDS},
        "mode": config.mode,
        "num_regions": r,
        "feature_dim": f_dim,
        "dtype": config.dtype,
        "captions_per_image": config.captions_per_image,
        "models": extractor.model_info(),
        "model_files_sha256": model_fingerprint(config),
        "counts": {
            "source_images": n,
            "images": len(keep),
            "captions": len(keep) * config.captions_per_image,
            "failed": len(failed_list),
        },
        "failed": [asdict(fi) for fi in failed_list],
        "mean_detected_regions": mean_detected,
        "files": {k: paths[k].name for k in ("ims", "boxes", "caps", "ids")},
        "boxes": "pixel x1, y1, x2, y2 in the original image (EXIF-upright)",
        "versions": _versions(),
    }
    _write_json_atomic(paths["json"], record)
    # This run's progress, any left by a run of another process count, and the temporaries of
    # progress writes that a kill cut short (`.name.*.tmp`, see scan.atomic).
    progress_name = paths["progress"].name.replace(".progress.", ".progress*.")
    for stale in [*_progress_files(paths), *out.glob(f".{progress_name}.*.tmp")]:
        stale.unlink(missing_ok=True)
    current.barrier()  # the outputs are there for the other ranks to read
    seconds = time.perf_counter() - start
    summary = ExtractSummary(
        split=split,
        out_folder=out,
        num_images=len(keep),
        num_captions=len(keep) * config.captions_per_image,
        num_regions=r,
        feature_dim=f_dim,
        failed=failed_list,
        resumed_from=resumed_from,
        seconds=seconds,
        seconds_per_image=seconds / max(processed, 1),
        mean_detected_regions=mean_detected,
    )
    if progress:
        _log(
            f"{split}: wrote {len(keep)} images x {r} regions x {f_dim} ({config.dtype}) to {paths['ims']} "
            f"in {seconds:.1f} s ({summary.seconds_per_image:.3f} s/image)"
        )
    return summary


def _summary_of_record(
    record: dict[str, Any], out: Path, split: str, *, seconds: float, cached: bool = True
) -> ExtractSummary:
    return ExtractSummary(
        split=split,
        out_folder=out,
        num_images=record["counts"]["images"],
        num_captions=record["counts"]["captions"],
        num_regions=record["num_regions"],
        feature_dim=record["feature_dim"],
        failed=[FailedImage(**f) for f in record["failed"]],
        cached=cached,
        seconds=seconds,
        mean_detected_regions=record.get("mean_detected_regions"),
    )


def _merge_progress(
    paths: dict[str, Path], fingerprint: str, n: int, size: int
) -> tuple[list[tuple[int, FailedImage]], list[int]]:
    """Every rank's failures and detection counts, read from their finished progress files."""
    failed: list[tuple[int, FailedImage]] = []
    detected = [0, 0]
    for rank in range(size):
        lo, hi = _share(n, World(rank=rank, size=size))
        done, rank_failed, rank_detected = _read_progress(_progress_path(paths, rank, size), fingerprint, lo, hi)
        if done != hi:
            raise ExtractionError(f"rank {rank} of {size} left its images [{lo}, {hi}) unfinished ({done})", [])
        failed += rank_failed
        detected = [a + b for a, b in zip(detected, rank_detected, strict=True)]
    return failed, detected


def _versions() -> dict[str, str]:
    versions = {"numpy": np.__version__, "torch": torch.__version__.split("+")[0]}
    try:
        import cv2

        versions["opencv"] = cv2.__version__
    except ImportError:
        pass
    return versions


def extract_dataset(
    source: str | Path,
    out_folder: str | Path,
    config: ExtractConfig | None = None,
    splits: Sequence[str] | None = None,
    *,
    progress: bool = True,
    records: Sequence[ImageRecord] | None = None,
    dev: int | float | None = None,
    test: int | float | None = None,
    seed: int = 0,
    current: World | None = None,
) -> dict[str, ExtractSummary]:
    """Extract every split of a collection: a folder, or a ``dataset_*.json``.

    The source is read by :func:`scan.data.raw.read_image_folder`.

    Args:
        source: Folder of images with ``dataset_*.json`` or ``captions.txt``, or the JSON itself.
        out_folder: Output folder.
        config: Extraction settings.
        splits: Output split names (``train``, ``dev``, ``test``, ``testall``, ``restval``,
            :data:`scan.data.raw.SPLIT_ALIASES`); ``None``: those of ``train``, ``dev``, ``test``
            that have images. ``train`` includes ``restval``, ``dev`` is the JSON's ``val``.
        records: Already-read records (skips reading ``source``).
        dev, test, seed: Split sizes and seed for a collection without splits (Kaggle layout).
        current: The processes sharing the work (see :func:`extract_split`); ``None``: this one alone.

    Returns:
        The summary of each split, by output name.

    Raises:
        FolderBusyError: another extraction is writing ``out_folder``. The folder's lock is held
            from after the source is read until the last split is written.
        DataError, ExtractionError: as :func:`extract_split`, and for a split without images.
    """
    config = config or ExtractConfig()
    config.validate()
    if records is None:
        records = read_image_folder(source, captions_per_image=config.captions_per_image, dev=dev, test=test, seed=seed)
    by_split = {name: select_split(records, name) for name in (splits or DEFAULT_SPLITS)}
    if splits is None:
        by_split = {k: v for k, v in by_split.items() if v}
    for name, recs in by_split.items():
        if not recs:
            present = sorted({r.split for r in records})
            raise DataError(f"split {name!r} has no images (the source has splits {present})", path=source)
    # The source is read and checked before the lock, so a bad source leaves no output folder behind.
    out = Path(out_folder)
    current = current or World()
    with _folder_lock(out, current), one_thread_per_image(opencv=config.mode == "bottomup"):
        extractor: RegionExtractor | None = None
        summaries = {}
        for name, recs in by_split.items():
            # Load the models only once, and only if some split has work to do.
            fp = _fingerprint(config, model_fingerprint(config), source_fingerprint(recs))
            if extractor is None and _is_cached(_paths(out, name), fp) is None:
                extractor = RegionExtractor(config)
            summaries[name] = _extract_split(
                recs, out, name, config, progress=progress, extractor=extractor, on_batch=None, current=current
            )
    return summaries
