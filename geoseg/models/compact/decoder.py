"""Multi-scale, language-conditioned decoder and the existence head.

The decoder runs once per (image, query) pair, on image features that were computed once per
image. At strides 32, 16 and 8 its pixels cross-attend to the guidance set; at stride 4 a FiLM
modulation by the sentence token stands in for attention (4096 pixels per 256 px tile: attention
there would dominate the cost). Mask logits come out at stride 4 and are upsampled bilinearly.

The existence head answers "is the target in this tile at all" from the pooled stride-16 decoder
features and the sentence token. At inference the mask probability is multiplied by the existence
probability, so tiles without the target yield (near) zero everywhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from geoseg.models.compact.guidance import CrossAttention, Guidance


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


class Film(nn.Module):
    """Feature-wise scale and shift from the sentence token."""

    def __init__(self, dim: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        scale, shift = self.proj(sentence)[:, :, None, None].chunk(2, dim=1)
        return x * (1 + scale) + shift


class GuidedStage(nn.Module):
    """FiLM + cross-attention of every pixel to the guidance set + a conv block."""

    def __init__(self, channels: int, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.film = Film(dim, channels)
        self.cross = CrossAttention(channels, dim, heads)
        self.conv = ConvBlock(channels, mlp_ratio)

    def forward(self, x: torch.Tensor, guidance: Guidance) -> torch.Tensor:
        b, c, h, w = x.shape
        x = self.film(x, guidance.sentence)
        t = self.cross(x.flatten(2).transpose(1, 2), guidance.tokens, key_padding_mask=guidance.padding)
        return self.conv(t.transpose(1, 2).reshape(b, c, h, w))


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class Decoder(nn.Module):
    def __init__(self, dim: int, widths: tuple[int, int], heads: int, mlp_ratio: float) -> None:
        super().__init__()
        w8, w4 = widths
        self.s32 = GuidedStage(dim, dim, heads, mlp_ratio)
        self.s16 = GuidedStage(dim, dim, heads, mlp_ratio)
        self.to8 = nn.Conv2d(dim, w8, 1)
        self.s8 = GuidedStage(w8, dim, max(1, heads // 2), mlp_ratio)
        self.to4 = nn.Conv2d(w8, w4, 1)
        self.film4 = Film(dim, w4)
        self.conv4 = ConvBlock(w4, mlp_ratio)
        self.head = nn.Conv2d(w4, 1, 1)
        self.exist = nn.Sequential(nn.Linear(3 * dim, dim), nn.GELU(), nn.Linear(dim, 1))

    def forward(self, lateral: list[torch.Tensor], guidance: Guidance) -> tuple[torch.Tensor, torch.Tensor]:
        """lateral: per-pair [s4, s8, s16, s32] projections -> (mask logits at s4, existence logits)."""
        p4, p8, p16, p32 = lateral
        x = self.s32(p32, guidance)
        x = self.s16(p16 + _up(x, p16), guidance)
        pooled = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3)), guidance.sentence], dim=1)
        exist = self.exist(pooled).squeeze(1)
        x = self.s8(p8 + _up(self.to8(x), p8), guidance)
        x = p4 + _up(self.to4(x), p4)
        x = self.conv4(self.film4(x, guidance.sentence))
        return self.head(F.gelu(x)).squeeze(1), exist
