"""Change detection with the single-date SegEarth-R1: its test against changes that are not real.

Both dates are segmented with the same query (image features computed once per date) and combined
with the one per-date formula (geoseg.models.change.combine: appeared = min(after, 1 - dilate(before)),
the dilation absorbing small misregistration of object edges). Remaining change regions are
checked with AnyChange's latent change score: the cosine between the mean image features of the two
dates inside the region; a region whose features barely turned (lighting, seasonal tint, a shifted
but identical object) is dropped.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from geoseg.models.segearth.preprocess import PadInfo, to_input_frame, unpad


def region_change_scores(
    labels: torch.Tensor, feats_after: torch.Tensor, feats_before: torch.Tensor, pad: PadInfo
) -> torch.Tensor:
    """AnyChange score (-cos of the two dates' mean features) of each labelled region.

    labels: H x W int64 in the tile frame (0 = background, 1..n regions); feats_*: C x h x w in the
    padded model-input frame. Returns n scores in [-1, 1]; NaN for a region too small to cover any
    feature-map cell (it cannot be judged and is kept).
    """
    n = int(labels.max())
    if n == 0:
        return torch.empty(0)
    stride = pad.size // feats_after.shape[-1]
    frame = to_input_frame(labels.float(), pad).long()
    cells = frame[stride // 2 :: stride, stride // 2 :: stride][
        : feats_after.shape[-2], : feats_after.shape[-1]
    ]
    index = cells.reshape(-1).to(feats_after.device)
    c = feats_after.shape[0]
    sums = []
    for feats in (feats_after, feats_before):
        flat = feats.reshape(c, -1).t().float()
        sums.append(torch.zeros(n + 1, c, device=flat.device).index_add_(0, index, flat))
    counts = torch.bincount(index, minlength=n + 1)
    # Mean features only differ from sums by a positive factor, which the cosine ignores.
    scores = -F.cosine_similarity(sums[0][1:], sums[1][1:], dim=-1, eps=1e-8)
    scores[counts[1:] == 0] = float("nan")
    return scores.cpu()


def suppress_unchanged(
    change: torch.Tensor,
    feats_after: torch.Tensor,
    feats_before: torch.Tensor,
    pad: PadInfo,
    min_angle_deg: float,
    threshold: float = 0.5,
) -> torch.Tensor:
    """Zero the change regions (connected components of change > threshold) whose mean features
    turned by less than `min_angle_deg` between dates (AnyChange's test `-cos > cos(180 - angle)`).

    change: B x Q x H x W; feats_*: B x C x h x w. Returns a new tensor.
    """
    out = change.clone()
    limit = -math.cos(math.radians(min_angle_deg))  # keep if score > limit
    for b in range(change.shape[0]):
        for q in range(change.shape[1]):
            binary = (change[b, q] > threshold).cpu().numpy()
            labels, n = ndimage.label(binary)
            if n == 0:
                continue
            label_ids = torch.from_numpy(labels.astype(np.int64))
            scores = region_change_scores(label_ids, feats_after[b], feats_before[b], pad)
            keep = torch.ones(n + 1, dtype=torch.bool)
            keep[1:] = ~(scores <= limit)  # NaN (unjudgeable) stays kept
            drop = (~keep)[label_ids].to(out.device)
            out[b, q][drop] = 0.0
    return out


def feature_change_map(
    feats_after: torch.Tensor, feats_before: torch.Tensor, pad: PadInfo
) -> torch.Tensor:
    """Dense change evidence in [0, 1]: (1 - cos) / 2 of the per-cell features, in the tile frame.

    feats_*: B x C x h x w -> B x H x W. Useful for scoring polygons; cheap (no components).
    """
    cos = F.cosine_similarity(feats_after.float(), feats_before.float(), dim=1, eps=1e-8)
    return unpad(((1 - cos) / 2).clamp(0, 1), pad)
