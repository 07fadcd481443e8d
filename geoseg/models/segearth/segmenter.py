"""SegEarth-R1 behind geoseg's Segmenter contract.

Per batch of tiles: preprocess once, run the image side once (Swin, connector, pixel decoder),
then per query the language side (Phi + projectors + transformer decoder), un-pad the logits to the
tile frame and turn them into probabilities. The model has no "nothing here" output, so each
(tile, query) mask is gated: it is kept only if its area and the mean probability inside it reach
thresholds; otherwise the tile reports zeros for that query.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from geoseg.models.base import ModelInfo, Prediction
from geoseg.models.change import combine, directed_change_types, per_query
from geoseg.models.segearth.change import feature_change_map, suppress_unchanged
from geoseg.models.segearth.config import GeosegOptions
from geoseg.models.segearth.model import ImageFeatures, SegEarthR1
from geoseg.models.segearth.preprocess import PadInfo, preprocess, unpad
from geoseg.models.segearth.prompt import PromptIds, refer_ids


@dataclass
class EncodedTiles:
    """Image-side results for a batch of tiles; reuse them for any number of queries."""

    features: ImageFeatures
    pad: PadInfo

    def __len__(self) -> int:
        return self.features.visual_tokens.shape[0]


def gate(logits: torch.Tensor, min_score: float, min_area: int) -> torch.Tensor:
    """Probabilities from logits (... x H x W), zeroed where the predicted mask is not convincing.

    The mask is `logits > 0` (the reference's decision); its score is the mean sigmoid inside it
    (the formula of the reference's dormant `SEG_instance_inference`).
    """
    prob = logits.float().sigmoid()
    mask = logits > 0
    area = mask.flatten(-2).sum(-1)
    score = (prob * mask).flatten(-2).sum(-1) / area.clamp(min=1)
    keep = (area >= max(min_area, 1)) & (score >= min_score)
    return prob * keep[..., None, None]


class SegEarthSegmenter:
    """Implements `geoseg.models.base.Segmenter`; see docs/models/segearth-r1.md."""

    def __init__(
        self,
        net: SegEarthR1,
        tokenizer,
        prompt: PromptIds,
        info: ModelInfo,
        device: torch.device,
        options: GeosegOptions,
        compile: bool = False,
    ):
        self.net = net
        self.model = net  # base.TorchBacked: the dry run reports its parameter memory
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.info = info
        self.device = device
        self.options = options
        self._before_ids = torch.tensor(prompt.before_image, device=device)
        self._after_ids = torch.tensor(prompt.after_image, device=device)
        self._encode = net.encode_images
        self._segment = net.segment
        if compile:
            self._encode = torch.compile(net.encode_images)
            self._segment = torch.compile(net.segment, dynamic=True)

    # --- building blocks the pipeline may call directly ------------------------------------
    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> EncodedTiles:
        """Image side for B x 3 x H x W tiles in [0, 1]; computed once, reused for every query."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"SegEarth-R1 expects B x 3 x H x W RGB tiles, got {tuple(images.shape)}"
            )
        x, pad = preprocess(images.to(self.device), self.info.tile_size)
        with self._autocast():
            features = self._encode(x.to(self._param_dtype))
        return EncodedTiles(features, pad)

    @torch.inference_mode()
    def logits(self, encoded: EncodedTiles, queries: Sequence[str]) -> torch.Tensor:
        """Mask logits B x Q x H x W in the tiles' frame (un-padded, full resolution)."""
        out = []
        for query in queries:
            ids = torch.tensor(refer_ids(self.tokenizer, query, self.prompt), device=self.device)
            with self._autocast():
                small = self._segment(
                    encoded.features, self._before_ids, self._after_ids, [ids] * len(encoded)
                )
            out.append(unpad(small.float(), encoded.pad))
        return torch.stack(out, dim=1)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return gate(logits, self.options.gate_min_score, self.options.gate_min_area)

    # --- the Segmenter contract ---------------------------------------------------------------
    def predict(self, images: torch.Tensor, queries: Sequence[str]) -> Prediction:
        """B x Q x H x W probabilities."""
        encoded = self.encode(images)
        return Prediction(probabilities=self.probabilities(self.logits(encoded, queries)))

    def change_types(self, query: str) -> tuple[str, ...]:
        return directed_change_types(query)

    def predict_change(
        self,
        after: torch.Tensor,
        before: torch.Tensor,
        queries: Sequence[str],
        *,
        direction: str | Sequence[str] = "appeared",
    ) -> Prediction:
        """Change probabilities B x Q x H x W from segmenting both dates with the same queries.

        `direction` (one for every query, or one per query): "appeared" or "disappeared", each by
        geoseg.models.change.combine with `change_dilate_px`. Each distinct
        query is segmented once, whatever directions it is asked for. Regions whose image features
        did not change are suppressed.
        """
        if after.shape != before.shape:
            raise ValueError(f"before {tuple(before.shape)} and after {tuple(after.shape)} differ")
        directions = per_query(direction, queries)
        encoded = self.encode(torch.cat([after, before], dim=0))  # one image pass for both dates
        b = after.shape[0]
        unique = list(dict.fromkeys(queries))
        probs = self.probabilities(self.logits(encoded, unique))
        change = torch.stack([
            combine(probs[:b, unique.index(q)], probs[b:, unique.index(q)], d, self.options.change_dilate_px)
            for q, d in zip(queries, directions, strict=True)
        ], dim=1)
        feats = encoded.features.mask_features
        change = suppress_unchanged(
            change, feats[:b], feats[b:], encoded.pad, self.options.change_min_angle_deg
        )
        return Prediction(probabilities=change)

    def feature_change(self, after: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
        """Dense, query-free change evidence B x H x W in [0, 1] ((1 - cos) / 2 of pixel-decoder
        features), for scoring change polygons."""
        encoded = self.encode(torch.cat([after, before], dim=0))
        feats = encoded.features.mask_features
        b = after.shape[0]
        return feature_change_map(feats[:b], feats[b:], encoded.pad)

    @property
    def _param_dtype(self) -> torch.dtype:
        return self.net.model.embed_tokens.weight.dtype
