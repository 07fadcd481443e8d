"""Swin Transformer backbone in the layout of Mask2Former's D2SwinTransformer (res2..res5).

State-dict layout (relative to the backbone): `patch_embed.{proj,norm}`,
`layers.N.blocks.M.{norm1,attn.{relative_position_bias_table,relative_position_index,qkv,proj},
norm2,mlp.{fc1,fc2}}`, `layers.N.downsample.{reduction,norm}` for the first three stages and
`norm0..norm3` applied to each stage's output before it is returned.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from geoseg.models.segearth.config import SwinConfig

# Shifted-window attention masks use this additive value between different image regions.
_MASK_VALUE = -100.0


def relative_position_index(window: int) -> torch.Tensor:
    """Index into the (2w-1)^2 bias table for every pair of positions inside a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij"))
    flat = coords.flatten(1)
    rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[:, :, 0] * (2 * window - 1) + rel[:, :, 1]


def to_windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """B x H x W x C -> (B * nW) x window^2 x C."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def from_windows(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """(B * nW) x window^2 x C -> B x H x W x C."""
    c = windows.shape[-1]
    b = windows.shape[0] // ((h // window) * (w // window))
    x = windows.view(b, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, window: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        # Persistent like the reference's buffer, so it is part of the published state dict.
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, windows_per_image: int, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """x: (B * nW) x n x C windows; mask: nW x n x n additive shift mask or None."""
        bw, n, c = x.shape
        b = bw // windows_per_image
        q, k, v = self.qkv(x).view(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)  # 1 x heads x n x n
        if mask is not None:
            # Fold windows into the head axis so that one nW x heads mask broadcasts over the batch
            # instead of being materialised per image.
            bias = (bias + mask.to(bias.dtype).unsqueeze(1)).reshape(1, -1, n, n)
            q, k, v = (t.reshape(b, -1, n, t.shape[-1]) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=self.scale)
        out = out.reshape(bw, self.heads, n, -1).transpose(1, 2).reshape(bw, n, c)
        return self.proj(out)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, shift: int, mlp_ratio: float):
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, h: int, w: int, mask: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        y = self.norm1(x).view(b, h, w, c)
        # Pad bottom/right to whole windows, as the reference does for any input size.
        pad_b, pad_r = (-h) % self.window, (-w) % self.window
        y = F.pad(y, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = h + pad_b, w + pad_r
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows_per_image = (hp // self.window) * (wp // self.window)
        y = self.attn(to_windows(y, self.window), windows_per_image, mask if self.shift else None)
        y = from_windows(y, self.window, hp, wp)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y[:, :h, :w].reshape(b, h * w, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        # Order of the four sub-grids matters for the reduction weights: (0,0), (1,0), (0,1), (1,1).
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


def shifted_window_mask(h: int, w: int, window: int, shift: int, device) -> torch.Tensor:
    """Additive mask keeping attention inside the regions that a cyclic shift brings together."""
    hp, wp = -(-h // window) * window, -(-w // window) * window
    regions = torch.zeros(1, hp, wp, 1, device=device)
    spans = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for hs in spans:
        for ws in spans:
            regions[:, hs, ws, :] = label
            label += 1
    ids = to_windows(regions, window).squeeze(-1)
    diff = ids.unsqueeze(1) - ids.unsqueeze(2)
    return torch.zeros_like(diff).masked_fill(diff != 0, _MASK_VALUE)


class SwinStage(nn.Module):
    def __init__(
        self, dim: int, depth: int, heads: int, window: int, mlp_ratio: float, downsample: bool
    ):
        super().__init__()
        self.window = window
        self.blocks = nn.ModuleList(
            SwinBlock(dim, heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio)
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor, h: int, w: int):
        mask = shifted_window_mask(h, w, self.window, self.window // 2, x.device)
        for block in self.blocks:
            x = block(x, h, w, mask)
        if self.downsample is None:
            return x, x, h, w
        return x, self.downsample(x, h, w), (h + 1) // 2, (w + 1) // 2


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = F.pad(x, (0, (-w) % self.patch, 0, (-h) % self.patch))
        x = self.proj(x)
        b, c, hh, ww = x.shape
        return self.norm(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, c, hh, ww)


class SwinBackbone(nn.Module):
    """Returns the four normalised stage outputs, B x C_i x H/2^(i+2) x W/2^(i+2)."""

    def __init__(self, cfg: SwinConfig):
        super().__init__()
        self.channels = cfg.channels
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.embed_dim)
        self.layers = nn.ModuleList(
            SwinStage(
                cfg.channels[i],
                cfg.depths[i],
                cfg.num_heads[i],
                cfg.window_size,
                cfg.mlp_ratio,
                i < 3,
            )
            for i in range(4)
        )
        for i, ch in enumerate(cfg.channels):
            self.add_module(f"norm{i}", nn.LayerNorm(ch))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(images)
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        outs = []
        for i, stage in enumerate(self.layers):
            out, x, nh, nw = stage(x, h, w)
            out = getattr(self, f"norm{i}")(out)
            outs.append(out.view(-1, h, w, self.channels[i]).permute(0, 3, 1, 2).contiguous())
            h, w = nh, nw
        return outs
