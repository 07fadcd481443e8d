"""SegEarth-R1's Swin-B backbone and Mask2Former pixel decoder, built from transformers' modules.

The computation is transformers' own `SwinBackbone` and `Mask2FormerPixelDecoder` (its encoder is
the pure-PyTorch multi-scale deformable attention, sampled with `grid_sample`). The published
checkpoints use the detectron2-style names of Mask2Former's D2SwinTransformer and
MSDeformAttnPixelDecoder; `KeyMap` translates them (the same correspondence as transformers' own
Mask2Former conversion script). The translation happens in state-dict hooks, so `state_dict()`
shows and writes the published names and `load_state_dict()` takes them, while the modules and
`named_parameters()` carry the library's names:

    published (relative to model.vision_tower.)     transformers SwinBackbone
    patch_embed.{proj,norm}                         swin.embeddings.{patch_embeddings.projection,norm}
    layers.S.blocks.B.{norm1,norm2,mlp.fc1,mlp.fc2} swin.encoder.layers.S.blocks.B.{layernorm_before,
                                                    layernorm_after,mlp.fc1,mlp.fc2}
    layers.S.blocks.B.attn.qkv ([Q; K; V] rows)     ....attention.{q_proj,k_proj,v_proj}
    layers.S.blocks.B.attn.proj                     ....attention.o_proj
    layers.S.blocks.B.attn.relative_position_*      ....attention.relative_position_bias.*
    layers.S.downsample.{reduction,norm}            swin.encoder.layers.S.downsample.*
    normK (K = 0..3)                                hidden_states_norms.stage{K+1}

    published (relative to pixel_decoder.)          transformers Mask2FormerPixelDecoder
    input_proj.L.{0,1}                              input_projections.L.{0,1}
    transformer.level_embed                         level_embed
    transformer.encoder.layers.E.self_attn.*        encoder.layers.E.self_attn.*
    transformer.encoder.layers.E.{norm1,linear1,    encoder.layers.E.{self_attn_layer_norm,fc1,
        linear2,norm2}                                  fc2,final_layer_norm}
    mask_features                                   mask_projection
    adapter_1.{0,1}, layer_1.{0,1}                  (same)

`relative_position_index` is a persistent int64 buffer in the published layout and a non-persistent
one in transformers: the published tensor is loaded into the library's buffer and written back.
"""

from __future__ import annotations

import re
from typing import cast

import torch
from torch import nn
from transformers import Mask2FormerConfig
from transformers import SwinBackbone as LibrarySwinBackbone
from transformers import SwinConfig as LibrarySwinConfig
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerPixelDecoder,
    Mask2FormerSinePositionEmbedding,
)

from geoseg.models.segearth.config import MaskDecoderConfig, SwinConfig

# The library's deformable encoder layer hard-codes these (Mask2Former's values).
DEFORMABLE_LEVELS, DEFORMABLE_POINTS = 3, 4


def _template_regex(template: str) -> re.Pattern:
    """`a.{i}.b` -> a regex matching `a.<digits>.b` or `a.<digits>.b.<rest>`."""
    body = re.escape(template).replace(r"\{", "{").replace(r"\}", "}")
    body = re.sub(r"\{(\w+)\}", r"(?P<\1>\\d+)", body)
    return re.compile(rf"^{body}(?P<rest>\..+)?$")


class KeyMap:
    """Module-path templates, published <-> library; placeholders `{i}` stand for layer indices.

    The first template that matches a key wins (list the specific ones first); a key that no
    template matches keeps its name."""

    def __init__(self, pairs: list[tuple[str, str]]):
        self._forward = [(_template_regex(p), lib) for p, lib in pairs]
        self._backward = [(_template_regex(lib), p) for p, lib in pairs]

    @staticmethod
    def _apply(table, key: str) -> str:
        for regex, target in table:
            m = regex.match(key)
            if m:
                groups = {k: v for k, v in m.groupdict().items() if k != "rest"}
                return target.format(**groups) + (m["rest"] or "")
        return key

    def to_library(self, key: str) -> str:
        return self._apply(self._forward, key)

    def to_published(self, key: str) -> str:
        return self._apply(self._backward, key)


SWIN_BLOCK = "swin.encoder.layers.{s}.blocks.{b}"
SWIN_KEYS = KeyMap(
    [
        ("patch_embed.proj", "swin.embeddings.patch_embeddings.projection"),
        ("patch_embed.norm", "swin.embeddings.norm"),
        ("layers.{s}.blocks.{b}.norm1", f"{SWIN_BLOCK}.layernorm_before"),
        ("layers.{s}.blocks.{b}.norm2", f"{SWIN_BLOCK}.layernorm_after"),
        ("layers.{s}.blocks.{b}.attn.proj", f"{SWIN_BLOCK}.attention.o_proj"),
        ("layers.{s}.blocks.{b}.attn", f"{SWIN_BLOCK}.attention.relative_position_bias"),
        ("layers.{s}.blocks.{b}.mlp", f"{SWIN_BLOCK}.mlp"),
        ("layers.{s}.downsample", "swin.encoder.layers.{s}.downsample"),
    ]
    + [(f"norm{k}", f"hidden_states_norms.stage{k + 1}") for k in range(4)]
)
PIXEL_DECODER_LAYER = "encoder.layers.{e}"
PIXEL_DECODER_KEYS = KeyMap(
    [
        ("input_proj", "input_projections"),
        ("transformer.level_embed", "level_embed"),
        ("transformer.encoder.layers.{e}.self_attn", f"{PIXEL_DECODER_LAYER}.self_attn"),
        ("transformer.encoder.layers.{e}.norm1", f"{PIXEL_DECODER_LAYER}.self_attn_layer_norm"),
        ("transformer.encoder.layers.{e}.linear1", f"{PIXEL_DECODER_LAYER}.fc1"),
        ("transformer.encoder.layers.{e}.linear2", f"{PIXEL_DECODER_LAYER}.fc2"),
        ("transformer.encoder.layers.{e}.norm2", f"{PIXEL_DECODER_LAYER}.final_layer_norm"),
        ("mask_features", "mask_projection"),
    ]
)
# Swin's fused attention input projection on disk: rows [Q; K; V] (D2 Swin reshapes its output to
# [..., 3, heads, head_dim]), split into the library's q/k/v_proj.
FUSED_SWIN_QKV = re.compile(
    r"^(?P<block>layers\.\d+\.blocks\.\d+)\.attn\.qkv\.(?P<leaf>weight|bias)$"
)
SWIN_QKV = ("q_proj", "k_proj", "v_proj")
SWIN_INDEX = re.compile(r"^(?P<block>layers\.\d+\.blocks\.\d+)\.attn\.relative_position_index$")


def _rename_state(state: dict, prefix: str, rename) -> None:
    """Rename, in place, the keys of `state` under `prefix` with `rename(relative_key)`."""
    for key in [k for k in state if k.startswith(prefix)]:
        new = prefix + rename(key[len(prefix) :])
        if new != key:
            state[new] = state.pop(key)


def _published_block(lib_block: str) -> str:
    """`swin.encoder.layers.S.blocks.B` -> `layers.S.blocks.B`."""
    return lib_block.removeprefix("swin.encoder.")


def library_swin_config(cfg: SwinConfig) -> LibrarySwinConfig:
    config = LibrarySwinConfig(
        patch_size=cfg.patch_size,
        embed_dim=cfg.embed_dim,
        depths=list(cfg.depths),
        num_heads=list(cfg.num_heads),
        window_size=cfg.window_size,
        mlp_ratio=cfg.mlp_ratio,
        drop_path_rate=0.0,  # the reference runs the frozen backbone without stochastic depth
        # SwinConfig takes out_features through its **kwargs (its typed signature lacks it)
        out_features=[f"stage{i + 1}" for i in range(len(cfg.depths))],  # type: ignore[call-arg]
    )
    config._attn_implementation = "sdpa"
    return config


class SwinBackbone(LibrarySwinBackbone):
    """transformers' SwinBackbone with the published D2SwinTransformer key names.

    Returns the four normalised stage outputs res2..res5, B x C_i x H/2^(i+2) x W/2^(i+2).
    transformers' backbone already matches the reference on the points that could differ: input
    and windows padded bottom/right, shifted windows kept at every resolution (`always_partition`),
    the same patch-merging order and -100 shift mask, LayerNorm on each stage output."""

    def __init__(self, cfg: SwinConfig):
        super().__init__(library_swin_config(cfg))
        # The final LayerNorm of SwinModel feeds its pooled output only, which the backbone never
        # uses; the published checkpoints have no such weights.
        self.swin.layernorm = nn.Identity()  # type: ignore[assignment]  # an Identity in the LayerNorm's place
        # the inner SwinModel too (an instance attribute over the method)
        self.swin.get_input_embeddings = self.get_input_embeddings  # type: ignore[method-assign, assignment]
        # A checkpoint sets every weight; a model built without one (tests, fresh heads around a
        # random backbone) gets PyTorch's default initialisation and zero bias tables, as geoseg's
        # former module had, instead of transformers' N(0, 0.02).
        for module in self.modules():
            reset = getattr(module, "reset_parameters", None)
            if module is not self and reset is not None:
                reset()
        for _, attention in self.attention_blocks():
            nn.init.zeros_(attention.relative_position_bias.relative_position_bias_table)
        self.register_state_dict_post_hook(_swin_state_dict_hook)
        self.register_load_state_dict_pre_hook(_swin_load_hook)

    # one tensor in, the feature maps out: narrower than the library's forward, by design
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        return list(super().forward(images).feature_maps)

    def get_input_embeddings(self) -> None:  # type: ignore[override]  # deliberately None (below)
        """None: the backbone sits under the PhiModel (`model.vision_tower`), whose gradient
        checkpointing hooks the input embeddings of every PreTrainedModel below it to require
        grads; Swin's patch embedding returns a tuple and needs no such hook."""
        return None

    def attention_blocks(self):
        """(library block path, SwinAttention) of every block."""
        for name, module in self.named_modules():
            if name.endswith(".attention") and hasattr(module, "relative_position_bias"):
                yield name.removesuffix(".attention"), module

    def reset_relative_position_index(self, device: torch.device) -> None:
        """Recompute the index buffers left on the meta device (not given by the checkpoint)."""
        for _, attention in self.attention_blocks():
            bias = attention.relative_position_bias
            if bias.relative_position_index.is_meta:
                with torch.device(device):
                    bias.relative_position_index = bias._create_relative_position_index().view(-1)


def _swin_state_dict_hook(module: SwinBackbone, state: dict, prefix: str, _meta) -> None:
    for block, attention in module.attention_blocks():
        lib = f"{prefix}{block}.attention"
        published = f"{prefix}{_published_block(block)}.attn"
        for leaf in ("weight", "bias"):
            parts = [state.pop(f"{lib}.{name}.{leaf}") for name in SWIN_QKV]
            state[f"{published}.qkv.{leaf}"] = torch.cat(parts, 0)
        n = attention.relative_position_bias.window_area
        index = attention.relative_position_bias.relative_position_index
        state[f"{published}.relative_position_index"] = index.view(n, n)
    _rename_state(state, prefix, SWIN_KEYS.to_published)


def _swin_load_hook(module: SwinBackbone, state: dict, prefix: str, *_args) -> None:
    for key in [k for k in state if k.startswith(prefix)]:
        rel = key[len(prefix) :]
        fused, index = FUSED_SWIN_QKV.match(rel), SWIN_INDEX.match(rel)
        if fused:
            tensor = state.pop(key)
            lib = f"{prefix}swin.encoder.{fused['block']}.attention"
            for name, part in zip(SWIN_QKV, tensor.chunk(3, 0), strict=True):
                state[f"{lib}.{name}.{fused['leaf']}"] = part
        elif index:
            # Non-persistent in the library: set it here, as the reference loads it.
            bias = module.get_submodule(
                f"swin.encoder.{index['block']}.attention.relative_position_bias"
            )
            bias.relative_position_index = state.pop(key).reshape(-1).to(torch.long)
    _rename_state(state, prefix, SWIN_KEYS.to_library)


class Float32SinePositionEmbedding(Mask2FormerSinePositionEmbedding):
    """transformers' normalised sine embedding, always computed in float32 and then cast.

    Kept because the library computes it in the feature dtype: in bfloat16 the positions
    (up to 256 at 1024 px) and their quotients lose precision, while the reference computes in
    float32 (its cumsum is float32) and casts afterwards."""

    def forward(self, shape, device, dtype, mask=None) -> torch.Tensor:
        return super().forward(shape, device, torch.float32, mask).to(dtype)


def sine_position_embedding(x: torch.Tensor) -> torch.Tensor:
    """DETR's normalised sine embedding of a B x C x H x W map (C/2 features per axis, y then x)."""
    return Float32SinePositionEmbedding(x.shape[1] // 2, normalize=True)(x.shape, x.device, x.dtype)


def library_mask2former_config(cfg: MaskDecoderConfig) -> Mask2FormerConfig:
    return Mask2FormerConfig(
        feature_size=cfg.conv_dim,
        mask_feature_size=cfg.mask_dim,
        hidden_dim=cfg.hidden_dim,
        num_attention_heads=cfg.nheads,
        encoder_feedforward_dim=cfg.enc_ffn,
        encoder_layers=cfg.enc_layers,
        dropout=0.0,
        feature_strides=[4, 8, 16, 32],
        common_stride=4,
    )


class PixelDecoder(Mask2FormerPixelDecoder):
    """transformers' Mask2Former pixel decoder with the published MSDeformAttnPixelDecoder names.

    res2..res5 -> (mask_features at stride 4, [three multi-scale maps at strides 32, 16, 8])."""

    def __init__(self, cfg: MaskDecoderConfig, channels: tuple[int, ...]):
        super().__init__(library_mask2former_config(cfg), list(channels))
        self.position_embedding = Float32SinePositionEmbedding(cfg.conv_dim // 2, normalize=True)
        # Kept from the reference: SegEarth-R1's FPN step differs from detectron2's Mask2Former
        # (which the library follows) in two points. Its convs (adapter_1.0, layer_1.0) have a
        # bias, and its lateral adapter_1 ends with a ReLU. Both are patched into the library's
        # own Sequentials, so its forward uses them; no parameters are added beyond the biases.
        for seq in (cast(nn.Sequential, self.adapter_1), cast(nn.Sequential, self.layer_1)):
            conv = seq[0]
            assert isinstance(conv, nn.Conv2d)
            # a Conv2d's kernel_size and padding are pairs (torch types them as any-length tuples)
            kernel = cast(tuple[int, int], conv.kernel_size)
            padding = cast("tuple[int, int] | str", conv.padding)
            seq[0] = nn.Conv2d(conv.in_channels, conv.out_channels, kernel, padding=padding)
        cast(nn.Sequential, self.adapter_1).append(nn.ReLU())
        # The library allocates level_embed uninitialised; a checkpoint sets it. Zeros, as geoseg's
        # former module had, for a model built without one.
        nn.init.zeros_(self.level_embed)
        self.register_state_dict_post_hook(_pixel_decoder_state_dict_hook)
        self.register_load_state_dict_pre_hook(_pixel_decoder_load_hook)

    # the levels in, (mask features, multi-scale maps) out: narrower than the library's, by design
    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:  # type: ignore[override]
        out = super().forward(list(feats), return_dict=True)
        return out.mask_features, list(out.multi_scale_features)


def _pixel_decoder_state_dict_hook(module, state: dict, prefix: str, _meta) -> None:
    _rename_state(state, prefix, PIXEL_DECODER_KEYS.to_published)


def _pixel_decoder_load_hook(module, state: dict, prefix: str, *_args) -> None:
    _rename_state(state, prefix, PIXEL_DECODER_KEYS.to_library)
