"""The SegEarth-R1 network: module tree and state-dict names of the published checkpoints.

Top-level names (as saved by the reference with transformers 4.36.2):
    model.{embed_tokens,layers.N.*,final_layernorm}   Phi-1.5 (transformers PhiModel; same names
                                                      today, except the attention projection: one
                                                      fused `self_attn.query_key_value` on disk, split
                                                      into q/k/v_proj at load time, see checkpoint.py)
    model.vision_tower.*                              Swin-B (D2SwinTransformer names; transformers'
                                                      SwinBackbone underneath, see vision.py)
    model.mm_projector.*                              token-compression connector
    lm_head.weight                                    (no bias; unused for masks)
    seg_query                                         (training leftover; unused)
    text_projector, origin_SEG_token_projector, local_project, SEG_token_projector, d_layers.*
    pixel_decoder.*, predictor.*                      Mask2Former head (pixel decoder: transformers'
                                                      Mask2FormerPixelDecoder, see vision.py)

Inference is split so that the pipeline can reuse image work: `encode_images` (Swin, connector,
pixel decoder: once per tile) and `segment` (Phi + projectors + transformer decoder: per query).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import nn
from transformers import PhiConfig, PhiModel
from transformers.models.phi.modeling_phi import PhiRotaryEmbedding

from geoseg.models.segearth.config import SegEarthConfig
from geoseg.models.segearth.mask_decoder import MaskedTransformerDecoder
from geoseg.models.segearth.projectors import CompressionConnector, DescriptionProjector
from geoseg.models.segearth.vision import PixelDecoder, SwinBackbone


@dataclass
class ImageFeatures:
    """Everything the per-query part needs from a batch of preprocessed tiles."""

    visual_tokens: torch.Tensor  # B x T x hidden (connector output, embedded at <image>)
    res5_tokens: torch.Tensor  # B x (h5*w5) x C5 (Swin res5, for the description projector)
    mask_features: torch.Tensor  # B x mask_dim x H/4 x W/4
    multi_scale: list[torch.Tensor]  # 3 maps at strides 32, 16, 8

    def select(self, index: torch.Tensor | slice) -> ImageFeatures:
        return ImageFeatures(
            self.visual_tokens[index],
            self.res5_tokens[index],
            self.mask_features[index],
            [m[index] for m in self.multi_scale],
        )


def phi_config(cfg: SegEarthConfig) -> PhiConfig:
    """A PhiConfig for today's transformers from the 4.36.2 fields of config.json."""
    fields = dict(cfg.phi)
    rope = fields.pop("rope_parameters", None) or {}
    rope = {
        "rope_type": "default",
        "rope_theta": fields.pop("rope_theta", rope.get("rope_theta", 10000.0)),
        "partial_rotary_factor": fields.pop(
            "partial_rotary_factor", rope.get("partial_rotary_factor", 0.5)
        ),
    }
    if fields.pop("rope_scaling", None):
        raise ValueError("rope_scaling is not supported for SegEarth-R1 checkpoints")
    config = PhiConfig(
        **fields, rope_parameters=rope, resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0
    )
    config._attn_implementation = "sdpa"
    return config


class SegEarthR1(nn.Module):
    def __init__(self, cfg: SegEarthConfig):
        super().__init__()
        self.cfg = cfg
        self.phi_config = phi_config(cfg)
        self.model = PhiModel(self.phi_config)
        self.model.vision_tower = SwinBackbone(cfg.swin)
        self.model.mm_projector = CompressionConnector(
            cfg.mm_input_embeds, cfg.projector_outdim, cfg.connector_sizes
        )
        hidden, dim = cfg.hidden_size, cfg.projector.dim
        self.lm_head = nn.Linear(hidden, cfg.vocab_size, bias=False)
        self.seg_query = nn.Parameter(torch.zeros(cfg.mask.num_queries, hidden))
        self.text_projector = nn.Linear(hidden, dim)
        self.origin_SEG_token_projector = nn.Linear(hidden, dim)
        self.local_project = nn.Linear(cfg.swin.channels[-1], dim)
        self.SEG_token_projector = nn.Linear(2 * dim, cfg.mask.hidden_dim)
        self.d_layers = DescriptionProjector(cfg.projector)
        self.pixel_decoder = PixelDecoder(cfg.mask, cfg.swin.channels)
        self.predictor = MaskedTransformerDecoder(cfg.mask)

    @property
    def vision_tower(self) -> SwinBackbone:
        """model.vision_tower, typed (nn.Module attributes read back as Tensor | Module)."""
        return cast(SwinBackbone, self.model.vision_tower)

    @property
    def mm_projector(self) -> CompressionConnector:
        """model.mm_projector, typed."""
        return cast(CompressionConnector, self.model.mm_projector)

    def reset_runtime_buffers(self, device: torch.device) -> None:
        """Rebuild the buffers that are not in a checkpoint (after building on the meta device)."""
        with torch.device(device):
            self.model.rotary_emb = PhiRotaryEmbedding(self.phi_config)
        self.vision_tower.reset_relative_position_index(device)

    # --- image side: once per tile ---------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> ImageFeatures:
        """images: B x 3 x S x S, already normalised (see preprocess)."""
        return self.features_from_levels(self.vision_tower(images))

    def features_from_levels(self, feats: list[torch.Tensor]) -> ImageFeatures:
        """Connector + pixel decoder over the backbone's res2..res5 (training runs the frozen
        backbone without gradients and calls this with its output)."""
        mask_features, multi_scale = self.pixel_decoder(feats)
        return ImageFeatures(
            visual_tokens=self.mm_projector(feats[-1]),
            res5_tokens=feats[-1].flatten(2).transpose(1, 2),
            mask_features=mask_features,
            multi_scale=multi_scale,
        )

    # --- query side --------------------------------------------------------------------------
    def refer_embeddings(
        self,
        feats: ImageFeatures,
        before_ids: torch.Tensor,
        after_ids: torch.Tensor,
        refer: list[torch.Tensor],
    ) -> torch.Tensor:
        """Run Phi over [before | image tokens | after | refer ids] and mean-pool the refer states.

        `refer[i]` are the ids of image i's query. Sequences are right-padded; under causal
        attention padding at the end never reaches earlier positions. Returns B x hidden.
        """
        embed = self.model.embed_tokens
        b = feats.visual_tokens.shape[0]
        dtype = feats.visual_tokens.dtype
        prefix = torch.cat(
            [
                embed(before_ids).unsqueeze(0).expand(b, -1, -1),
                feats.visual_tokens.to(embed.weight.dtype),
                embed(after_ids).unsqueeze(0).expand(b, -1, -1),
            ],
            dim=1,
        )
        lengths = torch.tensor([len(r) for r in refer], device=prefix.device)
        padded = torch.nn.utils.rnn.pad_sequence(refer, batch_first=True, padding_value=0)
        inputs = torch.cat([prefix, embed(padded)], dim=1)
        valid = torch.arange(padded.shape[1], device=prefix.device)[None, :] < lengths[:, None]
        attention = torch.cat(
            [torch.ones(b, prefix.shape[1], dtype=torch.bool, device=prefix.device), valid], 1
        )
        hidden = self.model(
            inputs_embeds=inputs, attention_mask=attention.long(), use_cache=False
        ).last_hidden_state
        states = hidden[:, prefix.shape[1] :]
        weights = valid.to(states.dtype).unsqueeze(-1)
        return ((states * weights).sum(1) / lengths[:, None].to(states.dtype)).to(dtype)

    def seg_query_embedding(self, pooled: torch.Tensor, feats: ImageFeatures) -> torch.Tensor:
        """The pooled path and the cross-attention path, concatenated and projected: B x 256."""
        origin = self.origin_SEG_token_projector(pooled)
        # The reference feeds [pooled; every refer state] as latents but keeps only the first
        # output latent, and its keys/values use only the first latent: the other latents cannot
        # influence the result, so feeding the pooled one alone is the same computation.
        latents = self.text_projector(pooled).unsqueeze(1)
        cross = self.d_layers(latents, self.local_project(feats.res5_tokens))
        return self.SEG_token_projector(torch.cat([origin, cross], dim=-1))

    def segment(
        self,
        feats: ImageFeatures,
        before_ids: torch.Tensor,
        after_ids: torch.Tensor,
        refer: list[torch.Tensor],
    ) -> torch.Tensor:
        """Mask logits at stride 4 in the padded input frame: B x S/4 x S/4 (one query per image)."""
        pooled = self.refer_embeddings(feats, before_ids, after_ids, refer)
        query = self.seg_query_embedding(pooled, feats)
        return self.predictor(query, feats.multi_scale, feats.mask_features)
