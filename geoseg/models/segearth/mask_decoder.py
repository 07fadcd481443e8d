"""Mask2Former's masked-attention transformer decoder, driven by SegEarth-R1's single [SEG] query.

SegEarth-R1 runs the decoder in its `wo_concat` mode without learnable queries: the projected
description embedding is the only query, its positional embedding is zero, and there is no class
head at inference. The learnable query tables, `SEG_proj` and `CLASS_proj` still exist in the
published state dict (they shaped training); they are kept so the checkpoint loads key for key.
State-dict layout (relative to `predictor.`): `transformer_{self,cross}_attention_layers.N.
{self_attn|multihead_attn,norm}`, `transformer_ffn_layers.N.{linear1,linear2,norm}`, `decoder_norm`,
`query_feat`, `query_embed`, `SEG_query_embed`, `new_query_embed`, `level_embed`,
`mask_embed.layers.{0,1,2}`, `SEG_proj.layers.{0,1}`, `CLASS_proj.layers.{0,1}`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from geoseg.models.segearth.config import MaskDecoderConfig
from geoseg.models.segearth.vision import sine_position_embedding


class SelfAttentionLayer(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        q = tgt + query_pos
        return self.norm(tgt + self.self_attn(q, q, tgt, need_weights=False)[0])


class CrossAttentionLayer(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(dim, heads)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tgt, memory, mask, pos, query_pos) -> torch.Tensor:
        out = self.multihead_attn(
            tgt + query_pos, memory + pos, memory, attn_mask=mask, need_weights=False
        )[0]
        return self.norm(tgt + out)


class FFNLayer(nn.Module):
    def __init__(self, dim: int, ffn: int):
        super().__init__()
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        return self.norm(tgt + self.linear2(F.relu(self.linear1(tgt))))


class MLP(nn.Module):
    def __init__(self, in_dim: int, hidden: int, out_dim: int, layers: int):
        super().__init__()
        dims = [in_dim] + [hidden] * (layers - 1)
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [out_dim], strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MaskedTransformerDecoder(nn.Module):
    NUM_LEVELS = 3

    def __init__(self, cfg: MaskDecoderConfig):
        super().__init__()
        d, h = cfg.hidden_dim, cfg.nheads
        self.heads = h
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(d, h) for _ in range(cfg.dec_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(d, h) for _ in range(cfg.dec_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(d, cfg.dec_ffn) for _ in range(cfg.dec_layers)
        )
        self.decoder_norm = nn.LayerNorm(d)
        self.query_feat = nn.Embedding(cfg.num_queries, d)
        self.query_embed = nn.Embedding(cfg.num_queries, d)
        self.SEG_query_embed = nn.Embedding(cfg.num_queries + 1, d)
        self.new_query_embed = nn.Embedding(1, d)
        self.level_embed = nn.Embedding(self.NUM_LEVELS, d)
        self.mask_embed = MLP(d, d, cfg.mask_dim, 3)
        self.SEG_proj = MLP(d, d, d, 2)
        self.CLASS_proj = MLP(d, d, d, 2)

    def forward(
        self, query: torch.Tensor, multi_scale: list[torch.Tensor], mask_features: torch.Tensor
    ) -> torch.Tensor:
        """query: B x D (one [SEG] embedding per image); multi_scale: 3 maps (strides 32, 16, 8);
        mask_features: B x mask_dim x H/4 x W/4. Returns mask logits B x H/4 x W/4 (final layer)."""
        src, pos, sizes = [], [], []
        for i, x in enumerate(multi_scale):
            sizes.append(tuple(x.shape[-2:]))
            pos.append(sine_position_embedding(x).flatten(2).permute(2, 0, 1))
            src.append((x.flatten(2) + self.level_embed.weight[i][None, :, None]).permute(2, 0, 1))
        output = query.unsqueeze(0)  # 1 x B x D (sequence-first, like the reference)
        query_pos = torch.zeros_like(output)
        logits, attn_mask = self._heads(output, mask_features, sizes[0])
        for i in range(len(self.transformer_ffn_layers)):
            level = i % self.NUM_LEVELS
            # A query that would see nothing attends everywhere instead (Mask2Former's rule).
            attn_mask = attn_mask & ~attn_mask.all(-1, keepdim=True)
            output = self.transformer_cross_attention_layers[i](
                output, src[level], attn_mask, pos[level], query_pos
            )
            output = self.transformer_self_attention_layers[i](output, query_pos)
            output = self.transformer_ffn_layers[i](output)
            logits, attn_mask = self._heads(output, mask_features, sizes[(i + 1) % self.NUM_LEVELS])
        return logits[:, 0]

    def _heads(self, output, mask_features, target_size):
        decoded = self.decoder_norm(output).transpose(0, 1)  # B x 1 x D
        logits = torch.einsum("bqc,bchw->bqhw", self.mask_embed(decoded), mask_features)
        small = F.interpolate(
            logits.float(), size=target_size, mode="bilinear", align_corners=False
        )
        # True = may not attend (background of the current mask estimate), one copy per head.
        attn_mask = (small.sigmoid().flatten(2) < 0.5).repeat_interleave(self.heads, dim=0)
        return logits, attn_mask
