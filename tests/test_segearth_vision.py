"""SegEarth-R1's vision side on transformers' modules (Swin backbone, Mask2Former pixel decoder, sine
position embedding) against geoseg's former pure-PyTorch implementation of the reference.

`tests/data/segearth_vision_reference.safetensors` holds that implementation's outputs (float32,
one non-square 56 x 88 input, the small architecture below, weights from `published_weights`),
written by `reference_outputs` in this file at commit 61136da, whose swin.py and pixel_decoder.py
were independent re-implementations of D2SwinTransformer and MSDeformAttnPixelDecoder; that commit
also compared the two live (max abs diff 3.2e-6; tolerance 1e-5). Storing the outputs instead of
keeping ~400 lines of the old modules in tests/ keeps the check independent of the library without
a second copy of the architecture. The published-name state dict goes through the key map on the
way in and comes back unchanged.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from geoseg.models.segearth.config import MaskDecoderConfig, SwinConfig
from geoseg.models.segearth.vision import PixelDecoder, SwinBackbone, sine_position_embedding

REFERENCE = Path(__file__).parent / "data" / "segearth_vision_reference.safetensors"
# Window 4 at patch 4 on 56 x 88: res2 14 x 22 is padded to whole windows, res3 7 x 11 is odd
# (patch merging pads), res5 2 x 3 is smaller than one window (still shifted, with the mask).
SWIN = SwinConfig(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=4)
MASK = MaskDecoderConfig(
    conv_dim=32, mask_dim=32, hidden_dim=32, nheads=4, enc_layers=2, enc_ffn=48
)
IMAGE = (1, 3, 56, 88)
TOLERANCE = 1e-5


def published_weights(module: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float32 weights under the published names, drawn in sorted-key order."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, t in sorted(module.state_dict().items()):
        if not t.is_floating_point():
            out[key] = t.clone()  # relative_position_index: the real index
        elif "norm" in key and key.endswith("weight"):
            out[key] = 1 + 0.1 * torch.randn(t.shape, generator=g)
        else:
            out[key] = 0.2 * torch.randn(t.shape, generator=g)
    return out


def image() -> torch.Tensor:
    return torch.randn(IMAGE, generator=torch.Generator().manual_seed(1))


def library_outputs() -> dict[str, torch.Tensor]:
    swin = SwinBackbone(SWIN).eval()
    swin.load_state_dict(published_weights(swin), strict=True)
    decoder = PixelDecoder(MASK, SWIN.channels).eval()
    decoder.load_state_dict(published_weights(decoder, seed=1), strict=True)
    with torch.no_grad():
        levels = swin(image())
        mask_features, multi_scale = decoder(levels)
    out = {f"res{i + 2}": x for i, x in enumerate(levels)}
    out["mask_features"] = mask_features
    out.update({f"multi_scale{i}": x for i, x in enumerate(multi_scale)})
    out["sine"] = sine_position_embedding(multi_scale[1])
    return out


def test_library_modules_reproduce_the_reference_outputs():
    want = load_file(str(REFERENCE))
    got = library_outputs()
    assert set(got) == set(want)
    for key, ref in want.items():
        assert got[key].shape == ref.shape, key
        assert ref.std() > 0.01, key  # not a degenerate reference
        diff = (got[key] - ref).abs().max().item()
        assert diff <= TOLERANCE, f"{key}: max abs diff {diff}"


@pytest.mark.parametrize("cls", [SwinBackbone, PixelDecoder])
def test_state_dict_round_trips_the_published_names(cls):
    module = cls(SWIN) if cls is SwinBackbone else cls(MASK, SWIN.channels)
    state = published_weights(module, seed=3)
    module.load_state_dict(state, strict=True)
    back = module.state_dict()
    assert set(back) == set(state)
    for key, tensor in state.items():
        assert torch.equal(back[key], tensor), key
    # the library's own names underneath
    names = {n for n, _ in module.named_parameters()}
    if cls is SwinBackbone:
        assert "swin.encoder.layers.0.blocks.1.attention.q_proj.weight" in names
        assert "layers.0.blocks.1.attn.qkv.weight" in state
    else:
        assert "encoder.layers.0.fc1.weight" in names
        assert "transformer.encoder.layers.0.linear1.weight" in state


def test_swin_qkv_rows_are_stacked_q_k_v():
    """The published fused qkv is [Q; K; V] by rows (D2 Swin reshapes to [..., 3, heads, dim])."""
    swin = SwinBackbone(SWIN)
    state = published_weights(swin)
    key = "layers.1.blocks.0.attn.qkv.weight"
    swin.load_state_dict(state, strict=True)
    attention = swin.swin.encoder.layers[1].blocks[0].attention
    c = SWIN.channels[1]
    for i, proj in enumerate((attention.q_proj, attention.k_proj, attention.v_proj)):
        assert torch.equal(proj.weight, state[key][i * c : (i + 1) * c])


def test_relative_position_index_is_read_from_the_checkpoint_and_rebuilt_when_absent():
    swin = SwinBackbone(SWIN)
    state = published_weights(swin)
    key = "layers.0.blocks.0.attn.relative_position_index"
    w = SWIN.window_size
    for i in range(w * w):  # the index's definition
        for j in range(w * w):
            dy, dx = i // w - j // w, i % w - j % w
            assert state[key][i, j] == (dy + w - 1) * (2 * w - 1) + (dx + w - 1)
    state[key] = torch.flip(state[key], (0,))
    swin.load_state_dict(state, strict=True)
    assert torch.equal(swin.state_dict()[key], state[key])
    with torch.device("meta"):
        meta = SwinBackbone(SWIN)
    meta.reset_relative_position_index(torch.device("cpu"))
    assert torch.equal(meta.state_dict()[key], torch.flip(state[key], (0,)))


def test_deformable_sampling_reads_x_then_y_at_pixel_centres():
    from transformers.models.mask2former.modeling_mask2former import (
        multi_scale_deformable_attention,
    )

    h, w = 4, 6
    value = torch.arange(h * w, dtype=torch.float32).view(1, h * w, 1, 1)  # 1 head, 1 channel
    # location (x, y) of the centre of pixel column 2, row 1 -> value 1 * w + 2
    loc = torch.tensor([(2 + 0.5) / w, (1 + 0.5) / h]).view(1, 1, 1, 1, 1, 2)
    out = multi_scale_deformable_attention(value, [(h, w)], loc, torch.ones(1, 1, 1, 1, 1))
    assert out.item() == pytest.approx(1 * w + 2)


def test_sine_embedding_is_float32_then_cast():
    x = torch.zeros(1, 32, 64, 96, dtype=torch.bfloat16)
    pos = sine_position_embedding(x)
    assert pos.dtype == torch.bfloat16
    full = sine_position_embedding(x.float())
    assert torch.equal(pos, full.to(torch.bfloat16))
