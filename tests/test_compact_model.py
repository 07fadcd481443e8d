"""The compact model on tiny tensors: shapes, gradients, save/load, the Segmenter contract."""

import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from geoseg.models.base import Segmenter
from geoseg.models.compact import CompactModel, CompactSegmenter, TextFeatures, tiny_config
from geoseg.models.compact.segmenter import model_info
from geoseg.provenance import sha256_file
from geoseg.train.losses import LossWeights, compact_loss


def _text(m: int, t: int = 5, dim: int = 384, seed: int = 0) -> TextFeatures:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(m, t, dtype=torch.bool)
    mask[0, -2:] = False  # one query shorter than the others: padding must be ignored
    return TextFeatures(torch.randn(m, t, dim, generator=g), mask)


class FakeText:
    """Stands in for MiniLM: a fixed random embedding per string (no 90 MB model in unit tests)."""

    def encode(self, queries):
        feats = [_text(1, seed=sum(map(ord, q))) for q in queries]
        return TextFeatures(torch.cat([f.tokens for f in feats]), torch.ones(len(queries), 5, dtype=torch.bool))


@pytest.mark.parametrize("change", [False, True])
def test_forward_backward_shapes(change):
    torch.manual_seed(0)
    model = CompactModel(tiny_config(change)).train()
    images = torch.rand(2, 3, 64, 96)
    before = torch.rand(2, 3, 64, 96) if change else None
    index = torch.tensor([0, 0, 1])
    out = model(images, _text(3), index, before=before)
    assert out.mask_logits.shape == (3, 64, 96)
    assert out.exist_logits.shape == (3,)
    assert out.relevance.shape == (3, 4, 6)
    masks = torch.zeros(3, 64, 96)
    masks[0, 10:30, 20:40] = 1
    change_masks = masks[:2] if change else None
    assert (out.change_logits is not None) == change
    loss, parts = compact_loss(out, masks, LossWeights(), change_masks)
    loss.backward()
    assert torch.isfinite(loss)
    assert set(parts) >= {"bce", "dice", "exist", "contrastive"}
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_change_model_needs_before():
    model = CompactModel(tiny_config(True)).eval()
    with pytest.raises(ValueError):
        model.encode_images(torch.rand(1, 3, 64, 64))


@pytest.mark.parametrize("change", [False, True])
def test_save_load_round_trip_is_bit_exact(tmp_path, change):
    torch.manual_seed(1)
    model = CompactModel(tiny_config(change))
    model.train()
    model(torch.rand(2, 3, 64, 64), _text(2), torch.arange(2), before=torch.rand(2, 3, 64, 64) if change else None)
    model.eval()  # BN running stats moved away from their init: they must round-trip too
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == ("geoseg_compact_change" if change else "geoseg_compact")
    loaded = CompactModel.from_pretrained(tmp_path)
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)
    x, b = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        o1 = model(x, _text(1), torch.zeros(1, dtype=torch.long), before=b if change else None)
        o2 = loaded(x, _text(1), torch.zeros(1, dtype=torch.long), before=b if change else None)
    assert torch.equal(o1.mask_logits, o2.mask_logits)


def test_segmenter_contract_multi_query_and_determinism(tmp_path):
    torch.manual_seed(2)
    model = CompactModel(tiny_config())
    model.save_pretrained(tmp_path)
    info = model_info(model.config, "compact", sha256_file(tmp_path / "model.safetensors"))
    seg = CompactSegmenter(CompactModel.from_pretrained(tmp_path), FakeText(), info, torch.device("cpu"))
    assert isinstance(seg, Segmenter)
    images = torch.rand(2, 3, 64, 64)
    p1 = seg.predict(images, ["buildings", "roads", "water"]).probabilities
    p2 = seg.predict(images, ["buildings", "roads", "water"]).probabilities
    assert p1.shape == (2, 3, 64, 64)
    assert p1.min() >= 0 and p1.max() <= 1
    assert torch.equal(p1, p2)
    # a query's answer does not depend on which other queries share the batch
    single = seg.predict(images, ["roads"]).probabilities
    torch.testing.assert_close(single[:, 0], p1[:, 1], atol=1e-5, rtol=0)
    assert len(info.weights_sha256) == 64


def test_segmenter_encodes_each_image_once(tmp_path):
    model = CompactModel(tiny_config())
    model.save_pretrained(tmp_path)
    seg = CompactSegmenter(CompactModel.from_pretrained(tmp_path), FakeText(), model_info(model.config, "compact", None), torch.device("cpu"))
    calls = []
    seg.model.encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    seg.predict(torch.rand(2, 3, 64, 64), ["a", "b", "c", "d"])
    assert calls == [2]


def test_a_multi_scale_read_is_the_mean_of_its_resampled_reads(tmp_path):
    """inference_scales: the tiles are also read resampled (each side to the nearest multiple of
    32) and the probabilities, resampled back, are averaged. The scales live in config.json."""
    torch.manual_seed(3)
    CompactModel(replace(tiny_config(), inference_scales=(1.0, 0.5))).save_pretrained(tmp_path)
    loaded = CompactModel.from_pretrained(tmp_path)
    assert loaded.config.inference_scales == (1.0, 0.5)
    info = model_info(loaded.config, "compact", None)
    assert info.to_dict()["extra"]["inference_scales"] == [1.0, 0.5]  # recorded in provenance
    seg = CompactSegmenter(loaded, FakeText(), info, torch.device("cpu"))
    calls = []
    seg.model.encoder.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape[-2:])))
    images = torch.rand(2, 3, 128, 96)
    averaged = seg.predict(images, ["a", "b"]).probabilities
    assert averaged.shape == (2, 2, 128, 96)
    assert calls == [(128, 96), (64, 64)]  # 96 x 0.5 = 48 px rounds to 64, not 32

    seg.model.config.inference_scales = (1.0,)
    full = seg.predict(images, ["a", "b"]).probabilities
    small = F.interpolate(images, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
    half = F.interpolate(seg.predict(small, ["a", "b"]).probabilities, size=(128, 96), mode="bilinear",
                         align_corners=False)
    torch.testing.assert_close(averaged, (full + half) / 2, atol=1e-6, rtol=0)


def test_a_checkpoint_without_reads_is_refused_at_load(tmp_path):
    from geoseg.errors import ModelLoadError
    from geoseg.models.compact.segmenter import load_compact_segmenter

    CompactModel(tiny_config()).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "inference_scales": []}))
    with pytest.raises(ModelLoadError, match="inference_scales"):
        load_compact_segmenter(tmp_path)


@pytest.mark.parametrize("change", [False, True])
def test_folding_batch_norms_keeps_the_outputs(change):
    torch.manual_seed(0)
    model = CompactModel(tiny_config(change=change))
    for m in model.modules():  # non-trivial statistics, as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    model.eval()
    images = torch.rand(2, 3, 64, 96)
    before = torch.rand(2, 3, 64, 96) if change else None
    index = torch.tensor([0, 1, 1])
    with torch.no_grad():
        reference = model(images, _text(3), index, before)
        n = model.fold_batch_norms()
        folded = model(images, _text(3), index, before)
    assert n > 10
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(folded.mask_logits, reference.mask_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(folded.exist_logits, reference.exist_logits, atol=1e-4, rtol=1e-4)
