"""A light hierarchical vision encoder: four stages at strides 4, 8, 16 and 32.

Cheap inverted-residual conv blocks (depthwise 3x3) do the work at high resolution; the few
attention blocks sit at strides 16 and 32 only, where a 256 px tile has 256 and 64 tokens, so the
whole encoder stays well under a GFLOP per 256x256 tile and runs fast on a laptop CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBlock(nn.Module):
    """Depthwise 3x3 -> BN -> pointwise expand -> GELU -> pointwise project, with a residual."""

    def __init__(self, channels: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(channels * mlp_ratio)
        self.dw = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.norm = nn.BatchNorm2d(channels)
        self.pw1 = nn.Conv2d(channels, hidden, 1)
        self.pw2 = nn.Conv2d(hidden, channels, 1)
        self.scale = nn.Parameter(torch.full((1, channels, 1, 1), 0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pw2(F.gelu(self.pw1(self.norm(self.dw(x)))))
        return x + self.scale * y


class AttentionBlock(nn.Module):
    """Global self-attention over a coarse feature map, with a convolutional position encoding
    (a depthwise 3x3 conv) so that it works at any input size."""

    def __init__(self, channels: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.pos = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.norm1 = nn.LayerNorm(channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(channels)
        hidden = int(channels * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = x + self.pos(x)
        t = x.flatten(2).transpose(1, 2)
        n = self.norm1(t)
        t = t + self.attn(n, n, n, need_weights=False)[0]
        t = t + self.mlp(self.norm2(t))
        return t.transpose(1, 2).reshape(b, c, h, w)


def _conv_bn_act(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.GELU(),
    )


class VisionEncoder(nn.Module):
    """Returns four feature maps [s4, s8, s16, s32] with `widths` channels."""

    def __init__(
        self,
        widths: tuple[int, ...],
        depths: tuple[int, ...],
        attn_blocks: tuple[int, ...],
        heads: int,
        mlp_ratio: float,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv_bn_act(3, widths[0] // 2, 2), _conv_bn_act(widths[0] // 2, widths[0], 2))
        self.stages = nn.ModuleList()
        for i, (width, depth, n_attn) in enumerate(zip(widths, depths, attn_blocks, strict=True)):
            layers: list[nn.Module] = []
            if i > 0:  # 2x2 stride-2 conv between stages
                layers += [nn.Conv2d(widths[i - 1], width, 2, stride=2, bias=False), nn.BatchNorm2d(width)]
            for j in range(depth):
                if j >= depth - n_attn:
                    layers.append(AttentionBlock(width, heads, mlp_ratio))
                else:
                    layers.append(ConvBlock(width, mlp_ratio))
            self.stages.append(nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
