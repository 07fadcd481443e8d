"""Losses of the MLLM families: LM cross-entropy on the answer, mask BCE + Dice per [SEG], and
SegEarth-R2's spatial attention supervision.

Attention supervision: for each [SEG] token, take its attention to the image tokens, averaged over
the LLM's layers and heads (a vector over the T visual tokens, laid out on their g x g grid). Its
ground-truth mask, pooled to that grid, splits the tokens into foreground (any coverage) and
background. The loss is

    -log(mean_fg((a_fg - mean(a_bg))^2) + 1e-8)

so it falls as the foreground attention moves away from the background mean. A [SEG] whose mask
covers all or none of the tokens has no contrast to learn from and is skipped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-8


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore: int = -100) -> torch.Tensor:
    """Next-token CE: logits N x L x V predict labels shifted by one (N x L, `ignore` skipped)."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    if not bool((shift_labels != ignore).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=ignore
    )


def mask_losses(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(BCE, Dice) of K x h x w logits against K x H x W {0, 1} masks (logits upsampled to H x W).

    Dice is averaged over the masks that have a foreground (an empty target has no overlap to
    reward; BCE alone pushes it to zero)."""
    if logits.shape[0] == 0:
        zero = logits.sum() * 0.0
        return zero, zero
    up = F.interpolate(logits[:, None].float(), size=targets.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    t = targets.float()
    bce = F.binary_cross_entropy_with_logits(up, t)
    keep = t.flatten(1).sum(1) > 0
    if not bool(keep.any()):
        return bce, up.sum() * 0.0
    p = up[keep].sigmoid().flatten(1)
    tk = t[keep].flatten(1)
    dice = 1 - (2 * (p * tk).sum(1) + 1) / (p.sum(1) + tk.sum(1) + 1)
    return bce, dice.mean()


def token_cover(masks: torch.Tensor, grid: int) -> torch.Tensor:
    """K x H x W masks -> K x grid^2 booleans: does the mask touch each visual token's cell."""
    pooled = F.adaptive_max_pool2d(masks[:, None].float(), grid)[:, 0]
    return pooled.flatten(1) > 0


def attention_supervision_loss(attention: torch.Tensor, cover: torch.Tensor) -> torch.Tensor:
    """attention: K x T ([SEG] -> image tokens, averaged over layers and heads); cover: K x T bool.

    Returns the mean loss over the [SEG] tokens that have both foreground and background tokens
    (0, still attached to the graph, when none has)."""
    fg_count = cover.sum(1)
    valid = (fg_count > 0) & (fg_count < cover.shape[1])
    if not bool(valid.any()):
        return attention.sum() * 0.0
    a = attention[valid].float()
    fg = cover[valid].float()
    bg = 1 - fg
    bg_mean = (a * bg).sum(1) / bg.sum(1)
    sq = ((a - bg_mean[:, None]) ** 2 * fg).sum(1) / fg.sum(1)
    return (-torch.log(sq + EPS)).mean()


def bce_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + Dice of B x h x w logits against B x H x W masks (class-agnostic change, stage 1)."""
    bce, dice = mask_losses(logits, target)
    return bce + dice
