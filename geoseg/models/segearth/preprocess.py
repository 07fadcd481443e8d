"""The reference's input transform and its exact inverse for the logits.

Reference (`preprocess_image` in SegEarth-R1's datasets): resize so that the LONGEST side is the
input size (other side `int(h * size / w)`, bilinear), pad CENTRED with 0 (top = pad // 2), then
subtract the ImageNet mean and divide by the std on the 0-255 scale. geoseg tiles arrive in [0, 1]
(normalised per scene), so they are scaled by 255 first. Square tiles of the native size are only
padded by nothing; the transform matters for non-square edge tiles.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from geoseg.models.segearth.config import PIXEL_MEAN, PIXEL_STD


@dataclass(frozen=True)
class PadInfo:
    """Where the (resized) tile sits inside the square model input."""

    height: int  # original tile size
    width: int
    resized_height: int  # size after the longest-side resize
    resized_width: int
    top: int
    left: int
    size: int  # model input side


def pad_info(height: int, width: int, size: int) -> PadInfo:
    if height >= width:  # the reference's `else` branch: height is the longest (or equal) side
        rh, rw = size, int(width * (size / height))
    else:
        rh, rw = int(height * (size / width)), size
    return PadInfo(height, width, rh, rw, (size - rh) // 2, (size - rw) // 2, size)


def preprocess(images: torch.Tensor, size: int) -> tuple[torch.Tensor, PadInfo]:
    """B x 3 x H x W in [0, 1] -> (B x 3 x size x size normalised, PadInfo)."""
    info = pad_info(images.shape[-2], images.shape[-1], size)
    x = images.float() * 255.0
    if (info.resized_height, info.resized_width) != (info.height, info.width):
        x = F.interpolate(
            x, size=(info.resized_height, info.resized_width), mode="bilinear", align_corners=False
        )
    bottom = size - info.resized_height - info.top
    right = size - info.resized_width - info.left
    x = F.pad(x, (info.left, right, info.top, bottom), value=0.0)
    mean = torch.tensor(PIXEL_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std, info


def unpad(maps: torch.Tensor, info: PadInfo) -> torch.Tensor:
    """... x size x size (logits, probabilities or features) -> ... x H x W in the tile's frame."""
    lead = maps.shape[:-2]
    if maps.shape[-1] != info.size:  # e.g. stride-4 logits: bring them to the input frame first
        maps = F.interpolate(
            maps.reshape(-1, 1, *maps.shape[-2:]).float(),
            size=(info.size, info.size),
            mode="bilinear",
            align_corners=False,
        ).reshape(*lead, info.size, info.size)
    crop = maps[
        ..., info.top : info.top + info.resized_height, info.left : info.left + info.resized_width
    ]
    if (info.resized_height, info.resized_width) == (info.height, info.width):
        return crop
    flat = crop.reshape(-1, 1, *crop.shape[-2:]).float()
    out = F.interpolate(flat, size=(info.height, info.width), mode="bilinear", align_corners=False)
    return out.reshape(*lead, info.height, info.width)


def to_input_frame(maps: torch.Tensor, info: PadInfo) -> torch.Tensor:
    """Inverse of `unpad` for masks/labels: ... x H x W -> ... x size x size (nearest, zero pad)."""
    lead = maps.shape[:-2]
    x = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    if (info.resized_height, info.resized_width) != (info.height, info.width):
        x = F.interpolate(x, size=(info.resized_height, info.resized_width), mode="nearest")
    bottom = info.size - info.resized_height - info.top
    right = info.size - info.resized_width - info.left
    x = F.pad(x, (info.left, right, info.top, bottom), value=0.0)
    return x.reshape(*lead, info.size, info.size)
