"""Architecture dimensions of a SegEarth-R1 checkpoint, read from its `config.json`.

The published `config.json` (model_type `llava_phi`, transformers 4.36.2) carries the Phi-1.5 fields
(`hidden_size`, `num_hidden_layers`, `vocab_size`, ...) and the multimodal ones (`swin_type`,
`mm_projector_type`, `mm_input_embeds`, `projector_outdim`). The Mask2Former head and the description
projector were sized by a YAML file and by constants in the reference code, so they are not in
`config.json`; the defaults below are those values. An optional `geoseg` section in `config.json`
overrides any of them (used by scaled-down test checkpoints and by geoseg's own options).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from geoseg.errors import ModelLoadError

# Swin presets of the reference (`build_swin_b` / `build_swin_l`, Mask2Former `swin_*_384`).
SWIN_PRESETS: dict[str, dict[str, Any]] = {
    "base": {
        "embed_dim": 128,
        "depths": (2, 2, 18, 2),
        "num_heads": (4, 8, 16, 32),
        "window_size": 12,
    },
    "large": {
        "embed_dim": 192,
        "depths": (2, 2, 18, 2),
        "num_heads": (6, 12, 24, 48),
        "window_size": 12,
    },
}

# ImageNet statistics on the 0-255 scale (Mask2Former PIXEL_MEAN / PIXEL_STD).
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class SwinConfig:
    embed_dim: int = 128
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 12
    patch_size: int = 4
    mlp_ratio: float = 4.0

    @property
    def channels(self) -> tuple[int, ...]:
        """Channels of res2..res5."""
        return tuple(self.embed_dim * 2**i for i in range(len(self.depths)))


@dataclass(frozen=True)
class MaskDecoderConfig:
    """Mask2Former pixel decoder (MSDeformAttn) + transformer decoder (`maskformer2_R50_bs16_50ep.yaml`)."""

    conv_dim: int = 256  # SEM_SEG_HEAD.CONVS_DIM
    mask_dim: int = 256  # SEM_SEG_HEAD.MASK_DIM
    hidden_dim: int = 256  # MASK_FORMER.HIDDEN_DIM
    nheads: int = 8  # MASK_FORMER.NHEADS (pixel decoder and transformer decoder)
    enc_layers: int = 6  # SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS
    enc_ffn: int = 1024  # hard-coded in the reference's pixel_decoder_init
    enc_points: int = 4  # MSDeformAttn n_points (transformers' pixel decoder supports only 4)
    dec_layers: int = 9  # MASK_FORMER.DEC_LAYERS (10) - 1
    dec_ffn: int = 2048  # MASK_FORMER.DIM_FEEDFORWARD
    num_queries: int = 100  # MASK_FORMER.NUM_OBJECT_QUERIES (unused at inference, shapes the keys)


@dataclass(frozen=True)
class DescriptionProjectorConfig:
    """The [SEG] projection: pooled path + Perceiver cross-attention over res5 (`D_Projector`)."""

    dim: int = 512  # `additional_dim` in the reference
    heads: int = 8
    dim_head: int = 64
    ff_mult: int = 1
    depth: int = 1


@dataclass(frozen=True)
class GeosegOptions:
    """geoseg's own knobs (not part of the reference model)."""

    image_size: int = 1024  # the reference's input size; also the native tile size
    task: str | None = None  # "referring" | "reasoning"; None: guessed from the checkpoint name
    gate_min_score: float = 0.7  # mean sigmoid inside the predicted mask below this -> empty
    gate_min_area: int = 64  # predicted mask smaller than this (pixels of the tile) -> empty
    change_dilate_px: int = 8  # radius of the dilation of the other date's mask in change mode
    change_min_angle_deg: float = (
        25.0  # AnyChange's 155 deg: keep changes whose features turned more
    )
    overlap: int = 128  # default tile overlap the pipeline should use
    max_new_tokens: int = 128  # generative checkpoints: longest answer (greedy decoding)
    fusion: str = "full"  # bi-temporal checkpoints: temporal fusion variant (see bitemporal.py)
    # ground resolutions (m/px, finest, coarsest) the checkpoint was trained for; the published
    # checkpoints declare none (None: scenes are read at their own resolution)
    gsd_range: tuple[float, float] | None = None


@dataclass(frozen=True)
class SegEarthConfig:
    phi: dict[str, Any]  # the PhiConfig fields of config.json
    hidden_size: int
    vocab_size: int
    swin: SwinConfig = field(default_factory=SwinConfig)
    mm_input_embeds: int = 1024
    projector_outdim: int = 2048
    mask: MaskDecoderConfig = field(default_factory=MaskDecoderConfig)
    projector: DescriptionProjectorConfig = field(default_factory=DescriptionProjectorConfig)
    options: GeosegOptions = field(default_factory=GeosegOptions)

    @property
    def connector_sizes(self) -> tuple[int, int]:
        """Spatial sizes after the connector's two stride-2 convs (16 and 8 at 1024 input)."""
        res5 = self.options.image_size // (self.swin.patch_size * 8)  # res5 is at stride 32 for patch 4
        return (res5 + 1) // 2, (res5 + 3) // 4

    @property
    def num_visual_tokens(self) -> int:
        return self.connector_sizes[1] ** 2


_PHI_KEYS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_act", "max_position_embeddings", "layer_norm_eps",
    "rope_theta", "partial_rotary_factor", "qk_layernorm", "rope_scaling", "rope_parameters",
)  # fmt: skip


def _sub(cls, raw: dict | None, where: str, **base):
    raw = dict(raw or {})
    known = {f.name for f in fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise ModelLoadError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(known)})")
    for k, v in raw.items():
        if isinstance(v, list):
            raw[k] = tuple(v)
    return cls(**{**base, **raw})


def parse_config(raw: dict, where: str = "config.json") -> SegEarthConfig:
    """Build a SegEarthConfig from a checkpoint's config.json contents."""
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        if key not in raw:
            raise ModelLoadError(f"{where}: missing {key!r}; is this a SegEarth-R1 checkpoint?")
    projector_type = raw.get("mm_projector_type", "SparseConv_1")
    if projector_type != "SparseConv_1":
        raise ModelLoadError(
            f"{where}: mm_projector_type {projector_type!r} is not supported "
            "(SegEarth-R1 checkpoints use 'SparseConv_1')"
        )
    extra = raw.get("geoseg", {}) or {}
    swin_type = raw.get("swin_type", "base")
    if swin_type not in SWIN_PRESETS:
        raise ModelLoadError(
            f"{where}: swin_type {swin_type!r} unknown ({', '.join(SWIN_PRESETS)})"
        )
    swin = _sub(SwinConfig, extra.get("swin"), f"{where} geoseg.swin", **SWIN_PRESETS[swin_type])
    if len(swin.depths) != 4 or len(swin.num_heads) != 4:
        raise ModelLoadError(f"{where}: the Swin backbone needs 4 stages (res2-res5)")
    mask = _sub(MaskDecoderConfig, extra.get("mask_decoder"), f"{where} geoseg.mask_decoder")
    if mask.conv_dim != mask.hidden_dim:
        # The reference adds 1x1 input projections in that case; no published checkpoint has them.
        raise ModelLoadError(f"{where}: mask decoder conv_dim must equal hidden_dim")
    if mask.enc_points != 4:
        raise ModelLoadError(f"{where}: mask decoder enc_points must be 4 (Mask2Former's value)")
    if mask.conv_dim % 32:
        raise ModelLoadError(f"{where}: mask decoder conv_dim must be a multiple of 32 (GroupNorm)")
    projector = _sub(
        DescriptionProjectorConfig,
        extra.get("description_projector"),
        f"{where} geoseg.description_projector",
    )
    options_raw = {
        k: v for k, v in extra.items() if k not in ("swin", "mask_decoder", "description_projector")
    }
    options = _sub(GeosegOptions, options_raw, f"{where} geoseg")
    if options.task not in (None, "referring", "reasoning"):
        raise ModelLoadError(f"{where}: geoseg.task must be 'referring' or 'reasoning'")
    step = swin.patch_size * 32  # res5 stride x the connector's two stride-2 convs
    if options.image_size % step:
        raise ModelLoadError(f"{where}: geoseg.image_size must be a multiple of {step}")
    mm_in = int(raw.get("mm_input_embeds", swin.channels[-1]))
    if mm_in != swin.channels[-1]:
        raise ModelLoadError(
            f"{where}: mm_input_embeds {mm_in} != Swin res5 channels {swin.channels[-1]}"
        )
    outdim = int(raw.get("projector_outdim", raw["hidden_size"]))
    if outdim != int(raw["hidden_size"]):
        raise ModelLoadError(
            f"{where}: projector_outdim {outdim} != hidden_size {raw['hidden_size']}"
        )
    return SegEarthConfig(
        phi={k: raw[k] for k in _PHI_KEYS if k in raw},
        hidden_size=int(raw["hidden_size"]),
        vocab_size=int(raw["vocab_size"]),
        swin=swin,
        mm_input_embeds=mm_in,
        projector_outdim=outdim,
        mask=mask,
        projector=projector,
        options=options,
    )
