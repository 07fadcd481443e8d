"""Synthetic scenes: determinism, truth that matches the pixels, georeferencing, pairs, datasets."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import rasterio
import rasterio.features
import rasterio.warp
import shapely
from pyproj import Geod
from rasterio.enums import Resampling

from geoseg.train.synth import (
    ATTRIBUTE_SETS,
    CHANGE_CLASS,
    CHANGE_KINDS,
    CLASS_NAMES,
    PHRASES,
    RELATIONS,
    UnknownPhraseError,
    export_dataset,
    expressions_for,
    render_pair,
    render_scene,
    resolve,
    write_pair,
    write_scene,
)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def burn(geoms, shape, transform=None) -> np.ndarray:
    """Rasterise polygons with rasterio (an implementation independent of the generator's)."""
    geoms = [g for g in geoms if not g.is_empty]
    if not geoms:
        return np.zeros(shape, dtype=bool)
    kwargs = {"transform": transform} if transform is not None else {}
    return rasterio.features.rasterize([(g, 1) for g in geoms], out_shape=shape, fill=0, dtype="uint8", **kwargs).astype(bool)


TOWN_SEED = 34  # at 256 x 256, 0.5 m: buildings (some damaged), roads, a river, trees, fields


@pytest.fixture(scope="module")
def town():
    return render_scene(TOWN_SEED, 256, 256, 0.5, bands=4)


@pytest.mark.parametrize("seed,gsd", [(1, 0.5), (4, 2.0)])
def test_scanline_rasteriser_matches_gdal(seed, gsd):
    from geoseg.train.synth.scanline import rasterize

    scene = render_scene(seed, 150, 201, gsd)
    geoms = [i.geometry for i in scene.instances]
    ids = [i.id for i in scene.instances]
    ours = rasterize(geoms, ids, 150, 201)
    gdal = rasterio.features.rasterize(list(zip(geoms, ids, strict=True)), out_shape=(150, 201), fill=0, dtype="int32")
    assert np.array_equal(ours, gdal)
    assert np.array_equal(ours, scene.labels)


def test_same_seed_same_scene_and_other_seed_differs():
    a = render_scene(5, 128, 160, 0.5, bands=4)
    b = render_scene(5, 128, 160, 0.5, bands=4)
    c = render_scene(6, 128, 160, 0.5, bands=4)
    assert a.image.shape == (128, 160, 4) and a.image.dtype == np.uint8
    assert np.array_equal(a.image, b.image)
    assert all(np.array_equal(a.masks[k], b.masks[k]) for k in CLASS_NAMES)
    assert [i.geometry.wkb for i in a.instances] == [i.geometry.wkb for i in b.instances]
    assert not np.array_equal(a.image, c.image)
    rgb = render_scene(5, 128, 160, 0.5, bands=3)
    assert np.array_equal(rgb.image, a.image[..., :3])  # the NIR band is an extra, RGB is unchanged


def test_output_does_not_depend_on_the_interpreter_hash_seed():
    code = ("import hashlib, sys; from geoseg.train.synth import render_scene, render_pair; "
            "s = render_scene(7, 96, 96, 1.0, bands=4); p = render_pair(7, 96, 96, 1.0); "
            "h = hashlib.sha256(s.image.tobytes() + s.labels.tobytes() + p.after.image.tobytes()); "
            "h.update(b''.join(m.tobytes() for m in p.change.values())); print(h.hexdigest())")
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        digests.add(out.stdout.strip())
    assert len(digests) == 1


@pytest.mark.parametrize("seed,gsd", [(11, 0.5), (3, 0.3), (21, 1.0), (8, 2.0)])
def test_class_masks_agree_with_truth_polygons(seed, gsd):
    scene = render_scene(seed, 192, 224, gsd)
    assert set(CLASS_NAMES) <= set(scene.masks)
    present = 0
    for name in CLASS_NAMES:
        polys = [i.geometry for i in scene.select(name)]
        truth = burn(polys, scene.labels.shape)
        assert iou(truth, scene.masks[name]) >= 0.99, name
        present += bool(scene.masks[name].any())
    assert present >= 3  # a scene is not empty


def test_image_is_drawn_from_the_masks(town):
    img, m = town.image.astype(float), town.masks
    nir = img[..., 3]
    assert all(m[k].any() for k in ("building", "damaged_building", "road", "water", "tree", "field"))
    veg = m["tree"] | m["field"]
    assert nir[m["water"]].mean() < 0.5 * nir[veg].mean()  # water is dark in the near infrared
    road_rgb = img[m["road"]][:, :3]
    assert road_rgb.std(axis=1).mean() < 20  # roads are grey or brown, not saturated
    # every class with pixels changes the picture: the image is not independent of the masks
    for name in ("building", "road"):
        inside = img[m[name]][:, :3].mean(axis=0)
        outside = img[~m[name]][:, :3].mean(axis=0)
        assert np.abs(inside - outside).max() > 5, name


def test_phrase_masks_follow_attributes_and_relations(town):
    buildings = town.select("buildings")
    assert buildings
    red = town.mask("red-roofed houses")
    assert np.array_equal(red, town.mask("buildings with red roofs"))
    for inst in town.select("red roofs"):
        assert inst.attrs["roof_colour"] == "red"
    assert not (red & ~town.masks["building"]).any()
    # a relation is computed from geometry: within the relation's distance of the river
    scene = town
    river = shapely.union_all([i.geometry for i in scene.select("river")])
    limit_px = RELATIONS["near_river"][2] / scene.gsd
    near = {i.id for i in scene.select("buildings next to the river")}
    assert 0 < len(near) < len(scene.select("buildings"))
    for inst in scene.select("buildings"):
        assert (inst.geometry.distance(river) <= limit_px + 1e-6) == (inst.id in near)
    # an absent target gives an empty mask, not an error
    assert not town.mask("lakes").any() or town.select("lake")


def test_vocabulary_is_data_with_holdout_groups():
    for p in PHRASES:
        assert resolve(p.text).key == p.concept
    assert resolve("  The Red-Roofed Houses. ").key == "building/red_roof"
    assert resolve("gray roofs").key == "building/grey_roof"
    with pytest.raises(UnknownPhraseError):
        resolve("purple elephants")
    houses = [p for p in PHRASES if p.synonym == "building:houses"]
    assert {"houses", "red-roofed houses", "houses next to the river"} <= {p.text for p in houses}
    assert "red_roof" in ATTRIBUTE_SETS and "near_river" in ATTRIBUTE_SETS
    kinds = {p.concept for p in PHRASES if p.kind == "change"}
    assert {f"change/{k}" for k in CHANGE_KINDS} == kinds


def test_write_scene_utm_georeferencing(tmp_path):
    path = tmp_path / "utm.tif"
    scene = write_scene(path, TOWN_SEED, 256, 320, 0.5, crs="EPSG:32633", origin=(452000.0, 4985000.0),
                        truth_path=tmp_path / "utm_truth.gpkg")
    with rasterio.open(path) as src:
        assert src.crs.to_epsg() == 32633
        assert src.res == (0.5, 0.5)
        assert src.profile["tiled"] and src.compression.name.lower() == "deflate"
        assert src.block_shapes[0] == (256, 256) and src.nodata is None
        img = np.moveaxis(src.read(), 0, 2)
        transform = src.transform
    assert np.array_equal(img, scene.arrays.image)
    truth = scene.truth_polygons("buildings")
    assert len(truth) and truth.crs.to_epsg() == 32633
    # map coordinates of the truth go back through the file's transform onto the right pixels
    burned = burn(truth.geometry, (256, 320), transform)
    assert iou(burned, scene.truth_mask("buildings")) >= 0.99
    for geom, inst_id in zip(truth.geometry[:10], truth["id"][:10], strict=True):
        pt = geom.representative_point()
        col, row = ~transform @ (pt.x, pt.y)
        assert scene.arrays.labels[int(row), int(col)] == inst_id
    import pyogrio

    layers = {name for name, _ in pyogrio.list_layers(tmp_path / "utm_truth.gpkg")}
    assert "building" in layers and "road" in layers


def test_write_scene_geographic_pixels_are_about_gsd_metres(tmp_path):
    path = tmp_path / "ll.tif"
    scene = write_scene(path, 4, 128, 128, 1.0, crs="EPSG:4326", origin=(15.0, 45.0))
    with rasterio.open(path) as src:
        assert src.crs.to_epsg() == 4326
        t = src.transform
    lon, lat = t @ (64, 64)
    geod = Geod(ellps="WGS84")
    _, _, dx = geod.inv(lon, lat, lon + t.a, lat)
    _, _, dy = geod.inv(lon, lat, lon, lat + t.e)
    assert dx == pytest.approx(1.0, rel=0.02) and dy == pytest.approx(1.0, rel=0.02)
    assert 14.99 < lon < 15.01 and 44.99 < lat < 45.0
    for name in ("road", "field", "building"):
        truth = scene.truth_polygons(name)
        if len(truth):
            assert iou(burn(truth.geometry, (128, 128), t), scene.truth_mask(name)) >= 0.99


def test_uint16_four_bands_with_nodata_border(tmp_path):
    path = tmp_path / "u16.tif"
    scene = write_scene(path, 9, 192, 192, 0.5, dtype="uint16", bands=4, nodata_border=True)
    with rasterio.open(path) as src:
        data = src.read()
        assert src.dtypes == ("uint16",) * 4 and src.nodata == 0 and src.count == 4
        transform = src.transform
    assert data.max() <= 2047 and data.max() > 255  # 11-bit values
    valid = scene.arrays.valid
    assert 0.6 < valid.mean() < 0.97  # a real margin, not the whole image
    assert (data[:, ~valid] == 0).all()  # nodata in every band outside the footprint
    assert (data[:, valid] > 0).all()  # and never inside it
    for name in CLASS_NAMES:
        assert not (scene.truth_mask(name) & ~valid).any()
        truth = scene.truth_polygons(name)
        if len(truth):
            burned = burn(truth.geometry, valid.shape, transform)
            assert not (burned & ~valid).any()
            assert iou(burned, scene.truth_mask(name)) >= 0.99, name


def first_pair_with(needed, h, w, gsd, change_kinds=CHANGE_KINDS):
    """The first seed whose pair shows every needed change kind (the generator decides, not us)."""
    for seed in range(40):
        p = render_pair(seed, h, w, gsd, change_kinds=change_kinds)
        if all(p.change[k].any() for k in needed):
            return seed, p
    raise AssertionError(f"no seed below 40 shows {needed}")


@pytest.fixture(scope="module")
def seeded_pair():
    return first_pair_with(("new_buildings", "new_roads", "demolished_buildings"), 256, 256, 0.5)


@pytest.fixture(scope="module")
def pair(seeded_pair):
    return seeded_pair[1]


def test_overlapping_change_kinds_each_keep_their_pixels():
    # a new road across a demolition site: both kinds claim the crossing
    from shapely.geometry import box

    from geoseg.train.synth.change import change_masks
    from geoseg.train.synth.layout import Instance

    site = Instance("building", "intact", box(10, 10, 30, 30), {"change": "demolished_buildings"}, id=1)
    road = Instance("road", "paved", box(0, 18, 64, 24), {"change": "new_roads"}, id=2)
    masks = change_masks([site, road], 64, 64)
    assert masks["demolished_buildings"].sum() == 400 and masks["new_roads"].sum() == 64 * 6
    assert (masks["demolished_buildings"] & masks["new_roads"]).sum() == 20 * 6


@pytest.mark.parametrize("seed", range(6))
def test_change_masks_are_after_minus_before_for_many_seeds(seed):
    gsd = (0.3, 0.5, 1.0, 2.0)[seed % 4]
    p = render_pair(seed, 96, 112, gsd, change_kinds=CHANGE_KINDS)
    for kind, (cls, sign) in CHANGE_CLASS.items():
        before, after = p.before.masks[cls], p.after.masks[cls]
        assert np.array_equal(p.change[kind], (after & ~before) if sign > 0 else (before & ~after)), kind


def test_pair_change_masks_are_after_minus_before(seeded_pair):
    seed, pair = seeded_pair
    for kind, (cls, sign) in CHANGE_CLASS.items():
        before, after = pair.before.masks[cls], pair.after.masks[cls]
        expected = (after & ~before) if sign > 0 else (before & ~after)
        assert np.array_equal(pair.change[kind], expected), kind
        polys = [i.geometry for i in pair.change_instances if i.attrs["change"] == kind]
        assert iou(burn(polys, before.shape), pair.change[kind]) >= 0.99, kind
    for kind in ("new_buildings", "new_roads", "demolished_buildings"):
        assert pair.change[kind].any(), kind
    assert np.array_equal(pair.mask("new buildings"), pair.change["new_buildings"])
    assert pair.before.season != pair.after.season
    same = render_scene(seed, 256, 256, 0.5)
    assert np.array_equal(same.image, pair.before.image)  # the before date is the plain scene


def test_pair_only_requested_kinds_change():
    _, p = first_pair_with(("new_buildings",), 192, 192, 0.5, change_kinds=("new_buildings",))
    for kind in CHANGE_KINDS:
        if kind != "new_buildings":
            assert not p.change[kind].any()
    for cls in ("road", "water", "damaged_building"):
        assert np.array_equal(p.before.masks[cls], p.after.masks[cls])
    assert not (p.before.masks["building"] & ~p.after.masks["building"]).any()


@pytest.mark.parametrize("grid", ["offset", "other_crs"])
def test_pair_on_another_grid_lines_up_when_warped_back(tmp_path, grid):
    for seed in range(20):  # the first seed whose (padded) pair has new buildings in view
        sp = write_pair(tmp_path, seed, 160, 160, 0.5, after_grid=grid, season_after="summer", save_truth=False)
        if sp.truth_mask("new buildings").any():
            break
    if grid == "offset":
        import pyogrio

        layers = {name for name, _ in pyogrio.list_layers(sp.save_truth(tmp_path / "truth.gpkg"))}
        assert {"new_buildings", "before_building", "after_building"} <= layers
    with rasterio.open(sp.before_path) as b, rasterio.open(sp.after_path) as a:
        assert b.crs.to_epsg() == 32633
        if grid == "offset":
            assert a.crs == b.crs and a.transform != b.transform
            assert a.res[0] == pytest.approx(0.6)
            # sub-pixel shift: the origin is not on the before grid
            col, row = ~b.transform @ (a.transform.c, a.transform.f)
            assert 0.05 < col % 1 < 0.95 and 0.05 < row % 1 < 0.95
        else:
            assert a.crs.to_epsg() == 4326
        after = a.read().astype(np.float32)
        back = np.zeros((a.count, b.height, b.width), np.float32)
        rasterio.warp.reproject(after, back, src_transform=a.transform, src_crs=a.crs, dst_transform=b.transform,
                                dst_crs=b.crs, resampling=Resampling.bilinear, src_nodata=a.nodata)
        btransform = b.transform
    expected = np.moveaxis(sp.arrays.after.image.astype(np.float32), 2, 0)
    inner = (slice(None), slice(8, -8), slice(8, -8))
    err = np.abs(back - expected)[inner].mean()
    shifted = np.abs(back - np.roll(expected, 3, axis=2))[inner].mean()
    assert err < 8 and err < 0.6 * shifted
    # truth polygons are in the before CRS and land on the before-grid masks
    new = sp.truth_polygons("new buildings")
    assert len(new) and new.crs.to_epsg() == 32633
    assert iou(burn(new.geometry, (160, 160), btransform), sp.truth_mask("new buildings")) >= 0.99


def test_export_dataset_manifest_and_masks(tmp_path):
    manifest = export_dataset(tmp_path / "ds", 2, seed=3, size=96, gsd_choices=(0.5,), queries_per_image=5)
    lines = [json.loads(x) for x in manifest.read_text().splitlines()]
    assert len(lines) == 10
    assert any(x["empty"] for x in lines) and not all(x["empty"] for x in lines)
    for x in lines:
        with rasterio.open(tmp_path / "ds" / x["mask"]) as src:
            mask = src.read(1)
        assert set(np.unique(mask)) <= {0, 255}
        assert x["empty"] == (not mask.any())
        scene = render_scene(x["seed"], 96, 96, x["gsd"], season=x["season"])
        assert np.array_equal(mask > 0, scene.mask(x["expression"]))
        with rasterio.open(tmp_path / "ds" / x["image"]) as src:
            assert np.array_equal(np.moveaxis(src.read(), 0, 2), scene.image)


def test_export_change_dataset_and_holdout(tmp_path):
    held = [p for p in PHRASES if p.concept == "change/new_roads"]
    manifest = export_dataset(tmp_path / "cd", 1, seed=5, size=96, change=True, exclude=held, queries_per_image=3)
    lines = [json.loads(x) for x in manifest.read_text().splitlines()]
    assert lines and all("before" in x and "after" in x and "image" not in x for x in lines)
    assert not {x["expression"] for x in lines} & {p.text for p in held}
    assert all((tmp_path / "cd" / x["before"]).exists() for x in lines)


def test_expressions_for_scene(town):
    exprs = expressions_for(town, k=6, rng=np.random.default_rng(0), empty_fraction=0.34)
    assert len(exprs) == 6
    for e in exprs:
        assert e.empty == (not e.mask.any())
        assert np.array_equal(e.mask, town.mask(e.text))
    assert sum(e.empty for e in exprs) >= 1


def test_bad_arguments_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        render_scene(1, 64, 64, 0.5, dtype="float32")
    with pytest.raises(ValueError, match="season"):
        render_scene(1, 64, 64, 0.5, season="monsoon")
    with pytest.raises(ValueError, match="change kinds"):
        render_pair(1, 64, 64, 0.5, change_kinds=("earthquake",))
    with pytest.raises(ValueError, match="linear units"):
        write_scene(tmp_path / "x.tif", 1, 64, 64, 0.5, crs="EPSG:2263")  # US feet
    assert math.isfinite(render_scene(1, 64, 64, 0.5).gsd)


def test_degenerate_field_clip_does_not_break_the_layout():
    """This seed's fields met a road so that GEOS' union raised 'unable to assign free hole to a
    shell' (seen in a training run); the layout must come out anyway, fields included."""
    from geoseg.train.synth.layout import generate_layout
    from geoseg.train.synth.render import stream

    layout = generate_layout(stream(9507828523520, "layout"), 512, 512, 0.3)
    assert sum(1 for i in layout.instances if i.cls == "field") > 0
