"""Training losses of the compact model: BCE + Dice on masks, existence BCE, pixel contrastive
loss on the sentence token's relevance map, and (change variant) class-agnostic change BCE + Dice."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from geoseg.models.compact.model import ModelOutput


@dataclass
class LossWeights:
    bce: float = 1.0
    dice: float = 1.0
    exist: float = 0.5
    contrastive: float = 0.2
    change: float = 1.0
    pos_weight: float = 2.0  # targets are small: weigh positive pixels up in the BCE


def dice_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Soft Dice per sample (N x H x W), averaged; samples with an empty target are skipped;
    pixels where `valid` is 0 are left out."""
    keep = target.flatten(1).sum(1) > 0
    if not keep.any():
        return logits.sum() * 0.0
    w = valid[keep].flatten(1) if valid is not None else 1.0
    p = torch.sigmoid(logits[keep]).flatten(1) * w
    t = target[keep].flatten(1) * w
    dice = (2 * (p * t).sum(1) + 1.0) / (p.sum(1) + t.sum(1) + 1.0)
    return (1 - dice).mean()


def bce_loss(logits: torch.Tensor, target: torch.Tensor, pos_weight: float, valid: torch.Tensor | None = None) -> torch.Tensor:
    weight = torch.tensor(pos_weight, device=logits.device)
    if valid is None:
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight)
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight, reduction="none")
    return (per_pixel * valid).sum() / valid.sum().clamp(min=1)


def pixel_contrastive_loss(relevance: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """InfoNCE over the relevance map: each target cell must out-score all background cells.

    relevance: M x h x w logits (already temperature-scaled); target: M x H x W in {0, 1}.
    Cells at least half covered by the target are positives, cells it does not touch negatives
    (cells partly covered are ignored). Samples without positives or negatives are skipped.
    """
    cells_h, cells_w = relevance.shape[-2:]
    cover = F.adaptive_avg_pool2d(target[:, None], (cells_h, cells_w))[:, 0].flatten(1)
    rel = relevance.flatten(1)
    pos = cover >= 0.5
    pos = torch.where(pos.any(1, keepdim=True), pos, cover >= cover.amax(1, keepdim=True).clamp(min=1e-6))
    neg = cover == 0
    valid = (cover.amax(1) > 0) & neg.any(1)
    if not valid.any():
        return relevance.sum() * 0.0
    neg_lse = torch.logsumexp(rel.masked_fill(~neg, float("-inf")), dim=1, keepdim=True)
    per_pos = -(rel - torch.logaddexp(rel, neg_lse))  # -log(e^s / (e^s + sum_neg e^n))
    per_sample = (per_pos * pos).sum(1) / pos.sum(1).clamp(min=1)
    return per_sample[valid].mean()


def compact_loss(
    out: ModelOutput,
    masks: torch.Tensor,
    weights: LossWeights,
    change_masks: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its parts. masks: M x H x W float {0,1} per (image, query) pair; `valid`
    (same shape) marks the pixels the source labelled."""
    exists = (masks.flatten(1).amax(1) > 0).float()
    parts = {
        "bce": bce_loss(out.mask_logits, masks, weights.pos_weight, valid),
        "dice": dice_loss(out.mask_logits, masks, valid),
        "exist": F.binary_cross_entropy_with_logits(out.exist_logits, exists),
        "contrastive": pixel_contrastive_loss(out.relevance, masks),
    }
    total = (
        weights.bce * parts["bce"]
        + weights.dice * parts["dice"]
        + weights.exist * parts["exist"]
        + weights.contrastive * parts["contrastive"]
    )
    if change_masks is not None and out.change_logits is not None:
        parts["change"] = bce_loss(out.change_logits, change_masks, weights.pos_weight) + dice_loss(
            out.change_logits, change_masks
        )
        total = total + weights.change * parts["change"]
    return total, {k: float(v.detach()) for k, v in parts.items()}


def change_pretrain_loss(change_logits: torch.Tensor, change_masks: torch.Tensor, weights: LossWeights) -> torch.Tensor:
    """Stage 1 of the change variant: vision-only, class-agnostic change."""
    return bce_loss(change_logits, change_masks, weights.pos_weight) + dice_loss(change_logits, change_masks)
