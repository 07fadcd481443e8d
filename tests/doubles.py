"""Test-double segmenters. They live in tests/ only, never in the product.

- BandOracle: returns the scene's last band (a ground-truth mask written into the file) as the
  probability, so the pipeline's georeferencing can be checked to the pixel.
- ConvOracle: a deterministic convolution with a 31 px receptive field and zero padding, so tile
  edges change its output the way a real network's do; seams show unless tiles are blended.
- count_calls: wraps a library function so a test can count how often a run calls it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from geoseg.models.base import ModelInfo, Prediction


def count_calls(monkeypatch, module: object, name: str) -> list:
    """Replace module.name by a wrapper that records each call's arguments (and still calls it)."""
    calls: list = []
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


class BandOracle:
    def __init__(self, bands: int = 4, tile_size: int = 256, overlap: int = 32):
        self.info = ModelInfo("band-oracle", "test", tile_size, overlap, bands=bands)
        self.device = torch.device("cpu")
        self.calls = 0

    def predict(self, images: torch.Tensor, queries: Sequence[str]) -> Prediction:
        self.calls += 1
        mask = (images[:, -1] > 0.5).float()
        return Prediction(mask[:, None].expand(-1, len(queries), -1, -1).contiguous())


class ConvOracle:
    radius = 15

    def __init__(self, tile_size: int = 128, overlap: int = 32):
        self.info = ModelInfo("conv-oracle", "test", tile_size, overlap, bands=3)
        self.device = torch.device("cpu")

    def predict(self, images: torch.Tensor, queries: Sequence[str]) -> Prediction:
        grey = images.mean(dim=1, keepdim=True)
        k = 2 * self.radius + 1
        blurred = F.avg_pool2d(grey, k, stride=1, padding=self.radius, count_include_pad=True)
        prob = torch.sigmoid(25 * (blurred - 0.45))[:, 0]
        return Prediction(prob[:, None].expand(-1, len(queries), -1, -1).contiguous())


class DarkOracle:
    """Probability 1 where the first band is dark (water in SWIR/NIR composites), else 0."""

    def __init__(self, tile_size: int = 256, overlap: int = 32, level: float = 0.15):
        self.info = ModelInfo("dark-oracle", "test", tile_size, overlap, bands=3)
        self.device = torch.device("cpu")
        self.level = level

    def predict(self, images: torch.Tensor, queries: Sequence[str]) -> Prediction:
        prob = (images[:, 0] < self.level).float()
        return Prediction(prob[:, None].expand(-1, len(queries), -1, -1).contiguous())
