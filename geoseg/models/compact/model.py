"""The compact referring segmenter as a torch module, with HF-style save/load (safetensors).

`CompactModel` holds every trainable part (the frozen text encoder lives outside it, see
text.py). The split `encode_images` / `decode` is what lets one image serve many queries:
image features are computed once, then gathered per (image, query) pair.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from geoseg.models.compact.config import CompactConfig
from geoseg.models.compact.decoder import ConvBlock, Decoder
from geoseg.models.compact.encoder import EfficientNetLite
from geoseg.models.compact.fusion import TemporalFusion
from geoseg.models.compact.guidance import GuidanceBuilder
from geoseg.models.compact.text import TextFeatures

WEIGHTS_NAME = "model.safetensors"


@dataclass
class ImageFeatures:
    lateral: list[torch.Tensor]  # per image [s4, s8, s16, s32], decoder widths
    vision_tokens: torch.Tensor  # per image N x dim tokens at stride 16
    change_logits: torch.Tensor | None = None  # class-agnostic change logits at s4 (change variant)


@dataclass
class ModelOutput:
    mask_logits: torch.Tensor  # M x H x W at input resolution
    exist_logits: torch.Tensor  # M
    relevance: torch.Tensor  # M x h16 x w16 logits of the sentence token
    change_logits: torch.Tensor | None = None  # B x H x W (change variant)


class CompactModel(nn.Module):
    mean: torch.Tensor  # buffers (register_buffer below)
    std: torch.Tensor

    def __init__(self, config: CompactConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.register_buffer("mean", torch.tensor(c.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(c.std).view(1, 3, 1, 1), persistent=False)
        if c.encoder != "efficientnet_lite0":
            raise ValueError(f"unknown compact encoder {c.encoder!r} (known: efficientnet_lite0)")
        self.encoder = EfficientNetLite(c.encoder_width)
        widths = self.encoder.out_channels
        if c.change:
            self.fusion = nn.ModuleList(TemporalFusion(w) for w in widths)
            self.change_head = nn.ModuleList(nn.Conv2d(w, c.decoder_widths[1], 1) for w in widths[:3])
            self.change_out = nn.Conv2d(c.decoder_widths[1], 1, 1)
        out_widths = (c.decoder_widths[1], c.decoder_widths[0], c.dim, c.dim)
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.Conv2d(w, o, 1, bias=False), nn.BatchNorm2d(o)) for w, o in zip(widths, out_widths, strict=True)
        )
        self.guidance = GuidanceBuilder(c.text_dim, c.dim, c.heads, c.top_ratio, c.min_top)
        self.decoder = Decoder(c.dim, c.decoder_widths, c.heads, c.mlp_ratio)

    # ---- image side (once per image) -------------------------------------------------------
    def encode_images(self, images: torch.Tensor, before: torch.Tensor | None = None) -> ImageFeatures:
        """images (after date in change mode) B x 3 x H x W in [0, 1]; H, W multiples of 32."""
        change_logits = None
        if self.config.change:
            if before is None:
                raise ValueError("the change variant needs `before` images")
            both = self.encoder(self._normalise(torch.cat([before, images], dim=0)))
            b = images.shape[0]
            feats = [fuse(f[:b], f[b:]) for fuse, f in zip(self.fusion, both, strict=True)]
            change_logits = self._change_logits(feats, images.shape[-2:])
        else:
            feats = self.encoder(self._normalise(images))
        lateral = [proj(f) for proj, f in zip(self.lateral, feats, strict=True)]
        tokens = lateral[2].flatten(2).transpose(1, 2)
        return ImageFeatures(lateral, tokens, change_logits)

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    def _change_logits(self, feats: list[torch.Tensor], size: torch.Size) -> torch.Tensor:
        s4 = feats[0]
        x = cast(torch.Tensor, sum(
            F.interpolate(head(f), size=s4.shape[-2:], mode="bilinear", align_corners=False)
            for head, f in zip(self.change_head, feats[:3], strict=True)
        ))
        logits = self.change_out(F.gelu(x))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False).squeeze(1)

    # ---- query side (once per image-query pair) ----------------------------------------------
    def decode(self, feats: ImageFeatures, text: TextFeatures, image_index: torch.Tensor) -> ModelOutput:
        """Pair m uses image image_index[m] and query text m."""
        lateral = [f[image_index] for f in feats.lateral]
        vision = feats.vision_tokens[image_index]
        guidance = self.guidance(text.tokens, text.mask, vision)
        logits4, exist = self.decoder(lateral, guidance)
        h, w = lateral[0].shape[-2] * 4, lateral[0].shape[-1] * 4
        logits = F.interpolate(logits4[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        rel = guidance.relevance.view(-1, *lateral[2].shape[-2:])
        return ModelOutput(logits, exist, rel, feats.change_logits)

    def forward(
        self,
        images: torch.Tensor,
        text: TextFeatures,
        image_index: torch.Tensor,
        before: torch.Tensor | None = None,
    ) -> ModelOutput:
        return self.decode(self.encode_images(images, before), text, image_index)

    # ---- files -----------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.config.save(path)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(path / WEIGHTS_NAME), metadata={"format": "pt", "model_type": self.config.model_type})
        return path / WEIGHTS_NAME

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> CompactModel:
        path = Path(directory)
        model = cls(CompactConfig.load(path))
        state = load_file(str(path / WEIGHTS_NAME), device=str(map_location))
        model.load_state_dict(state, strict=True)
        return model.to(map_location).eval()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def fold_batch_norms(self) -> int:
        """Fold every BatchNorm into the convolution just before it, for inference only (the
        model must be in eval mode; training needs the separate statistics). One convolution
        pass instead of a convolution and a normalisation pass per layer; the outputs agree to
        float rounding (tests/test_compact_model.py). Returns the number of folded pairs."""
        folded = 0
        for module in self.modules():
            pairs = []
            if isinstance(module, nn.Sequential):  # ConvBN, the lateral projections, the change fusion
                names = [name for name, _ in module.named_children()]
                pairs = [(a, b) for a, b in itertools.pairwise(names)
                         if isinstance(module.get_submodule(a), nn.Conv2d)
                         and isinstance(module.get_submodule(b), nn.BatchNorm2d)]
            elif isinstance(module, ConvBlock):
                pairs = [("dw", "norm")]
            for conv, norm in pairs:
                conv_module, norm_module = module.get_submodule(conv), module.get_submodule(norm)
                assert isinstance(conv_module, nn.Conv2d) and isinstance(norm_module, nn.BatchNorm2d)
                setattr(module, conv, fuse_conv_bn_eval(conv_module, norm_module))
                setattr(module, norm, nn.Identity())
                folded += 1
        return folded
