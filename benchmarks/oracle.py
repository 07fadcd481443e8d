"""The benchmarks' deterministic oracle model.

tests/doubles.py's ConvOracle (31 px box filter + sigmoid, zero padding at tile edges, so tile
borders change its output the way a real network's receptive field does), computed as two 1-D
box filters instead of one 31 x 31 one: the same function (to float rounding, < 1e-5), ten times
cheaper, so the engine's own costs are not hidden behind an artificially slow model.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from doubles import ConvOracle  # noqa: E402
from geoseg.models.base import Prediction  # noqa: E402


class SeparableConvOracle(ConvOracle):
    def __init__(self, tile_size: int = 128, overlap: int = 32, radius: int = ConvOracle.radius):
        super().__init__(tile_size, overlap)
        self.radius = radius  # receptive field 2 * radius + 1 pixels

    def predict(self, images: torch.Tensor, queries: Sequence[str]) -> Prediction:
        grey = images.mean(dim=1, keepdim=True)
        k, r = 2 * self.radius + 1, self.radius
        blurred = F.avg_pool2d(grey, (1, k), stride=1, padding=(0, r), count_include_pad=True)
        blurred = F.avg_pool2d(blurred, (k, 1), stride=1, padding=(r, 0), count_include_pad=True)
        prob = torch.sigmoid(25 * (blurred - 0.45))[:, 0]
        return Prediction(prob[:, None].expand(-1, len(queries), -1, -1).contiguous())
