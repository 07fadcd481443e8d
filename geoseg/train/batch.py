"""The training batch every source gives the trainer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
import torch


@dataclass
class Batch:
    images: torch.Tensor  # B x 3 x H x W in [0, 1] (after date in change mode)
    queries: list[str]  # M
    image_index: torch.Tensor  # M, which image each query asks
    masks: torch.Tensor  # M x H x W float {0, 1}
    before: torch.Tensor | None = None  # B x 3 x H x W (change mode)
    change_masks: torch.Tensor | None = None  # B x H x W class-agnostic change (change mode)
    tags: list[tuple[str, ...]] | None = None  # per pair, for grouped evaluation
    valid: torch.Tensor | None = None  # M x H x W float {0, 1}: pixels the loss may score


def to_tensor_images(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().contiguous()


def stack_batch(images: list[np.ndarray], queries: list[str], index: list[int], masks: list[np.ndarray], *,
                befores: list[np.ndarray] | None = None, changes: list[np.ndarray] | None = None,
                valid: list[np.ndarray] | None = None) -> Batch:
    """A Batch from per-image arrays (H x W x 3 images, H x W masks) and per-pair lists."""
    def stack(arrays: list[np.ndarray] | None) -> torch.Tensor | None:
        return torch.from_numpy(np.stack(arrays)).float() if arrays else None

    return Batch(
        images=to_tensor_images(images),
        queries=queries,
        image_index=torch.tensor(index, dtype=torch.long),
        masks=cast(torch.Tensor, stack(masks)),  # None only for an empty batch, as before
        before=to_tensor_images(befores) if befores else None,
        change_masks=stack(changes),
        valid=stack(valid),
    )


def concat_batches(parts: list[Batch]) -> Batch:
    """One batch holding the images and pairs of `parts`, in order (each pair's image index moved
    past the earlier parts' images; a part without a valid mask is valid everywhere). The parts are
    all single-date or all change pairs (before, after and class-agnostic change per image)."""
    dated = {p.before is not None for p in parts}
    if len(dated) > 1:
        raise ValueError("concat_batches joins single-date batches or change batches, not both")
    if len(parts) == 1:
        return parts[0]
    offsets = np.cumsum([0] + [p.images.shape[0] for p in parts[:-1]])
    # a part whose images drew no pair (masks None) adds images only
    asked = [(p, int(o)) for p, o in zip(parts, offsets, strict=True) if p.masks is not None]
    masks = torch.cat([p.masks for p, _ in asked]) if asked else None
    valid = None
    if any(p.valid is not None for p, _ in asked):
        valid = torch.cat([p.valid if p.valid is not None else torch.ones_like(p.masks) for p, _ in asked])
    return Batch(
        images=torch.cat([p.images for p in parts]),
        queries=[q for p, _ in asked for q in p.queries],
        image_index=torch.cat([p.image_index + o for p, o in asked]) if asked else parts[0].image_index,
        masks=cast(torch.Tensor, masks),  # None only when no part drew a pair, as stack_batch
        before=torch.cat([cast(torch.Tensor, p.before) for p in parts]) if True in dated else None,
        change_masks=torch.cat([cast(torch.Tensor, p.change_masks) for p in parts]) if True in dated else None,
        valid=valid,
    )
