"""Temporal fusion for the change variant (after MTRefSeg-R1's bi-temporal fusion block).

At every scale the siamese features of the two dates are combined from their signed difference
(direction: appeared vs disappeared), their absolute difference (magnitude of change) and the
after-date features (what is there now), re-weighted by a channel gate and added to a shortcut of
the dates' mean so that the single-date decoder keeps seeing familiar features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TemporalFusion(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.diff = nn.Sequential(
            nn.Conv2d(3 * channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels),
            nn.Conv2d(channels, channels, 1),
        )
        hidden = max(channels // 4, 8)
        self.gate = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, channels))

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        signed = after - before
        h = self.diff(torch.cat([signed, signed.abs(), after], dim=1))
        gate = torch.sigmoid(self.gate(F.adaptive_avg_pool2d(h, 1).flatten(1)))[:, :, None, None]
        return 0.5 * (before + after) + gate * h
