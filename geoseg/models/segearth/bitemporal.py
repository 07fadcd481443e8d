"""Bi-temporal SegEarth (MTRefSeg-R1's idea on the SegEarth-R1 architecture): both dates in one
prompt, a temporal fusion block on every level of the Swin backbone, change-native output.

    before, after --Swin (one pass for both)--> res2..res5 of each date
      every level:  TemporalFusionBlock(before_l, after_l)
                    = gate(fused) * fused + 0.5 * (before_l + after_l)     (shortcut)
                    fused = 1x1 conv [before; after; diff_encoder(after - before, |after - before|)]
      fused levels -> pixel decoder -> mask features (for the decoder)
      fused res5   -> description projector (cross-attention path)
      each date's res5 -> connector -> its own visual tokens at its own <image> slot:
    "[INST] <<SYS>>..<</SYS>>\\n\\nThese are two temporal remote sensing images <image> and <image>.
     Please do Referring Change Detection Segmentation according to the following instruction:\\n<refer>"

Training is two-stage (geoseg.train.mllm): (1) vision-only change pretraining: the fusion blocks,
pixel decoder and transformer decoder learn class-agnostic change with a learned `change_query`;
(2) language-guided fine-tuning of the refer path on change expressions. The fusion's output conv
starts at zero, so an untrained block passes the mean of the two dates (a SegEarth-R1 checkpoint
is a valid starting point: every other tensor has its published name).

Checkpoint: config.json `model_type: "segearth_r1_bitemporal"`, the SegEarth-R1 keys plus
`temporal_fusion.{0..3}.*` and `change_query`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from geoseg.errors import InputError
from geoseg.models.base import ModelInfo, Prediction
from geoseg.models.change import APPEARED, UNDIRECTED, per_query
from geoseg.models.segearth.config import GeosegOptions, SegEarthConfig
from geoseg.models.segearth.generate import IMAGE, llm_hidden, multimodal_batch
from geoseg.models.segearth.model import ImageFeatures, SegEarthR1
from geoseg.models.segearth.preprocess import PadInfo, preprocess, unpad
from geoseg.models.segearth.prompt import SYSTEM, PromptIds, refer_ids
from geoseg.models.segearth.segmenter import gate
from geoseg.queries import change_direction

MODEL_TYPE = "segearth_r1_bitemporal"
FUSION_VARIANTS = ("full", "absdiff", "concat", "average")


class TemporalFusionBlock(nn.Module):
    """Fuse one backbone level of two dates: signed and absolute differences through a diff
    encoder, a 1x1 fusion conv, a squeeze-excitation channel gate, plus a 0.5*(t1+t2) shortcut."""

    def __init__(self, channels: int, variant: str = "full"):
        super().__init__()
        if variant not in FUSION_VARIANTS:
            raise ValueError(f"fusion variant must be one of {FUSION_VARIANTS}, not {variant!r}")
        self.variant = variant
        diff_in = {"full": 2, "absdiff": 1, "concat": 1, "average": 1}[variant] * channels
        self.diff_encoder = nn.Sequential(
            nn.Conv2d(diff_in, channels, 1),
            nn.GroupNorm(1, channels),
            nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        self.fuse = nn.Conv2d(3 * channels, channels, 1)
        hidden = max(channels // 4, 4)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )
        # Start as the plain average of the dates: training moves away from it.
        nn.init.zeros_(self.fuse.weight)
        assert self.fuse.bias is not None  # nn.Conv2d's default bias=True
        nn.init.zeros_(self.fuse.bias)

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        shortcut = 0.5 * (before + after)
        if self.variant == "average":
            return shortcut
        signed = after - before
        diff_in = {
            "full": lambda: torch.cat([signed, signed.abs()], 1),
            "absdiff": signed.abs,
            "concat": lambda: signed,
        }[self.variant]()
        diff = self.diff_encoder(diff_in)
        fused = self.fuse(torch.cat([before, after, diff], 1))
        return fused * self.gate(fused) + shortcut


class SegEarthBitemporal(SegEarthR1):
    def __init__(self, cfg: SegEarthConfig, fusion: str = "full"):
        super().__init__(cfg)
        self.temporal_fusion = nn.ModuleList(
            TemporalFusionBlock(c, fusion) for c in cfg.swin.channels
        )
        self.change_query = nn.Parameter(0.02 * torch.randn(cfg.mask.hidden_dim))

    def encode_pair(self, after: torch.Tensor, before: torch.Tensor) -> ImageFeatures:
        """Both dates B x 3 x S x S (preprocessed). visual_tokens: B x 2T x D (before, then after)."""
        return self.features_from_pair_levels(self.vision_tower(torch.cat([before, after], 0)))

    def features_from_pair_levels(self, levels: list[torch.Tensor]) -> ImageFeatures:
        """Fusion, pixel decoder and connectors over the backbone levels of [before; after]."""
        b = levels[0].shape[0] // 2
        fused = [blk(x[:b], x[b:]) for blk, x in zip(self.temporal_fusion, levels, strict=True)]
        mask_features, multi_scale = self.pixel_decoder(fused)
        visual = self.mm_projector(levels[-1])  # each date's own tokens
        return ImageFeatures(
            visual_tokens=torch.cat([visual[:b], visual[b:]], 1),
            res5_tokens=fused[-1].flatten(2).transpose(1, 2),
            mask_features=mask_features,
            multi_scale=multi_scale,
        )

    def change_logits(self, feats: ImageFeatures) -> torch.Tensor:
        """Stage 1: class-agnostic change logits B x S/4 x S/4 from the learned change query."""
        b = feats.mask_features.shape[0]
        query = self.change_query.to(feats.mask_features.dtype).expand(b, -1)
        return self.predictor(query, feats.multi_scale, feats.mask_features)

    def refer_logits(self, feats: ImageFeatures, prompt: Sequence[int], refer: Sequence[Sequence[int]]) -> torch.Tensor:
        """Stage 2 / inference: mask logits B x S/4 x S/4 for one refer sequence per pair."""
        t = feats.visual_tokens.shape[1] // 2
        visual = [[v[:t], v[t:]] for v in feats.visual_tokens]
        batch = multimodal_batch(self, [prompt] * len(refer), visual, refer)
        pooled = refer_pool(llm_hidden(self, batch), batch)
        query = self.seg_query_embedding(pooled.to(feats.res5_tokens.dtype), feats)
        return self.predictor(query, feats.multi_scale, feats.mask_features)


def refer_pool(hidden: torch.Tensor, batch) -> torch.Tensor:
    """Mean of the hidden states from `answer_start` on (the <refer> span), per sample."""
    positions = torch.arange(hidden.shape[1], device=hidden.device)[None]
    weights = ((positions >= batch.answer_start[:, None]) & batch.attention).to(hidden.dtype)
    return (hidden * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp(min=1)


def pair_prompt(tokenizer, ids: PromptIds) -> list[int]:
    """MTRefSeg's two-image instruction with two IMAGE slots (before, after)."""

    def enc(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    head = f"[INST] <<SYS>>\n{SYSTEM}\n<</SYS>>\n\nThese are two temporal remote sensing images "
    tail = (
        ". Please do Referring Change Detection Segmentation according to the following "
        "instruction:\n"
    )
    return enc(head) + [IMAGE] + enc(" and") + [IMAGE] + enc(tail)


@dataclass
class EncodedPair:
    features: ImageFeatures
    pad: PadInfo

    def __len__(self) -> int:
        return self.features.mask_features.shape[0]


class BitemporalSegmenter:
    """ChangeAware: both dates in one pass; the probability of the queried change. It reads the
    direction from the query's words alone, so it cannot be asked for one: a query that names none
    gets one set of polygons, change type `changed` (geoseg.models.change.UNDIRECTED), never one
    mask written as both directions."""

    def __init__(
        self,
        net: SegEarthBitemporal,
        tokenizer,
        prompt: PromptIds,
        info: ModelInfo,
        device: torch.device,
        options: GeosegOptions,
    ):
        self.net = net
        self.model = net
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.info = info
        self.device = device
        self.options = options
        self.pair_prompt = pair_prompt(tokenizer, prompt)

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def encode(self, after: torch.Tensor, before: torch.Tensor) -> EncodedPair:
        if after.shape != before.shape or after.ndim != 4 or after.shape[1] != 3:
            raise ValueError(
                f"bi-temporal SegEarth expects two B x 3 x H x W tiles of one shape, got "
                f"{tuple(after.shape)} and {tuple(before.shape)}"
            )
        dtype = self.net.model.embed_tokens.weight.dtype
        x_after, pad = preprocess(after.to(self.device), self.info.tile_size)
        x_before, _ = preprocess(before.to(self.device), self.info.tile_size)
        with self._autocast():
            feats = self.net.encode_pair(x_after.to(dtype), x_before.to(dtype))
        return EncodedPair(feats, pad)

    @torch.inference_mode()
    def logits(self, encoded: EncodedPair, queries: Sequence[str]) -> torch.Tensor:
        """B x Q x H x W change logits in the tiles' frame."""
        out = []
        for query in queries:
            ids = refer_ids(self.tokenizer, query, self.prompt)
            with self._autocast():
                small = self.net.refer_logits(encoded.features, self.pair_prompt, [ids] * len(encoded))
            out.append(unpad(small.float(), encoded.pad))
        return torch.stack(out, 1)

    @torch.inference_mode()
    def change_probabilities(self, after: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
        """Query-free class-agnostic change B x H x W in [0, 1] (the stage-1 head)."""
        encoded = self.encode(after, before)
        with self._autocast():
            small = self.net.change_logits(encoded.features)
        return unpad(small.float(), encoded.pad).sigmoid()

    def predict(self, images: torch.Tensor, queries: Sequence[str]) -> Prediction:
        raise InputError(
            f"{self.info.name} is a bi-temporal change model: run it with `geoseg change "
            "BEFORE AFTER` (two dates), or use a single-date model for `geoseg segment`"
        )

    def change_types(self, query: str) -> tuple[str, ...]:
        said = change_direction(query)
        return (UNDIRECTED,) if said == "both" else (said,)

    def predict_change(self, after: torch.Tensor, before: torch.Tensor, queries: Sequence[str], *,
                       direction: str | Sequence[str] = APPEARED) -> Prediction:
        for q, d in zip(queries, per_query(direction, queries), strict=True):
            if (d,) != self.change_types(q):
                raise ValueError(f"{self.info.name} reads the direction from the query's words: {q!r} "
                                 f"cannot be asked for {d!r}")
        unique = list(dict.fromkeys(queries))
        logits = self.logits(self.encode(after, before), unique)
        probabilities = gate(logits, self.options.gate_min_score, self.options.gate_min_area)
        return Prediction(probabilities=probabilities[:, [unique.index(q) for q in queries]])
