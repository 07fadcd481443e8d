"""The language side of the compact model (METRIS-style guidance set).

1. Linguistic tokens (MiniLM sentence token + word tokens, projected to `dim`) are enhanced by
   cross-attention to the vision tokens of the image they query.
2. Visual-expression tokens: for every linguistic token the top r% vision tokens by cosine
   relevance are curated, the token is refined by cross-attention restricted to its curated set,
   and the resulting tokens attend to each other.
3. The sentence token's cosine relevance over the vision tokens is returned as a map, which the
   pixel contrastive loss supervises.
The decoder then uses {linguistic tokens, visual-expression tokens} as its keys and values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class CrossAttention(nn.Module):
    """Pre-norm residual attention of `x` (queries) over `context` (keys/values)."""

    def __init__(self, dim: int, context_dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(context_dim)
        self.attn = nn.MultiheadAttention(dim, heads, kdim=context_dim, vdim=context_dim, batch_first=True)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        kv = self.norm_kv(context)
        out = self.attn(
            self.norm_q(x), kv, kv, key_padding_mask=key_padding_mask, attn_mask=attn_mask, need_weights=False
        )[0]
        return x + out


class FeedForward(nn.Module):
    def __init__(self, dim: int, ratio: float = 2.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, int(dim * ratio)), nn.GELU(), nn.Linear(int(dim * ratio), dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


@dataclass
class Guidance:
    tokens: torch.Tensor  # M x 2T x dim: linguistic tokens then visual-expression tokens
    padding: torch.Tensor  # M x 2T bool, True where a token is padding (ignored as a key)
    sentence: torch.Tensor  # M x dim, the enhanced sentence token
    relevance: torch.Tensor  # M x N logits of the sentence token over the vision tokens


class GuidanceBuilder(nn.Module):
    def __init__(self, text_dim: int, dim: int, heads: int, top_ratio: float, min_top: int) -> None:
        super().__init__()
        self.top_ratio = top_ratio
        self.min_top = min_top
        self.text_proj = nn.Sequential(nn.Linear(text_dim, dim), nn.LayerNorm(dim))
        self.enhance = CrossAttention(dim, dim, heads)
        self.enhance_ff = FeedForward(dim)
        self.extract = CrossAttention(dim, dim, heads)
        self.extract_ff = FeedForward(dim)
        self.self_attn = CrossAttention(dim, dim, heads)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def forward(self, text_tokens: torch.Tensor, text_mask: torch.Tensor, vision: torch.Tensor) -> Guidance:
        """text_tokens M x T x text_dim, text_mask M x T (True = real), vision M x N x dim."""
        padding = ~text_mask
        lang = self.enhance_ff(self.enhance(self.text_proj(text_tokens), vision))
        relevance = F.normalize(lang, dim=-1) @ F.normalize(vision, dim=-1).transpose(1, 2)  # M x T x N
        expr = self._visual_expressions(lang, vision, relevance)
        expr = self.self_attn(expr, expr, key_padding_mask=padding)
        scale = self.logit_scale.exp().clamp(max=100.0)
        return Guidance(
            tokens=torch.cat([lang, expr], dim=1),
            padding=torch.cat([padding, padding], dim=1),
            sentence=lang[:, 0],
            relevance=scale * relevance[:, 0],
        )

    def _visual_expressions(self, lang: torch.Tensor, vision: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
        m, t, n = relevance.shape
        k = min(n, max(self.min_top, math.ceil(self.top_ratio * n)))
        top = relevance.topk(k, dim=-1).indices
        blocked = torch.ones(m, t, n, dtype=torch.bool, device=lang.device).scatter_(-1, top, False)
        heads = self.extract.heads
        attn_mask = blocked.repeat_interleave(heads, dim=0)  # (M*heads) x T x N, True = not allowed
        return self.extract_ff(self.extract(lang, vision, attn_mask=attn_mask))
