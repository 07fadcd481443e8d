"""The two small projectors between vision and language.

- `CompressionConnector` (`model.mm_projector`): res5 (32 x 32 x 1024 at 1024 input) -> two 3x3
  stride-2 convs, each followed by a LayerNorm over (C, H, W) with per-position affine weights (so
  the weights are shaped C x 16 x 16 and C x 8 x 8), then a 1x1 conv -> 64 visual tokens.
- `DescriptionProjector` (`d_layers`): one Perceiver cross-attention layer whose latents attend to
  the projected res5 tokens plus the first latent, followed by a bias-free feed-forward; the first
  latent of the normalised output is the result.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from geoseg.models.segearth.config import DescriptionProjectorConfig


class CompressionConnector(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, sizes: tuple[int, int]):
        super().__init__()
        s1, s2 = sizes
        self.proj1 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.norm1 = nn.LayerNorm([out_channels, s1, s1])
        self.proj2 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        self.norm2 = nn.LayerNorm([out_channels, s2, s2])
        self.fc = nn.Conv2d(out_channels, out_channels, 1, 1)

    def forward(self, res5: torch.Tensor) -> torch.Tensor:
        """B x C_in x h x w -> B x (h/4 * w/4) x C_out visual tokens (row-major)."""
        x = self.fc(self.norm2(self.proj2(self.norm1(self.proj1(res5)))))
        return x.flatten(2).transpose(1, 2).contiguous()


class PerceiverAttention(nn.Module):
    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = dim_head**-0.5
        inner = dim_head * heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """media: B x M x D, latents: B x N x D -> B x N x D (the residual is added by the caller)."""
        media = self.norm_media(media)
        latents = self.norm_latents(latents)
        q = self.to_q(latents)
        # Keys/values: every media token plus only the FIRST latent (the reference's choice).
        k, v = self.to_kv(torch.cat([media, latents[:, :1]], dim=1)).chunk(2, dim=-1)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.to_out(out.transpose(1, 2).flatten(2))


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    # Indices 0..3 are the reference's state-dict names (LayerNorm, Linear, GELU, Linear).
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, dim * mult, bias=False),
        nn.GELU(),
        nn.Linear(dim * mult, dim, bias=False),
    )


class DescriptionProjector(nn.Module):
    def __init__(self, cfg: DescriptionProjectorConfig):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PerceiverAttention(cfg.dim, cfg.dim_head, cfg.heads),
                    feed_forward(cfg.dim, cfg.ff_mult),
                ]
            )
            for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, latents: torch.Tensor, media: torch.Tensor) -> torch.Tensor:
        """latents: B x N x D, media: B x M x D -> B x D (the first latent)."""
        for layer in self.layers:
            attn, ff = cast(nn.ModuleList, layer)
            latents = attn(media, latents) + latents
            latents = ff(latents) + latents
        return self.norm(latents)[:, 0]
