"""SegEarth-R1 backend: checkpoint layout, loading errors, preprocessing, prediction, change.

The key inventory below is the published checkpoints' state-dict layout, written down from the
reference code (SegEarth-R1 + Mask2Former + transformers 4.36.2 PhiModel), independently of
geoseg's module code. Scaled-down checkpoints are generated from it, so loading them proves that
geoseg's module tree has exactly the published names and shape rules.

The published Phi attention is 4.36.2's single fused `query_key_value` projection (rows grouped per
head: [q_h0; k_h0; v_h0; q_h1; ...]); the second accepted form, the split `q_proj` / `k_proj` /
`v_proj` of newer transformers and of `geoseg train`, is derived from it by `split_layout` and
`split_state` below (plain index arithmetic, independent of geoseg's converter).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from segearth_words import WORDS

from geoseg.errors import ModelLoadError
from geoseg.models.change import combine
from geoseg.models.segearth import (
    PadInfo,
    SegEarthSegmenter,
    checkpoint,
    gate,
    load_segearth_segmenter,
    preprocess,
    unpad,
)
from geoseg.models.segearth.change import region_change_scores, suppress_unchanged
from geoseg.models.segearth.config import PIXEL_MEAN, PIXEL_STD, parse_config
from geoseg.models.segearth.model import SegEarthR1
from geoseg.models.segearth.prompt import SEG_TOKEN, prompt_chunks

torch.set_num_threads(1)

# ------------------------------------------------------------------ published layout (data)
# key template -> shape expression. Placeholders: {n} Phi layer, {s}/{b} Swin stage/block,
# {t} Swin stage with a downsample (0-2), {k} output norm (0-3), {l} pixel-decoder input level,
# {e} deformable encoder layer, {d} transformer decoder layer.
# Symbols: D hidden, V vocab, I Phi MLP, C[s] Swin channels, NH[s] Swin heads, W window,
# S1/S2 connector spatial sizes, P description dim, PI perceiver inner dim, FF perceiver FF dim,
# M mask-decoder dim, MK mask dim, NQ queries, F1 pixel-decoder FFN, F2 decoder FFN, OFF/ATT
# deformable sampling-offset / attention-weight outputs.
INVENTORY: dict[str, dict[str, str]] = {
    "phi": {
        "model.embed_tokens.weight": "V, D",
        "model.layers.{n}.self_attn.query_key_value.weight": "3*D, D",
        "model.layers.{n}.self_attn.query_key_value.bias": "3*D",
        "model.layers.{n}.self_attn.dense.weight": "D, D",
        "model.layers.{n}.self_attn.dense.bias": "D",
        "model.layers.{n}.mlp.fc1.weight": "I, D",
        "model.layers.{n}.mlp.fc1.bias": "I",
        "model.layers.{n}.mlp.fc2.weight": "D, I",
        "model.layers.{n}.mlp.fc2.bias": "D",
        "model.layers.{n}.input_layernorm.weight": "D",
        "model.layers.{n}.input_layernorm.bias": "D",
        "model.final_layernorm.weight": "D",
        "model.final_layernorm.bias": "D",
        "lm_head.weight": "V, D",
    },
    "vision_tower": {
        "model.vision_tower.patch_embed.proj.weight": "C[0], 3, 4, 4",
        "model.vision_tower.patch_embed.proj.bias": "C[0]",
        "model.vision_tower.patch_embed.norm.weight": "C[0]",
        "model.vision_tower.patch_embed.norm.bias": "C[0]",
        "model.vision_tower.layers.{s}.blocks.{b}.norm1.weight": "C[s]",
        "model.vision_tower.layers.{s}.blocks.{b}.norm1.bias": "C[s]",
        "model.vision_tower.layers.{s}.blocks.{b}.attn.relative_position_bias_table": "(2*W-1)**2, NH[s]",
        "model.vision_tower.layers.{s}.blocks.{b}.attn.relative_position_index": "W*W, W*W",
        "model.vision_tower.layers.{s}.blocks.{b}.attn.qkv.weight": "3*C[s], C[s]",
        "model.vision_tower.layers.{s}.blocks.{b}.attn.qkv.bias": "3*C[s]",
        "model.vision_tower.layers.{s}.blocks.{b}.attn.proj.weight": "C[s], C[s]",
        "model.vision_tower.layers.{s}.blocks.{b}.attn.proj.bias": "C[s]",
        "model.vision_tower.layers.{s}.blocks.{b}.norm2.weight": "C[s]",
        "model.vision_tower.layers.{s}.blocks.{b}.norm2.bias": "C[s]",
        "model.vision_tower.layers.{s}.blocks.{b}.mlp.fc1.weight": "4*C[s], C[s]",
        "model.vision_tower.layers.{s}.blocks.{b}.mlp.fc1.bias": "4*C[s]",
        "model.vision_tower.layers.{s}.blocks.{b}.mlp.fc2.weight": "C[s], 4*C[s]",
        "model.vision_tower.layers.{s}.blocks.{b}.mlp.fc2.bias": "C[s]",
        "model.vision_tower.layers.{t}.downsample.reduction.weight": "2*C[t], 4*C[t]",
        "model.vision_tower.layers.{t}.downsample.norm.weight": "4*C[t]",
        "model.vision_tower.layers.{t}.downsample.norm.bias": "4*C[t]",
        "model.vision_tower.norm{k}.weight": "C[k]",
        "model.vision_tower.norm{k}.bias": "C[k]",
    },
    "mm_projector": {
        "model.mm_projector.proj1.weight": "D, C[3], 3, 3",
        "model.mm_projector.proj1.bias": "D",
        "model.mm_projector.norm1.weight": "D, S1, S1",
        "model.mm_projector.norm1.bias": "D, S1, S1",
        "model.mm_projector.proj2.weight": "D, D, 3, 3",
        "model.mm_projector.proj2.bias": "D",
        "model.mm_projector.norm2.weight": "D, S2, S2",
        "model.mm_projector.norm2.bias": "D, S2, S2",
        "model.mm_projector.fc.weight": "D, D, 1, 1",
        "model.mm_projector.fc.bias": "D",
    },
    "seg_projectors": {
        "seg_query": "NQ, D",
        "text_projector.weight": "P, D",
        "text_projector.bias": "P",
        "origin_SEG_token_projector.weight": "P, D",
        "origin_SEG_token_projector.bias": "P",
        "local_project.weight": "P, C[3]",
        "local_project.bias": "P",
        "SEG_token_projector.weight": "M, 2*P",
        "SEG_token_projector.bias": "M",
        "d_layers.layers.0.0.norm_media.weight": "P",
        "d_layers.layers.0.0.norm_media.bias": "P",
        "d_layers.layers.0.0.norm_latents.weight": "P",
        "d_layers.layers.0.0.norm_latents.bias": "P",
        "d_layers.layers.0.0.to_q.weight": "PI, P",
        "d_layers.layers.0.0.to_kv.weight": "2*PI, P",
        "d_layers.layers.0.0.to_out.weight": "P, PI",
        "d_layers.layers.0.1.0.weight": "P",
        "d_layers.layers.0.1.0.bias": "P",
        "d_layers.layers.0.1.1.weight": "FF, P",
        "d_layers.layers.0.1.3.weight": "P, FF",
        "d_layers.norm.weight": "P",
        "d_layers.norm.bias": "P",
    },
    "pixel_decoder": {
        "pixel_decoder.input_proj.{l}.0.weight": "M, C[3-l], 1, 1",
        "pixel_decoder.input_proj.{l}.0.bias": "M",
        "pixel_decoder.input_proj.{l}.1.weight": "M",
        "pixel_decoder.input_proj.{l}.1.bias": "M",
        "pixel_decoder.transformer.level_embed": "3, M",
        "pixel_decoder.transformer.encoder.layers.{e}.self_attn.sampling_offsets.weight": "OFF, M",
        "pixel_decoder.transformer.encoder.layers.{e}.self_attn.sampling_offsets.bias": "OFF",
        "pixel_decoder.transformer.encoder.layers.{e}.self_attn.attention_weights.weight": "ATT, M",
        "pixel_decoder.transformer.encoder.layers.{e}.self_attn.attention_weights.bias": "ATT",
        "pixel_decoder.transformer.encoder.layers.{e}.self_attn.value_proj.weight": "M, M",
        "pixel_decoder.transformer.encoder.layers.{e}.self_attn.value_proj.bias": "M",
        "pixel_decoder.transformer.encoder.layers.{e}.self_attn.output_proj.weight": "M, M",
        "pixel_decoder.transformer.encoder.layers.{e}.self_attn.output_proj.bias": "M",
        "pixel_decoder.transformer.encoder.layers.{e}.norm1.weight": "M",
        "pixel_decoder.transformer.encoder.layers.{e}.norm1.bias": "M",
        "pixel_decoder.transformer.encoder.layers.{e}.linear1.weight": "F1, M",
        "pixel_decoder.transformer.encoder.layers.{e}.linear1.bias": "F1",
        "pixel_decoder.transformer.encoder.layers.{e}.linear2.weight": "M, F1",
        "pixel_decoder.transformer.encoder.layers.{e}.linear2.bias": "M",
        "pixel_decoder.transformer.encoder.layers.{e}.norm2.weight": "M",
        "pixel_decoder.transformer.encoder.layers.{e}.norm2.bias": "M",
        "pixel_decoder.mask_features.weight": "MK, M, 1, 1",
        "pixel_decoder.mask_features.bias": "MK",
        "pixel_decoder.adapter_1.0.weight": "M, C[0], 1, 1",
        "pixel_decoder.adapter_1.0.bias": "M",
        "pixel_decoder.adapter_1.1.weight": "M",
        "pixel_decoder.adapter_1.1.bias": "M",
        "pixel_decoder.layer_1.0.weight": "M, M, 3, 3",
        "pixel_decoder.layer_1.0.bias": "M",
        "pixel_decoder.layer_1.1.weight": "M",
        "pixel_decoder.layer_1.1.bias": "M",
    },
    "predictor": {
        "predictor.transformer_self_attention_layers.{d}.self_attn.in_proj_weight": "3*M, M",
        "predictor.transformer_self_attention_layers.{d}.self_attn.in_proj_bias": "3*M",
        "predictor.transformer_self_attention_layers.{d}.self_attn.out_proj.weight": "M, M",
        "predictor.transformer_self_attention_layers.{d}.self_attn.out_proj.bias": "M",
        "predictor.transformer_self_attention_layers.{d}.norm.weight": "M",
        "predictor.transformer_self_attention_layers.{d}.norm.bias": "M",
        "predictor.transformer_cross_attention_layers.{d}.multihead_attn.in_proj_weight": "3*M, M",
        "predictor.transformer_cross_attention_layers.{d}.multihead_attn.in_proj_bias": "3*M",
        "predictor.transformer_cross_attention_layers.{d}.multihead_attn.out_proj.weight": "M, M",
        "predictor.transformer_cross_attention_layers.{d}.multihead_attn.out_proj.bias": "M",
        "predictor.transformer_cross_attention_layers.{d}.norm.weight": "M",
        "predictor.transformer_cross_attention_layers.{d}.norm.bias": "M",
        "predictor.transformer_ffn_layers.{d}.linear1.weight": "F2, M",
        "predictor.transformer_ffn_layers.{d}.linear1.bias": "F2",
        "predictor.transformer_ffn_layers.{d}.linear2.weight": "M, F2",
        "predictor.transformer_ffn_layers.{d}.linear2.bias": "M",
        "predictor.transformer_ffn_layers.{d}.norm.weight": "M",
        "predictor.transformer_ffn_layers.{d}.norm.bias": "M",
        "predictor.decoder_norm.weight": "M",
        "predictor.decoder_norm.bias": "M",
        "predictor.query_feat.weight": "NQ, M",
        "predictor.query_embed.weight": "NQ, M",
        "predictor.SEG_query_embed.weight": "NQ+1, M",
        "predictor.new_query_embed.weight": "1, M",
        "predictor.level_embed.weight": "3, M",
        "predictor.mask_embed.layers.0.weight": "M, M",
        "predictor.mask_embed.layers.0.bias": "M",
        "predictor.mask_embed.layers.1.weight": "M, M",
        "predictor.mask_embed.layers.1.bias": "M",
        "predictor.mask_embed.layers.2.weight": "MK, M",
        "predictor.mask_embed.layers.2.bias": "MK",
        "predictor.SEG_proj.layers.0.weight": "M, M",
        "predictor.SEG_proj.layers.0.bias": "M",
        "predictor.SEG_proj.layers.1.weight": "M, M",
        "predictor.SEG_proj.layers.1.bias": "M",
        "predictor.CLASS_proj.layers.0.weight": "M, M",
        "predictor.CLASS_proj.layers.0.bias": "M",
        "predictor.CLASS_proj.layers.1.weight": "M, M",
        "predictor.CLASS_proj.layers.1.bias": "M",
    },
}

# Layer counts and dimensions of the published checkpoints (Phi-1.5 + swin_base_384 + the
# maskformer2 YAML: 6 encoder layers, DEC_LAYERS 10 - 1, 100 queries, D_Projector depth 1).
PUBLISHED_CONFIG = {
    "model_type": "llava_phi",
    "transformers_version": "4.36.2",
    "torch_dtype": "bfloat16",
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 24,
    "num_attention_heads": 32,
    "vocab_size": 50297,
    "partial_rotary_factor": 0.5,
    "rope_theta": 10000.0,
    "layer_norm_eps": 1e-5,
    "hidden_act": "gelu_new",
    "mm_projector_type": "SparseConv_1",
    "swin_type": "base",
    "projector_outdim": 2048,
    "mm_input_embeds": 1024,
}
PUBLISHED_DIMS = {
    "n": 24, "heads": 32, "depths": (2, 2, 18, 2), "e": 6, "d": 9,
    "D": 2048, "V": 50297, "I": 8192, "C": (128, 256, 512, 1024), "NH": (4, 8, 16, 32), "W": 12,
    "S1": 16, "S2": 8, "P": 512, "PI": 512, "FF": 512, "M": 256, "MK": 256, "NQ": 100,
    "F1": 1024, "F2": 2048, "OFF": 8 * 3 * 4 * 2, "ATT": 8 * 3 * 4,
}  # fmt: skip

TINY_CONFIG = {
    "model_type": "llava_phi",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "vocab_size": 80,
    "mm_projector_type": "SparseConv_1",
    "swin_type": "base",
    "projector_outdim": 64,
    "mm_input_embeds": 128,
    "geoseg": {
        "image_size": 128,
        "swin": {"embed_dim": 16, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 4, 8], "window_size": 4},
        "mask_decoder": {
            "conv_dim": 32, "mask_dim": 32, "hidden_dim": 32, "nheads": 4, "enc_layers": 2,
            "enc_ffn": 48, "dec_layers": 4, "dec_ffn": 40, "num_queries": 5,
        },
        "description_projector": {"dim": 24, "heads": 2, "dim_head": 8, "ff_mult": 1},
    },
}  # fmt: skip
TINY_DIMS = {
    "n": 2, "heads": 4, "depths": (2, 2, 2, 2), "e": 2, "d": 4,
    "D": 64, "V": 80, "I": 128, "C": (16, 32, 64, 128), "NH": (1, 2, 4, 8), "W": 4,
    "S1": 2, "S2": 1, "P": 24, "PI": 16, "FF": 24, "M": 32, "MK": 32, "NQ": 5,
    "F1": 48, "F2": 40, "OFF": 4 * 3 * 4 * 2, "ATT": 4 * 3 * 4,
}  # fmt: skip


def expand_inventory(dims: dict) -> dict[str, tuple[int, ...]]:
    """Every key of the layout with its shape, for the given layer counts and dimensions."""
    out: dict[str, tuple[int, ...]] = {}
    ranges = {
        "n": [{"n": i} for i in range(dims["n"])],
        "s": [{"s": s, "b": b} for s in range(4) for b in range(dims["depths"][s])],
        "t": [{"t": t} for t in range(3)],
        "k": [{"k": k} for k in range(4)],
        "l": [{"l": lv} for lv in range(3)],
        "e": [{"e": i} for i in range(dims["e"])],
        "d": [{"d": i} for i in range(dims["d"])],
    }
    for section in INVENTORY.values():
        for template, shape in section.items():
            placeholder = next((p for p in ranges if "{" + p + "}" in template), None)
            for binding in ranges[placeholder] if placeholder else [{}]:
                key = template.format(**binding)
                out[key] = tuple(int(v) for v in eval(f"({shape},)", {}, {**dims, **binding}))
    return out


FUSED = ".self_attn.query_key_value."
SPLIT = ("q_proj", "k_proj", "v_proj")


def split_layout(layout: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The second accepted layout: each fused projection as q_proj / k_proj / v_proj (a third of
    its rows each), every other key unchanged."""
    out = {}
    for key, shape in layout.items():
        if FUSED not in key:
            out[key] = shape
            continue
        prefix, kind = key.split(FUSED)
        for name in SPLIT:
            out[f"{prefix}.self_attn.{name}.{kind}"] = (shape[0] // 3, *shape[1:])
    return out


def split_state(state: dict[str, torch.Tensor], heads: int) -> dict[str, torch.Tensor]:
    """`split_layout` on tensors: slot s of head h, dim d is fused row (h * 3 + s) * head_dim + d
    (transformers 4.36.2 views the fused output as [batch, seq, heads, 3, head_dim])."""
    out = {}
    for key, tensor in state.items():
        if FUSED not in key:
            out[key] = tensor
            continue
        prefix, kind = key.split(FUSED)
        head_dim = tensor.shape[0] // (3 * heads)
        for s, name in enumerate(SPLIT):
            rows = [(h * 3 + s) * head_dim + d for h in range(heads) for d in range(head_dim)]
            out[f"{prefix}.self_attn.{name}.{kind}"] = tensor[rows].clone()
    return out


# ------------------------------------------------------------------ tiny checkpoint helpers


def write_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(dict.fromkeys(WORDS))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(str(path))
    assert len(vocab) + 2 <= TINY_CONFIG["vocab_size"]  # room for the added [PAD] and [SEG]


def random_state(dims: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in expand_inventory(dims).items():
        if key.endswith("relative_position_index"):
            state[key] = torch.randint(0, (2 * dims["W"] - 1) ** 2, shape, generator=g)
        elif key.endswith(("norm.weight", "norm1.weight", "norm2.weight", "layernorm.weight")):
            state[key] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            state[key] = 0.2 * torch.randn(shape, generator=g)
    return state


def write_checkpoint(
    path: Path,
    state: dict[str, torch.Tensor],
    config: dict | None = None,
    shards: int = 1,
    dtype: torch.dtype | None = None,
) -> Path:
    """A checkpoint directory; floating tensors cast to `dtype` when given (published: bf16)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config or TINY_CONFIG))
    write_tokenizer(path)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    if shards == 1:
        save_file(state, str(path / "model.safetensors"))
        return path
    keys = sorted(state)
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k].contiguous() for k in keys[i::shards]}
        save_file(part, str(path / name))
        weight_map.update(dict.fromkeys(part, name))
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return path


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    return random_state(TINY_DIMS)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_state) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("segearth") / "SegEarth-R1-tiny", tiny_state)


@pytest.fixture(scope="module")
def segmenter(tiny_dir) -> SegEarthSegmenter:
    # Gates at zero: random weights give arbitrary masks; gating is tested on its own below.
    return load_segearth_segmenter(tiny_dir, device="cpu", gate_min_score=0.0, gate_min_area=0)


def tiles(b: int = 2, h: int = 128, w: int = 128, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ layout
def test_published_inventory_has_935_tensors():
    published = expand_inventory(PUBLISHED_DIMS)
    buffers = [k for k in published if k.endswith("relative_position_index")]  # int64 on disk
    assert len(published) == 935  # 244 Phi + 357 Swin + 10 + 22 + 119 + 183
    assert (len(published) - len(buffers), len(buffers)) == (911, 24)
    fused = {k: s for k, s in published.items() if "query_key_value" in k}
    assert len(fused) == 48 and fused["model.layers.23.self_attn.query_key_value.weight"] == (
        6144,
        2048,
    )
    assert len(split_layout(published)) == 1031  # 48 fused tensors become 144


def test_geoseg_loader_takes_every_published_tensor_at_full_size(monkeypatch):
    """geoseg's own loader (renames, fused q/k/v split, shape checks) on the published inventory
    at full size: shape-only tensors on the meta device stand in for the 3 GB of weights."""
    published = expand_inventory(PUBLISHED_DIMS)
    with torch.device("meta"):
        net = SegEarthR1(parse_config(PUBLISHED_CONFIG))
        tensors = [
            (key, torch.empty(shape, dtype=torch.int64 if key.endswith("index") else torch.bfloat16))
            for key, shape in published.items()
        ]
    monkeypatch.setattr(checkpoint, "iter_tensors", lambda files, pickled, device: iter(tensors))
    # raises ModelLoadError listing any missing, unexpected, misshapen or twice-given tensor
    checkpoint.load_weights(net, [], False, torch.device("meta"), torch.bfloat16, Path("SegEarth-R1"))
    got = net.state_dict()
    assert all(got[k].dtype == torch.bfloat16 for k in got if got[k].is_floating_point())
    for name in ("q_proj", "k_proj", "v_proj"):  # each third of the fused [6144, 2048] rows
        assert tuple(got[f"model.layers.23.self_attn.{name}.weight"].shape) == (2048, 2048)


def test_full_size_module_tree_has_the_split_layout():
    with torch.device("meta"):
        net = SegEarthR1(parse_config(PUBLISHED_CONFIG))
    got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    want = split_layout(expand_inventory(PUBLISHED_DIMS))
    assert sorted(set(want) - set(got)) == []
    assert sorted(set(got) - set(want)) == []
    assert {k: s for k, s in got.items() if want[k] != s} == {}
    # ~1.6 B parameters, 64 visual tokens from a 1024 px tile
    assert 1.5e9 < sum(p.numel() for p in net.parameters()) < 1.7e9
    assert parse_config(PUBLISHED_CONFIG).num_visual_tokens == 64


def test_tiny_checkpoint_loads_every_tensor_exactly(segmenter, tiny_state):
    got = segmenter.net.state_dict()
    want = split_state(tiny_state, TINY_DIMS["heads"])
    assert set(got) == set(want)
    for key, tensor in want.items():
        assert torch.equal(got[key], tensor.to(got[key].dtype)), key
    info = segmenter.info
    assert info.tile_size == 128 and info.overlap == 128
    assert info.license == "Apache-2.0" and len(info.weights_sha256) == 64
    assert info.extra["task"] == "referring"


def test_sharded_checkpoint_loads(tmp_path, tiny_state):
    path = write_checkpoint(tmp_path / "sharded", tiny_state, shards=3)
    seg = load_segearth_segmenter(path, device="cpu")
    key = "predictor.mask_embed.layers.2.weight"
    assert torch.equal(seg.net.state_dict()[key], tiny_state[key])


def test_split_layout_still_loads_and_gives_the_same_model(tmp_path, tiny_state, segmenter):
    split = split_state(tiny_state, TINY_DIMS["heads"])
    seg = load_segearth_segmenter(
        write_checkpoint(tmp_path / "split", split),
        device="cpu",
        gate_min_score=0.0,
        gate_min_area=0,
    )
    got = seg.net.state_dict()
    assert all(torch.equal(got[k], v) for k, v in split.items())
    encoded = seg.encode(tiles(1))
    assert torch.equal(
        seg.logits(encoded, ["red roofs"]),
        segmenter.logits(segmenter.encode(tiles(1)), ["red roofs"]),
    )


def test_bf16_published_checkpoint_loads(tmp_path, tiny_state):
    seg = load_segearth_segmenter(
        write_checkpoint(tmp_path / "bf16", tiny_state, dtype=torch.bfloat16), device="cpu"
    )
    key = "model.layers.1.self_attn.k_proj.bias"
    want = split_state(tiny_state, TINY_DIMS["heads"])[key].to(torch.bfloat16).float()
    assert seg.net.state_dict()[key].dtype == torch.float32 and torch.equal(
        seg.net.state_dict()[key], want
    )
    index = "model.vision_tower.layers.0.blocks.0.attn.relative_position_index"
    assert seg.net.state_dict()[index].dtype == torch.int64


def attention_4362(
    x, qkv_w, qkv_b, dense_w, dense_b, heads, rotary_dim, theta=10000.0, stacked=False
):
    """transformers 4.36.2 PhiAttention.forward (eager, causal, no cache), written out: the fused
    output viewed as [batch, seq, heads, 3, head_dim] (`stacked`: the wrong [3, heads, head_dim]),
    rotary on the first `rotary_dim` dims of each head (rotate_half), scores / sqrt(head_dim)."""
    b, n, hidden = x.shape
    hd = hidden // heads
    fused = x @ qkv_w.T + qkv_b
    fused = (
        fused.view(b, n, 3, heads, hd).transpose(2, 3)
        if stacked
        else fused.view(b, n, heads, 3, hd)
    )
    q, k, v = (fused[..., s, :].transpose(1, 2) for s in range(3))  # b x heads x n x hd
    inv_freq = 1.0 / theta ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim)
    angles = torch.outer(torch.arange(n).float(), inv_freq)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()

    def rope(t):
        rot, rest = t[..., :rotary_dim], t[..., rotary_dim:]
        r1, r2 = rot.chunk(2, -1)
        return torch.cat([rot * cos + torch.cat([-r2, r1], -1) * sin, rest], -1)

    scores = rope(q) @ rope(k).transpose(2, 3) / math.sqrt(hd)
    scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, hidden)
    return out @ dense_w.T + dense_b


def test_converted_attention_matches_the_fused_4362_attention(segmenter, tiny_state):
    """Random fused weights, converted at load time; a wrong de-interleave would fail this."""
    phi = segmenter.net.model
    # 4.36.2 PhiConfig default partial_rotary_factor 0.5: 8 of the 16 dims per head rotate.
    rotary_dim = int(
        TINY_CONFIG.get("partial_rotary_factor", 0.5) * (TINY_DIMS["D"] // TINY_DIMS["heads"])
    )
    x = torch.randn(2, 7, TINY_DIMS["D"], generator=torch.Generator().manual_seed(3))
    positions = torch.arange(7)[None].expand(2, -1)
    for layer in range(TINY_DIMS["n"]):
        p = f"model.layers.{layer}.self_attn."
        args = (tiny_state[p + "query_key_value.weight"], tiny_state[p + "query_key_value.bias"],
                tiny_state[p + "dense.weight"], tiny_state[p + "dense.bias"], TINY_DIMS["heads"], rotary_dim)  # fmt: skip
        with torch.no_grad():
            got, _ = phi.layers[layer].self_attn(
                x, position_embeddings=phi.rotary_emb(x, positions), attention_mask=None
            )
        want = attention_4362(x, *args)
        assert want.abs().max() > 0.1
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert (
            got - attention_4362(x, *args, stacked=True)
        ).abs().max() > 1e-2  # the test can tell


def test_converted_phi_matches_the_4362_forward(segmenter, tiny_state):
    """The whole Phi of the tiny checkpoint against 4.36.2's PhiModel written out: parallel block
    x + attn(LN(x)) + MLP(LN(x)) with gelu_new, LayerNorm eps 1e-5, then final_layernorm."""
    ids = torch.tensor([[3, 9, 11, 13, 2, 40, 7, 5]])
    s = tiny_state
    x = s["model.embed_tokens.weight"][ids]
    head_dim = TINY_DIMS["D"] // TINY_DIMS["heads"]
    for layer in range(TINY_DIMS["n"]):
        p = f"model.layers.{layer}."
        h = torch.nn.functional.layer_norm(
            x,
            (TINY_DIMS["D"],),
            s[p + "input_layernorm.weight"],
            s[p + "input_layernorm.bias"],
            1e-5,
        )
        attn = attention_4362(h, s[p + "self_attn.query_key_value.weight"], s[p + "self_attn.query_key_value.bias"],
                              s[p + "self_attn.dense.weight"], s[p + "self_attn.dense.bias"], TINY_DIMS["heads"], head_dim // 2)  # fmt: skip
        mlp = torch.nn.functional.gelu(
            h @ s[p + "mlp.fc1.weight"].T + s[p + "mlp.fc1.bias"], approximate="tanh"
        )
        x = x + attn + mlp @ s[p + "mlp.fc2.weight"].T + s[p + "mlp.fc2.bias"]
    want = torch.nn.functional.layer_norm(
        x,
        (TINY_DIMS["D"],),
        s["model.final_layernorm.weight"],
        s["model.final_layernorm.bias"],
        1e-5,
    )
    with torch.no_grad():
        got = segmenter.net.model(input_ids=ids, use_cache=False).last_hidden_state
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_forward_gives_logits_of_the_right_shape(segmenter):
    encoded = segmenter.encode(tiles(2))
    assert encoded.features.visual_tokens.shape == (2, 1, 64)  # (128 / 128)^2 tokens of D
    assert encoded.features.mask_features.shape == (2, 32, 32, 32)  # stride 4
    logits = segmenter.logits(encoded, ["red roofs", "the road"])
    assert logits.shape == (2, 2, 128, 128)
    assert torch.isfinite(logits).all()
    assert not torch.equal(logits[:, 0], logits[:, 1])  # the query matters


# ------------------------------------------------------------------ loading errors
def test_missing_tensor_is_a_clear_error(tmp_path, tiny_state):
    state = dict(tiny_state)
    del state["predictor.decoder_norm.weight"]
    path = write_checkpoint(tmp_path / "missing", state)
    with pytest.raises(ModelLoadError) as err:
        load_segearth_segmenter(path, device="cpu")
    msg = str(err.value)
    assert "1 missing (predictor.decoder_norm.weight)" in msg and str(path) in msg
    assert "\n" not in msg


def test_misshapen_and_unexpected_tensors_are_listed(tmp_path, tiny_state):
    state = dict(tiny_state)
    state["model.mm_projector.norm1.weight"] = torch.ones(64, 16, 16)
    state["model.layers.1.self_attn.q_layernorm.weight"] = torch.ones(16)
    for i in range(8):
        state[f"extra.head.{i}.weight"] = torch.ones(2)
    path = write_checkpoint(tmp_path / "misshapen", state)
    with pytest.raises(ModelLoadError) as err:
        load_segearth_segmenter(path, device="cpu")
    msg = str(err.value)
    assert "1 misshapen (model.mm_projector.norm1.weight (64, 16, 16) vs (64, 2, 2))" in msg
    assert "9 unexpected (" in msg and "(+4 more)" in msg  # long lists are truncated with a count
    assert "missing" not in msg  # a misshapen key is not also reported missing


def test_fused_projection_of_the_wrong_size_is_misshapen_not_missing(tmp_path, tiny_state):
    state = dict(tiny_state)
    state["model.layers.0.self_attn.query_key_value.weight"] = torch.ones(96, 64)
    path = write_checkpoint(tmp_path / "fused-misshapen", state)
    with pytest.raises(ModelLoadError) as err:
        load_segearth_segmenter(path, device="cpu")
    msg = str(err.value)
    assert (
        "1 misshapen (model.layers.0.self_attn.query_key_value.weight (96, 64) vs (192, 64))" in msg
    )
    assert "missing" not in msg and "unexpected" not in msg


def test_fused_and_split_projection_of_one_layer_is_an_error(tmp_path, tiny_state):
    state = dict(tiny_state)
    split = split_state(tiny_state, TINY_DIMS["heads"])
    state["model.layers.1.self_attn.q_proj.weight"] = split[
        "model.layers.1.self_attn.q_proj.weight"
    ]
    with pytest.raises(
        ModelLoadError, match=r"1 given twice \(model\.layers\.1\.self_attn\.q_proj\.weight\)"
    ):
        load_segearth_segmenter(write_checkpoint(tmp_path / "both", state), device="cpu")


def test_fused_projection_elsewhere_is_unexpected(tmp_path, tiny_state):
    state = dict(tiny_state)
    state["predictor.transformer_self_attention_layers.0.self_attn.query_key_value.weight"] = (
        torch.ones(96, 32)
    )
    state["model.layers.7.self_attn.query_key_value.bias"] = torch.ones(192)  # no layer 7
    with pytest.raises(ModelLoadError) as err:
        load_segearth_segmenter(write_checkpoint(tmp_path / "elsewhere", state), device="cpu")
    assert "2 unexpected (model.layers.7.self_attn.query_key_value.bias, predictor." in str(
        err.value
    )


def test_pickled_weights_need_the_flag(tmp_path, tiny_state):
    path = tmp_path / "pickled"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(TINY_CONFIG))
    write_tokenizer(path)
    torch.save(tiny_state, path / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="--allow-pickle"):
        load_segearth_segmenter(path, device="cpu")
    seg = load_segearth_segmenter(path, device="cpu", allow_pickle=True)
    assert torch.equal(seg.net.state_dict()["seg_query"], tiny_state["seg_query"])


def test_registry_dispatches_llava_phi(tiny_dir):
    from geoseg.models.registry import load_segmenter

    seg = load_segmenter(str(tiny_dir), device="cpu")
    assert isinstance(seg, SegEarthSegmenter)


# ------------------------------------------------------------------ prompt
def test_prompt_follows_the_reference_template(segmenter):
    before, after = prompt_chunks("referring")
    assert before.startswith("[INST] <<SYS>>\nYou are a helpful language and vision assistant. ")
    assert before.endswith("<</SYS>>\n\nThis is an image ")
    assert (
        after == ", Please doing Referring Segmentation according to the following instruction:\n"
    )
    assert "Reasoning Segmentation" in prompt_chunks("reasoning")[1]
    # [SEG] was not in the test tokenizer: added as the reference does, and ends every instruction
    tok = segmenter.tokenizer
    assert SEG_TOKEN in tok.get_vocab() and tok.pad_token is not None
    assert segmenter.prompt.seg_id < TINY_CONFIG["vocab_size"]


# ------------------------------------------------------------------ pre/post-processing
@pytest.mark.parametrize("h,w", [(128, 80), (70, 128), (128, 128), (128, 3), (1, 128)])
def test_preprocess_unpad_round_trip_is_pixel_exact(h, w):
    images = torch.randint(0, 256, (2, 3, h, w)).float() / 255
    x, pad = preprocess(images, 128)
    assert x.shape == (2, 3, 128, 128)
    assert (pad.top, pad.left) == ((128 - h) // 2, (128 - w) // 2)  # centred
    mean = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
    raw = x * std + mean  # back on the 0-255 scale
    back = unpad(raw, pad)
    assert back.shape == (2, 3, h, w)
    assert torch.equal(torch.round(back), torch.round(images * 255))
    # the padding is 0 on the 0-255 scale, i.e. -mean/std after normalisation
    if pad.top:
        assert torch.allclose(x[:, :, 0, :], (-mean / std).view(1, 3, 1).expand(2, 3, 128))


def test_longest_side_resize_matches_the_reference_rule():
    x, pad = preprocess(torch.rand(1, 3, 200, 90), 128)
    # longest side -> 128, other side int(90 * 128 / 200) = 57, centred: left = (128 - 57) // 2
    assert (pad.resized_height, pad.resized_width, pad.top, pad.left) == (128, 57, 0, 35)
    logits = torch.zeros(1, 1, 32, 32)  # stride-4 logits come back at the tile's size
    assert unpad(logits, pad).shape == (1, 1, 200, 90)
    assert pad == PadInfo(200, 90, 128, 57, 0, 35, 128)


# ------------------------------------------------------------------ predict
def test_predict_reuses_image_features_across_queries(segmenter):
    calls = []
    hook = segmenter.net.model.vision_tower.register_forward_hook(lambda *a: calls.append(1))
    decoder_calls = []
    hook2 = segmenter.net.pixel_decoder.register_forward_hook(lambda *a: decoder_calls.append(1))
    try:
        pred = segmenter.predict(tiles(2, 128, 96), ["red roofs", "the road", "water"])
    finally:
        hook.remove()
        hook2.remove()
    assert len(calls) == 1 and len(decoder_calls) == 1  # one image pass for 3 queries
    p = pred.probabilities
    assert p.shape == (2, 3, 128, 96) and p.dtype == torch.float32
    assert p.min() >= 0 and p.max() <= 1


def test_predict_is_deterministic(segmenter):
    images = tiles(1, seed=3)
    a = segmenter.predict(images, ["blue car"]).probabilities
    b = segmenter.predict(images, ["blue car"]).probabilities
    assert torch.equal(a, b)


def test_batching_does_not_change_a_tile_result(segmenter):
    images = tiles(3, seed=4)
    together = segmenter.predict(images, ["new building"]).probabilities
    alone = segmenter.predict(images[1:2], ["new building"]).probabilities
    assert torch.allclose(together[1:2], alone, atol=1e-5)


def test_gate_keeps_confident_masks_and_empties_weak_or_tiny_ones():
    logits = torch.full((3, 64, 64), -8.0)
    logits[0, 10:40, 10:40] = 6.0  # confident, large
    logits[1, 10:40, 10:40] = 0.2  # barely positive: mean sigmoid ~0.55
    logits[2, 5:8, 5:8] = 6.0  # confident but 9 px
    p = gate(logits, min_score=0.7, min_area=64)
    assert p[0].max() > 0.99 and p[0, 0, 0] > 0  # kept as probabilities, not a binary mask
    assert p[1].max() == 0 and p[2].max() == 0
    assert gate(logits, min_score=0.5, min_area=4)[1].max() > 0


def test_gate_thresholds_come_from_config(tmp_path, tiny_state):
    config = json.loads(json.dumps(TINY_CONFIG))
    config["geoseg"].update(gate_min_score=0.9, gate_min_area=500, task="reasoning")
    seg = load_segearth_segmenter(
        write_checkpoint(tmp_path / "cfg", tiny_state, config), device="cpu"
    )
    assert seg.info.extra["gate_min_score"] == 0.9 and seg.info.extra["gate_min_area"] == 500
    assert seg.info.extra["task"] == "reasoning"
    assert (
        seg.prompt.after_image
        != load_segearth_segmenter(
            write_checkpoint(tmp_path / "ref", tiny_state), device="cpu"
        ).prompt.after_image
    )


# ------------------------------------------------------------------ change
def test_combine_ignores_a_small_shift_and_finds_a_new_object():
    before = torch.zeros(1, 1, 64, 64)
    after = torch.zeros(1, 1, 64, 64)
    before[..., 10:20, 10:20] = 1
    after[..., 12:22, 11:21] = 1  # same object, misregistered by 2 px
    after[..., 40:50, 40:50] = 1  # a new object
    appeared = combine(after, before, "appeared", radius=3)
    assert appeared[..., 12:22, 11:21].max() == 0
    assert appeared[..., 40:50, 40:50].min() == 1
    disappeared = combine(after, before, "disappeared", radius=3)
    assert disappeared.max() == 0


def test_feature_score_drops_regions_whose_features_did_not_change():
    pad = PadInfo(64, 64, 64, 64, 0, 0, 64)
    change = torch.zeros(1, 1, 64, 64)
    change[..., 4:20, 4:20] = 0.9  # region A: same features at both dates (lighting change)
    change[..., 40:60, 40:60] = 0.9  # region B: features turned around
    g = torch.Generator().manual_seed(0)
    before = torch.randn(1, 8, 16, 16, generator=g)
    after = before.clone() * 1.7  # brighter, same direction: cos = 1
    after[..., 10:15, 10:15] = -before[..., 10:15, 10:15]  # region B's cells
    out = suppress_unchanged(change, after, before, pad, min_angle_deg=25)
    assert out[..., 4:20, 4:20].max() == 0
    assert torch.equal(out[..., 40:60, 40:60], change[..., 40:60, 40:60])
    labels = torch.zeros(64, 64, dtype=torch.long)
    labels[4:20, 4:20], labels[40:60, 40:60] = 1, 2
    scores = region_change_scores(labels, after[0], before[0], pad)
    assert scores[0] == pytest.approx(-1.0, abs=1e-5) and scores[1] == pytest.approx(1.0, abs=1e-5)
    assert -math.cos(math.radians(25)) < -0.9


def test_predict_change_encodes_both_dates_in_one_pass(segmenter):
    calls = []
    hook = segmenter.net.model.vision_tower.register_forward_hook(
        lambda m, i, o: calls.append(i[0].shape[0])
    )
    try:
        pred = segmenter.predict_change(
            tiles(2, seed=5), tiles(2, seed=6), ["new building", "road"]
        )
    finally:
        hook.remove()
    assert calls == [4]  # after and before together, once for both queries
    assert pred.probabilities.shape == (2, 2, 128, 128)
    assert pred.probabilities.min() >= 0 and pred.probabilities.max() <= 1
    same = segmenter.predict_change(tiles(1, seed=5), tiles(1, seed=5), ["road", "road"],
                                    direction=["appeared", "disappeared"])
    assert same.probabilities.max() <= 0.5  # identical dates: min(p, 1 - p) never passes 0.5, either way
    dense = segmenter.feature_change(tiles(1, seed=5), tiles(1, seed=6))
    assert dense.shape == (1, 128, 128) and dense.min() >= 0 and dense.max() <= 1
