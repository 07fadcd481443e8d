"""Mask2Former's multi-scale deformable-attention pixel decoder, in pure PyTorch.

No compiled op: the deformable attention samples with `grid_sample` (the same computation as the
reference's `ms_deform_attn_core_pytorch` fallback). State-dict layout (relative to
`pixel_decoder.`): `input_proj.L.{0,1}` (1x1 conv + GroupNorm, levels res5, res4, res3),
`transformer.level_embed`, `transformer.encoder.layers.N.{self_attn.{sampling_offsets,
attention_weights,value_proj,output_proj},norm1,linear1,linear2,norm2}`, `mask_features`,
`adapter_1.{0,1}` and `layer_1.{0,1}` (the FPN step that adds res2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from geoseg.models.segearth.config import MaskDecoderConfig


def sine_position_embedding(
    x: torch.Tensor, num_feats: int, temperature: float = 10000.0
) -> torch.Tensor:
    """DETR's normalised sine embedding for a B x C x H x W map -> B x 2*num_feats x H x W (float32)."""
    b, _, h, w = x.shape
    eps, scale = 1e-6, 2 * math.pi
    y = torch.arange(1, h + 1, dtype=torch.float32, device=x.device)
    xx = torch.arange(1, w + 1, dtype=torch.float32, device=x.device)
    y = (y / (h + eps) * scale)[:, None].expand(h, w)
    xx = (xx / (w + eps) * scale)[None, :].expand(h, w)
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=x.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)

    def interleave(pos: torch.Tensor) -> torch.Tensor:
        pos = pos[..., None] / dim_t
        return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)

    pos = torch.cat((interleave(y), interleave(xx)), dim=-1).permute(2, 0, 1)
    return pos.unsqueeze(0).expand(b, -1, -1, -1)


def deformable_sample(
    value: torch.Tensor,
    shapes: list[tuple[int, int]],
    locations: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention core.

    value: B x S x heads x d; locations: B x Q x heads x L x P x 2 in [0, 1] (x, y);
    weights: B x Q x heads x L x P -> B x Q x heads*d.
    """
    b, _, heads, d = value.shape
    _, q, _, levels, points, _ = locations.shape
    grids = 2 * locations - 1
    sampled = []
    for lvl, level_value in enumerate(value.split([h * w for h, w in shapes], dim=1)):
        h, w = shapes[lvl]
        level_value = level_value.flatten(2).transpose(1, 2).reshape(b * heads, d, h, w)
        grid = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)  # (B*heads) x Q x P x 2
        sampled.append(
            F.grid_sample(
                level_value, grid, mode="bilinear", padding_mode="zeros", align_corners=False
            )
        )
    weights = weights.transpose(1, 2).reshape(b * heads, 1, q, levels * points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)  # (B*heads) x d x Q
    return out.view(b, heads * d, q).transpose(1, 2)


class MSDeformAttn(nn.Module):
    def __init__(self, dim: int, levels: int, heads: int, points: int):
        super().__init__()
        self.levels, self.heads, self.points = levels, heads, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)

    def forward(
        self,
        query: torch.Tensor,
        reference: torch.Tensor,
        source: torch.Tensor,
        shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        """query: B x Q x D, reference: B x Q x L x 2 in [0, 1], source: B x S x D."""
        b, q, _ = query.shape
        value = self.value_proj(source).view(b, source.shape[1], self.heads, -1)
        offsets = self.sampling_offsets(query).view(b, q, self.heads, self.levels, self.points, 2)
        weights = self.attention_weights(query).view(b, q, self.heads, self.levels * self.points)
        weights = weights.softmax(-1).view(b, q, self.heads, self.levels, self.points)
        # Offsets are in pixels of each level; normalise by (W, H) since locations are (x, y).
        normaliser = torch.tensor(
            [[w, h] for h, w in shapes], dtype=offsets.dtype, device=offsets.device
        )
        locations = (
            reference[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
        )
        # Sample in float32 like the reference's CUDA op (it casts value and weights to float).
        out = deformable_sample(value.float(), shapes, locations.float(), weights.float())
        return self.output_proj(out.to(query.dtype))


class DeformableEncoderLayer(nn.Module):
    def __init__(self, dim: int, ffn: int, levels: int, heads: int, points: int):
        super().__init__()
        self.self_attn = MSDeformAttn(dim, levels, heads, points)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, src, pos, reference, shapes):
        src = self.norm1(src + self.self_attn(src + pos, reference, src, shapes))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class DeformableEncoder(nn.Module):
    def __init__(self, layers: list[DeformableEncoderLayer]):
        super().__init__()
        self.layers = nn.ModuleList(layers)


class DeformableTransformer(nn.Module):
    """Holds `level_embed` and `encoder.layers` (the reference's MSDeformAttnTransformerEncoderOnly)."""

    def __init__(self, cfg: MaskDecoderConfig, levels: int):
        super().__init__()
        self.level_embed = nn.Parameter(torch.zeros(levels, cfg.conv_dim))
        self.encoder = DeformableEncoder(
            [
                DeformableEncoderLayer(
                    cfg.conv_dim, cfg.enc_ffn, levels, cfg.nheads, cfg.enc_points
                )
                for _ in range(cfg.enc_layers)
            ]
        )

    def forward(self, srcs: list[torch.Tensor], pos: list[torch.Tensor]) -> torch.Tensor:
        shapes = [tuple(s.shape[-2:]) for s in srcs]
        src = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], dim=1)
        pos = torch.cat(
            [
                p.flatten(2).transpose(1, 2) + self.level_embed[i].view(1, 1, -1)
                for i, p in enumerate(pos)
            ],
            dim=1,
        )
        reference = (
            self.reference_points(shapes, src.device).to(src.dtype).expand(src.shape[0], -1, -1, -1)
        )
        for layer in self.encoder.layers:
            src = layer(src, pos, reference, shapes)
        return src

    @staticmethod
    def reference_points(shapes: list[tuple[int, int]], device) -> torch.Tensor:
        """Pixel centres of every level, normalised to [0, 1], repeated for each level: 1 x S x L x 2."""
        refs = []
        for h, w in shapes:
            ys, xs = torch.meshgrid(
                torch.linspace(0.5, h - 0.5, h, device=device) / h,
                torch.linspace(0.5, w - 0.5, w, device=device) / w,
                indexing="ij",
            )
            refs.append(torch.stack((xs.reshape(-1), ys.reshape(-1)), -1))
        return torch.cat(refs, 0)[None, :, None, :].expand(1, -1, len(shapes), -1)


def conv_gn(in_ch: int, out_ch: int, kernel: int, relu: bool) -> nn.Sequential:
    layers = [nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2), nn.GroupNorm(32, out_ch)]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class MSDeformAttnPixelDecoder(nn.Module):
    """res2..res5 -> (mask_features at stride 4, [three multi-scale maps at strides 32, 16, 8])."""

    def __init__(self, cfg: MaskDecoderConfig, channels: tuple[int, ...]):
        super().__init__()
        self.conv_dim = cfg.conv_dim
        # The deformable encoder sees res3..res5, ordered from low to high resolution.
        self.input_proj = nn.ModuleList(
            conv_gn(ch, cfg.conv_dim, 1, relu=False) for ch in channels[1:][::-1]
        )
        self.transformer = DeformableTransformer(cfg, levels=3)
        self.mask_features = nn.Conv2d(cfg.conv_dim, cfg.mask_dim, 1)
        self.adapter_1 = conv_gn(channels[0], cfg.conv_dim, 1, relu=True)
        self.layer_1 = conv_gn(cfg.conv_dim, cfg.conv_dim, 3, relu=True)

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        levels = feats[1:][::-1]  # res5, res4, res3
        srcs = [proj(x) for proj, x in zip(self.input_proj, levels, strict=True)]
        pos = [sine_position_embedding(x, self.conv_dim // 2).to(x.dtype) for x in levels]
        memory = self.transformer(srcs, pos)
        b = memory.shape[0]
        sizes = [h * w for h, w in (s.shape[-2:] for s in srcs)]
        outs = [
            m.transpose(1, 2).reshape(b, -1, *s.shape[-2:])
            for m, s in zip(memory.split(sizes, dim=1), srcs, strict=True)
        ]
        lateral = self.adapter_1(feats[0])
        top = F.interpolate(
            outs[-1].float(), size=lateral.shape[-2:], mode="bilinear", align_corners=False
        )
        fpn = self.layer_1(lateral + top.to(lateral.dtype))
        return self.mask_features(fpn), outs
