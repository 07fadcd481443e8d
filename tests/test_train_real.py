"""Real-imagery training data (geoseg.train.real): val areas stay out, masks follow every crop,
wordings and absent targets, ChangeStar-style change pairs. Uses a small manifest the test writes."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from geoseg.train.config import train_config_from_dict
from geoseg.train.data import MixedSource, make_batch_source
from geoseg.train.queries import HELDOUT_WORDS
from geoseg.train.real import RealSet, RealVocabulary


def _write_source(root, name="toy", n_train=3, n_val=2):
    """Grey images with a white square 'building' and a black stripe 'road', both labelled; the
    val images have their building elsewhere, so a test can tell if one leaks into training."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    lines = []
    for i in range(n_train + n_val):
        split = "area-split:train" if i < n_train else "area-split:val"
        square = (slice(20, 60), slice(20, 60)) if split.endswith("train") else (slice(50, 90), slice(0, 40))
        img = np.full((96, 96, 3), 128, np.uint8)
        img[square] = 255
        img[:, 80:88] = 0
        Image.fromarray(img).save(root / "images" / f"{i}.png")
        building = np.zeros((96, 96), np.uint8)
        building[square] = 255
        road = np.zeros((96, 96), np.uint8)
        road[:, 80:88] = 255
        unlabelled = np.zeros((96, 96), np.uint8)
        unlabelled[:10] = 255
        for concept, mask in (("buildings", building), ("roads", road)):
            Image.fromarray(mask).save(root / "masks" / f"{i}_{concept}.png")
            lines.append({"image": f"images/{i}.png", "mask": f"masks/{i}_{concept}.png", "expression": concept,
                          "empty": False, "tags": [name, concept, split], "gsd": 0.3,
                          "ignore_mask": f"masks/{i}_unlabelled.png"})
        Image.fromarray(unlabelled).save(root / "masks" / f"{i}_unlabelled.png")
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return root / "manifest.jsonl"


@pytest.fixture
def manifest(tmp_path):
    return _write_source(tmp_path / "toy")


def _config(manifest, stage="segment", share=1.0):
    return train_config_from_dict({
        "stage": stage, "batch_size": 4, "pretrained_encoder": None,
        "data": {"tile": 64, "queries_per_image": 3, "real": [str(manifest)], "real_share": share,
                 "pool_scenes": 2, "scene_size": 96, "gsds": [0.5], "real_scale": [1.0, 1.4]},
    })


def test_val_lines_never_load(manifest):
    data = RealSet.load([manifest])
    assert len(data.images) == 3
    assert all(im.masks["buildings"][25, 25] for im in data.images)  # no val image
    assert set(data.images[0].masks) == {"buildings", "roads"}
    assert data.images[0].ignore is not None and data.images[0].ignore[:10].all()


def test_batches_keep_masks_on_their_objects_and_skip_unlabelled_pixels(manifest):
    source = make_batch_source(_config(manifest))
    words = RealVocabulary()
    for _ in range(5):
        batch = source.next_batch()
        assert batch.images.shape == (4, 3, 64, 64)
        assert batch.valid is not None and batch.valid.shape == batch.masks.shape
        for m, text in enumerate(batch.queries):
            assert not HELDOUT_WORDS & set(text.split()), text
            mask = batch.masks[m].bool()
            if not mask.any():
                continue
            # the mask lies on its object through scaling, rotation and jitter: buildings are
            # brighter than the grey ground, roads darker
            image = batch.images[batch.image_index[m]].mean(0)
            valid = batch.valid[m].bool()
            contrast = float(image[mask & valid].median() - image[~mask & valid].median())
            if text in words.concepts["buildings"]:
                assert contrast > 0.15, (text, contrast)
            else:
                assert text in words.concepts["roads"] and contrast < -0.15, (text, contrast)


def test_change_pairs_from_single_date_masks(manifest):
    source = make_batch_source(_config(manifest, stage="change"))
    batch = source.next_batch()
    assert batch.before is not None and batch.change_masks is not None
    assert batch.before.shape == batch.images.shape
    for m, text in enumerate(batch.queries):
        assert text in {w for ws in RealVocabulary().change.values() for w in ws}
        # a kind of change is part of the class-agnostic change of its pair
        b = int(batch.image_index[m])
        assert not (batch.masks[m].bool() & ~batch.change_masks[b].bool()).any()


def test_mixed_source_draws_both(manifest):
    source = make_batch_source(_config(manifest, share=0.5))
    assert isinstance(source, MixedSource)
    kinds = {source.next_batch().valid is None for _ in range(12)}
    assert kinds == {True, False}  # synthetic batches have no valid mask, real ones do


def test_mixed_within_batch_draws_each_image_from_a_source(manifest):
    """Each batch holds real and synthetic crops in the configured shares, each pair pointing at
    its own image."""
    config = _config(manifest, share=0.5)
    config.data.mix_within_batch = True
    source = make_batch_source(config)
    assert isinstance(source, MixedSource)
    real, synthetic = source.sources
    asked: dict[str, list[int]] = {"real": [], "synthetic": []}
    for name, sub in (("real", real), ("synthetic", synthetic)):
        def spy(size=None, draw=sub.next_batch, name=name):
            asked[name].append(size)
            return draw(size)
        sub.next_batch = spy
    for _ in range(20):
        batch = source.next_batch()
        assert batch.images.shape[0] == 4 and len(batch.queries) == batch.masks.shape[0] == batch.image_index.shape[0]
        assert batch.valid is None or batch.valid.shape == batch.masks.shape  # None: all synthetic
        assert sorted(set(batch.image_index.tolist())) == [0, 1, 2, 3]  # every image is asked
    total_real = sum(asked["real"])
    assert total_real + sum(asked["synthetic"]) == 80 and 20 < total_real < 60  # half of 80 images
    assert any(0 < n < 4 for n in asked["real"])  # some batches hold both


def test_change_pairs_mix_within_batch(manifest):
    """Change stages mix too: each pair of a batch real or synthetic, the before dates and
    class-agnostic changes kept with their own pairs."""
    config = _config(manifest, stage="change", share=0.5)
    config.data.mix_within_batch = True
    source = make_batch_source(config)
    real = source.sources[0]
    sizes: list[int] = []

    def spy(size=None, draw=real.next_batch):
        sizes.append(size)
        return draw(size)
    real.next_batch = spy
    for _ in range(10):
        batch = source.next_batch()
        assert batch.before is not None and batch.before.shape == batch.images.shape == (4, 3, 64, 64)
        assert batch.change_masks is not None and batch.change_masks.shape == (4, 64, 64)
        for m in range(len(batch.queries)):  # each kind of change lies inside its own pair's change
            change = batch.change_masks[int(batch.image_index[m])].bool()
            assert not (batch.masks[m].bool() & ~change).any()
    assert any(0 < n < 4 for n in sizes)  # some batches hold both


def test_mixing_within_batch_needs_the_synthetic_source(manifest, tmp_path):
    from geoseg.errors import InputError
    from geoseg.train.synth.export import export_dataset

    config = _config(manifest, share=0.5)
    config.data.source = str(export_dataset(tmp_path / "ds", 2, seed=3, size=64, gsd_choices=(0.5,), queries_per_image=2))
    config.data.mix_within_batch = True
    with pytest.raises(InputError, match="mix_within_batch"):
        make_batch_source(config)


def test_concat_batches_moves_each_part_s_image_index():
    from geoseg.train.batch import Batch, concat_batches

    def part(images: int, index: list[int], valid: bool) -> Batch:
        masks = torch.rand(len(index), 8, 8).round()
        return Batch(torch.rand(images, 3, 8, 8), [f"q{i}" for i in index], torch.tensor(index), masks,
                     valid=torch.zeros_like(masks) if valid else None)

    a, b = part(1, [0, 0], True), part(3, [2, 0, 1], False)
    joined = concat_batches([a, b])
    assert joined.image_index.tolist() == [0, 0, 3, 1, 2]
    assert joined.queries == a.queries + b.queries
    assert torch.equal(joined.images[1:], b.images) and torch.equal(joined.masks[2:], b.masks)
    assert joined.valid is not None and not joined.valid[:2].any() and joined.valid[2:].all()


def test_concat_batches_keeps_the_images_of_a_part_that_drew_no_pair():
    from geoseg.train.batch import concat_batches, stack_batch

    image, mask = np.zeros((8, 8, 3), np.uint8), np.ones((8, 8), bool)
    empty = stack_batch([image, image], [], [], [])  # two images, no query asked
    asked = stack_batch([image], ["q"], [0], [mask])
    joined = concat_batches([empty, asked])
    assert joined.images.shape[0] == 3 and joined.queries == ["q"]
    assert joined.image_index.tolist() == [2] and joined.masks.shape == (1, 8, 8)
    assert concat_batches([empty, empty]).masks is None
    pair = stack_batch([image], ["q"], [0], [mask], befores=[image], changes=[mask])
    with pytest.raises(ValueError, match="not both"):
        concat_batches([asked, pair])


def test_source_weights_set_how_often_each_source_is_drawn(tmp_path):
    from geoseg.errors import InputError
    from geoseg.train.real import RealSource

    manifests = [_write_source(tmp_path / name, name=name) for name in ("big", "small")]
    config = _config(manifests[0])
    config.data.real = tuple(str(m) for m in manifests)
    config.data.real_weights = {"small": 3.0}
    source = RealSource(config, seed=0)
    drawn = [source._image().source for _ in range(400)]
    assert 0.68 < drawn.count("small") / len(drawn) < 0.82  # 3 : 1
    config.data.real_weights = {"nowhere": 2.0}
    with pytest.raises(InputError, match="nowhere"):
        RealSource(config, seed=0)


def test_retint_recolours_only_the_water_and_keeps_its_texture():
    from geoseg.train.real import WATER_TINTS, retint

    rng = np.random.default_rng(0)
    sea = np.clip(rng.normal([0.1, 0.3, 0.7], 0.05, (64, 64, 3)), 0, 1).astype(np.float32)
    water = np.zeros((64, 64), bool)
    water[8:40, 8:40] = True
    out = retint(rng, sea, water)
    assert np.array_equal(out[48:, 48:], sea[48:, 48:])  # far from the water: untouched
    inner = (slice(12, 36), slice(12, 36))
    mean = out[inner].reshape(-1, 3).mean(axis=0)
    assert np.abs(WATER_TINTS[None] - mean).sum(axis=1).min() < np.abs(sea[inner].reshape(-1, 3).mean(axis=0) - mean).sum()
    ripples = out[inner].std(axis=(0, 1)).mean() / sea[inner].std(axis=(0, 1)).mean()
    assert 0.3 < ripples < 1.1  # the texture stays, the colour goes
    assert retint(rng, sea, np.zeros_like(water)) is sea


def test_mottle_blotches_only_the_water_and_repeats_from_its_seed():
    from geoseg.train.real import mottle

    pond = np.full((64, 64, 3), [0.2, 0.25, 0.15], np.float32)
    water = np.zeros((64, 64), bool)
    water[8:40, 8:40] = True
    out = mottle(np.random.default_rng(0), pond, water)
    assert np.array_equal(out[48:, 48:], pond[48:, 48:])  # far from the water: untouched
    inner = (slice(12, 36), slice(12, 36))
    assert out[inner].std(axis=(0, 1)).mean() > 0.01  # a flat pond comes out blotchy
    assert np.array_equal(out, mottle(np.random.default_rng(0), pond, water))
    assert mottle(np.random.default_rng(0), pond, np.zeros_like(water)) is pond


def test_shares_outside_zero_to_one_are_refused(manifest):
    from geoseg.errors import InputError

    with pytest.raises(InputError, match="water_retint"):
        train_config_from_dict({"data": {"water_retint": 1.5}})
    with pytest.raises(InputError, match="water_mottle"):
        train_config_from_dict({"data": {"water_mottle": -0.1}})
