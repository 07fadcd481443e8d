"""Building damage composited onto building chips (geoseg.train.damage), on the repository's own
sample tile: masks are the damaged footprints, intact buildings stay negatives and untouched,
the same seed gives the same composite, and the validation style shares no parameter range
with the training style."""

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.features import rasterize
from scipy import ndimage

from geoseg.train.config import train_config_from_dict
from geoseg.train.damage import (
    DAMAGED,
    DESTROYED,
    INTACT,
    TRAIN_STYLE,
    VALIDATION_STYLE,
    composite_damage,
    destroyed_pair,
    export_damage_set,
)
from geoseg.train.real import RealSource, RealVocabulary

SAMPLES = Path(__file__).resolve().parents[1] / "sample_tiles"


@pytest.fixture(scope="module")
def town_chip():
    """A 256 px window of the town sample tile and its intact buildings, rasterised from its truth."""
    with rasterio.open(SAMPLES / "town_utm_0p5m.tif") as src:
        window = rasterio.windows.Window(512, 256, 256, 256)
        image = src.read(window=window).transpose(1, 2, 0).astype(np.float32) / 255
        transform = src.window_transform(window)
    truth = gpd.read_file(SAMPLES / "town_utm_0p5m_truth.gpkg", layer="building")
    intact = truth[truth["damage"] == "intact"]
    buildings = rasterize(intact.geometry, out_shape=(256, 256), transform=transform).astype(bool)
    assert ndimage.label(buildings)[1] >= 5
    return image, buildings


def test_masks_are_the_damaged_footprints_and_intact_buildings_stay_untouched(town_chip):
    image, buildings = town_chip
    comp = composite_damage(np.random.default_rng(3), image, buildings, p_damaged=0.4, p_destroyed=0.3)
    damaged, destroyed = comp.masks["damaged buildings"], comp.masks["destroyed buildings"]
    assert {DAMAGED, DESTROYED, INTACT} <= set(comp.states.tolist())
    assert damaged.any() and destroyed.any()
    assert not (damaged & ~buildings).any()  # never the debris spilled past a footprint
    assert not (destroyed & ~damaged).any()  # destroyed is a kind of damaged
    assert not (comp.masks["buildings"] & destroyed).any()  # a heap of rubble is no longer a building
    assert ((comp.masks["buildings"] | destroyed) == buildings).all()
    # every damaged footprint is visibly changed; pixels far from any damage are not
    change = np.abs(comp.image - image).mean(axis=2)
    labels, _ = ndimage.label(buildings)
    for i in np.flatnonzero(comp.states != INTACT):  # a damaged roof is only partly broken
        assert change[labels == i + 1].mean() > (0.05 if comp.states[i] == DESTROYED else 0.015)
    far = ~ndimage.binary_dilation(damaged, iterations=3 * VALIDATION_STYLE.spill[1] + 4)
    assert change[far].max() < 1e-6


def test_same_seed_same_composite(town_chip):
    image, buildings = town_chip
    a = composite_damage(np.random.default_rng(11), image, buildings)
    b = composite_damage(np.random.default_rng(11), image, buildings)
    c = composite_damage(np.random.default_rng(12), image, buildings)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.states, b.states)
    assert not np.array_equal(a.image, c.image)


def test_validation_style_is_disjoint_from_training():
    def apart(a, b):
        return a[1] < b[0] or b[1] < a[0]

    for name in ("tarp_hue", "grain", "spill", "hole_cell", "piece"):
        assert apart(getattr(TRAIN_STYLE, name), getattr(VALIDATION_STYLE, name)), name
    for name in ("rubble", "ash", "mud"):
        assert not set(getattr(TRAIN_STYLE, name)) & set(getattr(VALIDATION_STYLE, name)), name


def test_destroyed_pair_marks_what_changed_between_the_dates(town_chip):
    image, buildings = town_chip
    before, after, changes = destroyed_pair(np.random.default_rng(5), image, buildings)
    assert np.array_equal(before, image)
    gone, damaged = changes["demolished_buildings"], changes["damaged_buildings"]
    assert gone.any() and not (gone & ~damaged).any() and not (damaged & ~buildings).any()
    assert np.abs(after - before).mean(axis=2)[gone].mean() > 0.03


def test_training_asks_damage_and_unrelated_queries(tmp_path, town_chip):
    """With damage_share 1 the damage wordings come with the composited footprints; unrelated
    concepts always come with empty masks."""
    from PIL import Image

    image, buildings = town_chip
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray((image * 255).astype(np.uint8)).save(tmp_path / "images" / "0.png")
    Image.fromarray(buildings.astype(np.uint8) * 255).save(tmp_path / "masks" / "0.png")
    line = {"image": "images/0.png", "mask": "masks/0.png", "expression": "buildings", "empty": False,
            "tags": ["toy", "buildings", "area-split:train"]}
    (tmp_path / "manifest.jsonl").write_text(json.dumps(line) + "\n")
    config = train_config_from_dict({
        "batch_size": 4, "pretrained_encoder": None,
        "data": {"tile": 128, "queries_per_image": 4, "real": [str(tmp_path / "manifest.jsonl")], "real_share": 1.0,
                 "real_scale": [1.0, 1.2], "damage_share": 1.0, "unrelated_share": 0.3, "empty_share": 0.1},
    })
    words = RealVocabulary()
    damage_words = {w for ws in words.composited.values() for w in ws}
    seen_damage = seen_unrelated = 0
    source = RealSource(config, seed=0)
    for _ in range(12):
        batch = source.next_batch()
        for text, mask in zip(batch.queries, batch.masks, strict=True):
            if text in words.unrelated:
                seen_unrelated += 1
                assert mask.sum() == 0
            elif text in damage_words and mask.sum() > 0:
                seen_damage += 1
    assert seen_damage >= 3 and seen_unrelated >= 3


def _toy_source(tmp_path: Path, town_chip) -> Path:
    """A manifest of the town chip labelled buildings, once in validation and once in training."""
    from PIL import Image

    image, buildings = town_chip
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    Image.fromarray((image * 255).astype(np.uint8)).save(src / "images" / "0.png")
    Image.fromarray(buildings.astype(np.uint8) * 255).save(src / "masks" / "0.png")
    lines = [{"image": "images/0.png", "mask": "masks/0.png", "expression": "buildings", "empty": False,
              "tags": ["toy", "buildings", split]} for split in ("area-split:val", "area-split:train")]
    (src / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return src / "manifest.jsonl"


def test_validation_set_is_written_in_the_dataset_format(tmp_path, town_chip):
    from geoseg.train.manifest import read_manifest

    path = export_damage_set([_toy_source(tmp_path, town_chip)], tmp_path / "out", seed=1)
    samples = list(read_manifest(path))
    assert sorted(s.expression for s in samples) == ["buildings", "damaged buildings", "destroyed buildings"]
    assert all("damage-style:validation" in s.tags for s in samples)
    assert not any(s.is_change for s in samples)


def test_change_validation_pairs_ask_what_appeared_between_the_dates(tmp_path, town_chip):
    """--change: one before/after pair per validation chip; "destroyed buildings" is the rubble or
    cleared footprints, "damaged buildings" every footprint damaged between the dates (the
    destroyed ones too), and "new buildings" is asked with an empty mask (rubble is not new)."""
    from geoseg.train.manifest import load_image, load_mask, read_manifest

    _, buildings = town_chip
    source = _toy_source(tmp_path, town_chip)
    path = export_damage_set([source], tmp_path / "out", seed=1, change=True)
    samples = {s.expression: s for s in read_manifest(path)}
    assert sorted(samples) == ["damaged buildings", "destroyed buildings", "new buildings"]
    assert all(s.is_change and "damage-style:validation" in s.tags for s in samples.values())
    masks = {q: load_mask(s.mask) for q, s in samples.items()}
    assert masks["destroyed buildings"].any() and not masks["new buildings"].any()
    assert not (masks["destroyed buildings"] & ~masks["damaged buildings"]).any()
    assert not (masks["damaged buildings"] & ~buildings).any()  # footprints, never the spill
    s = samples["damaged buildings"]
    image = load_image(source.parent / "images" / "0.png")  # stretched as evaluation reads it
    assert np.allclose(load_image(s.before_image), image, atol=1e-6)  # before is the chip itself
    after = load_image(s.after)
    assert np.abs(after - image).mean(axis=2)[masks["destroyed buildings"]].mean() > 0.05
    again = export_damage_set([_toy_source(tmp_path / "again", town_chip)], tmp_path / "out2", seed=1, change=True)
    assert again.read_text() == path.read_text()  # the same seed writes the same pairs
    assert np.array_equal(np.load(again.parent / s.after.relative_to(path.parent)), np.load(s.after))
