"""Rotated and sheared geotransforms: tiled and blended in pixel space, polygons mapped through
the full affine, pairs aligned, footprints, dry-run, preview and probability rasters."""

import math

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.features
from affine import Affine
from PIL import Image
from shapely import affinity
from shapely.geometry import Polygon, box
from shapely.ops import unary_union

from conftest import write_rgb, write_truth_scene
from doubles import BandOracle
from geoseg import vectorize
from geoseg.io import preview, raster
from geoseg.run import pipeline, tiling
from geoseg.run.stitch import PROB_SCALE

CX, CY = 500200.0, 5000200.0  # scene centres, UTM 33N metres


def centred(width, height, pixel, angle_deg, cx=CX, cy=CY, shear=0.0):
    """A geotransform whose pixel grid is rotated by `angle_deg` (counter-clockwise) about (cx, cy)."""
    return (Affine.translation(cx, cy) @ Affine.rotation(angle_deg) @ Affine.shear(shear, 0)
            @ Affine.scale(pixel, -pixel) @ Affine.translation(-width / 2, -height / 2))


def grid_square(transform, col, row, side):
    """A square of `side` pixels at (col, row), aligned with the (rotated) pixel grid, in map coordinates."""
    corners = [(col, row), (col + side, row), (col + side, row + side), (col, row + side)]
    return Polygon([transform @ c for c in corners])


def iou(a, b):
    return a.intersection(b).area / a.union(b).area


def footprint(transform, width, height):
    return Polygon([transform @ c for c in [(0, 0), (width, 0), (width, height), (0, height)]])


def opts(**kw):
    return pipeline.RunOptions(progress=False, **kw)


# ------------------------------------------------------------------ (a) vectorising a rotated grid


def test_polygons_from_a_rotated_grid_match_known_squares(tmp_path):
    width = height = 400
    t = centred(width, height, 0.5, 20)
    squares = [
        grid_square(t, 40, 60, 80),  # along the pixel grid: rasterised exactly
        grid_square(t, 250, 30, 50),
        box(CX - 10, CY - 70, CX + 50, CY - 10),  # along map axes: a staircase on the rotated grid
    ]
    burned = rasterio.features.rasterize([(s, PROB_SCALE) for s in squares], out_shape=(height, width), transform=t,
                                         dtype="uint8")
    path = tmp_path / "prob.tif"
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=1, dtype="uint8",
                       crs="EPSG:32633", transform=t, nodata=255) as dst:
        dst.write(burned, 1)
        dst.scales = (1 / PROB_SCALE,)
    got = vectorize.vectorize_probabilities(path, vectorize.VectorizeOptions(block_size=128))
    assert len(got) == len(squares)
    for square in squares:
        match = max(got.itertuples(), key=lambda r: iou(r.geometry, square))
        assert iou(match.geometry, square) >= 0.98
        assert match.area_m2 == pytest.approx(square.area, rel=0.01)
    # a square along the pixel grid comes back vertex for vertex
    exact = max(got.geometry, key=lambda g: iou(g, squares[0]))
    assert exact.hausdorff_distance(squares[0]) < 1e-6
    assert got.loc[got.geometry == exact, "perimeter_m"].item() == pytest.approx(4 * 40, rel=1e-9)


def test_min_area_and_simplify_on_a_rotated_grid(tmp_path):
    t = centred(200, 200, 0.5, 30)
    small, large = grid_square(t, 20, 20, 10), grid_square(t, 80, 80, 60)  # 25 m2 and 900 m2
    burned = rasterio.features.rasterize([(small, 1), (large, 1)], out_shape=(200, 200), transform=t, dtype="uint8")
    path = tmp_path / "mask.tif"
    with rasterio.open(path, "w", driver="GTiff", width=200, height=200, count=1, dtype="uint8",
                       crs="EPSG:32633", transform=t) as dst:
        dst.write(burned, 1)
    got = vectorize.vectorize_probabilities(path, vectorize.VectorizeOptions(min_area_m2=100, simplify=1.0))
    assert len(got) == 1 and got.area_m2.item() == pytest.approx(900, rel=1e-6)


# ------------------------------------------------------------------ grids and footprints


def test_pixel_size_of_a_rotated_grid_is_its_side_length():
    grid = raster.Grid(100, 100, centred(100, 100, 0.3, 20), None)
    assert grid.pixel_size == pytest.approx((0.3, 0.3))


def test_overlap_fraction_uses_the_rotated_footprint():
    # a square and the same square turned by 45 degrees about its centre overlap in a regular
    # octagon: 2 (sqrt 2 - 1) of the square; bounding boxes would say 0.5 or 1.0
    north_up = raster.Grid(100, 100, centred(100, 100, 1.0, 0), rasterio.crs.CRS.from_epsg(32633))
    turned = raster.Grid(100, 100, centred(100, 100, 1.0, 45), rasterio.crs.CRS.from_epsg(32633))
    expected = 2 * (math.sqrt(2) - 1)
    assert raster.overlap_fraction(turned, north_up) == pytest.approx(expected, rel=1e-6)
    assert raster.overlap_fraction(north_up, turned) == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------ (b) a rotated scene end to end


@pytest.fixture
def rotated_scene(tmp_path):
    width, height = 500, 400
    t = centred(width, height, 0.5, 20)
    houses = [grid_square(t, 60, 50, 60), affinity.rotate(box(CX - 20, CY - 15, CX + 25, CY + 15), 5),
              grid_square(t, 380, 250, 100)]  # the last crosses the scene edge
    path = tmp_path / "rotated.tif"
    write_truth_scene(path, houses, width=width, height=height, transform=t)
    return path, t, houses, footprint(t, width, height)


def test_rotated_scene_segmented_end_to_end(rotated_scene, tmp_path):
    path, t, houses, outline = rotated_scene
    out, probs, mask = tmp_path / "out.gpkg", tmp_path / "probs.tif", tmp_path / "mask.tif"
    pipeline.segment([path], ["buildings"], out, opts(tile_size=128, overlap=32, probabilities=probs, mask_out=mask),
                     segmenter=BandOracle())
    got = gpd.read_file(out, layer=0)
    assert len(got) == 3
    assert all(outline.buffer(1e-6).contains(g) for g in got.geometry)  # inside the rotated footprint
    truth = unary_union([h.intersection(outline) for h in houses])
    assert iou(unary_union(got.geometry), truth) >= 0.98
    for written in (probs, mask):  # the rasters carry the rotated transform, not a north-up one
        with rasterio.open(written) as src:
            assert src.transform.almost_equals(t) and (src.width, src.height) == (500, 400)


def test_sheared_scene_of_1e_10_is_accepted(tmp_path):
    t = centred(300, 200, 0.5, 0, shear=1e-10)
    assert t.b != 0
    house = grid_square(t, 100, 50, 60)
    path = tmp_path / "sheared.tif"
    write_truth_scene(path, [house], width=300, height=200, transform=t)
    scene = raster.open_scene(path)
    assert scene.grid.transform == t and scene.grid.pixel_size == pytest.approx((0.5, 0.5))
    out = tmp_path / "out.gpkg"
    pipeline.segment([path], ["houses"], out, opts(tile_size=128, overlap=32), segmenter=BandOracle())
    assert iou(gpd.read_file(out, layer=0).geometry.item(), house) >= 0.999


def test_dry_run_on_a_rotated_scene(rotated_scene):
    path, *_ = rotated_scene
    plan = pipeline.dry_run([path], opts(tile_size=128, overlap=32), segmenter=BandOracle())["scenes"][0]
    assert (plan["width"], plan["height"]) == (500, 400)
    assert plan["tiles"] == len(tiling.plan_tiles(400, 500, 128, 32).tiles)


def test_preview_draws_polygons_where_they_are_on_a_rotated_scene(tmp_path):
    width = height = 200
    t = centred(width, height, 1.0, 30)
    path = tmp_path / "scene.tif"
    write_rgb(path, np.full((3, height, width), 128, np.uint8), t)
    square = grid_square(t, 40, 40, 60)  # pixels 40..100 of the rotated raster
    layer = preview.PreviewLayer("thing", gpd.GeoDataFrame(geometry=[square], crs="EPSG:32633"), (255, 0, 0))
    png = preview.render_preview([path], [layer], tmp_path / "p.png", max_side=width)
    image = np.asarray(Image.open(png).convert("RGB")).astype(int)
    inside, outside = image[70, 70], image[150, 150]  # panel pixels are raster pixels (scale 1)
    assert inside[0] > inside[1] + 20  # tinted red
    assert abs(outside[0] - outside[1]) < 5  # untouched grey


# ------------------------------------------------------------------ (d) rotated pairs


@pytest.mark.parametrize("rotated", ["before", "after"])
def test_rotated_pair_aligns(tmp_path, rotated):
    """One date on a north-up grid, the other turned by 20 degrees and larger; whichever is the
    reference, the new building is found where it is."""
    north_up = centred(400, 400, 0.5, 0)
    turned = centred(600, 600, 0.5, 20)
    old = [grid_square(north_up, 50, 60, 60)]
    new = affinity.rotate(box(CX + 20, CY - 60, CX + 60, CY - 20), 10)
    t_before, size_before = (turned, 600) if rotated == "before" else (north_up, 400)
    t_after, size_after = (turned, 600) if rotated == "after" else (north_up, 400)
    before, after = tmp_path / "before.tif", tmp_path / "after.tif"
    write_truth_scene(before, old, width=size_before, height=size_before, transform=t_before)
    write_truth_scene(after, [*old, new], width=size_after, height=size_after, transform=t_after, seed=1)
    out = tmp_path / "change.gpkg"
    summary = pipeline.change(before, after, ["new buildings"], out, opts(tile_size=256, overlap=32),
                              segmenter=BandOracle())
    got = gpd.read_file(out, layer=0)
    expected = 1.0 if rotated == "after" else footprint(north_up, 400, 400).area / footprint(turned, 600, 600).area
    assert summary.overlap_fraction == pytest.approx(expected, rel=1e-6)
    assert set(got["change_type"]) == {"appeared"}
    assert iou(unary_union(got.geometry), new) >= 0.95


def test_cli_preview_and_dry_run_on_a_rotated_scene(rotated_scene, tmp_path, monkeypatch):
    import json

    from click.testing import CliRunner

    from geoseg_cli.main import cli

    path, t, houses, outline = rotated_scene
    monkeypatch.setattr(pipeline, "load_segmenter", lambda *a, **k: BandOracle(tile_size=128, overlap=16))
    out, png = tmp_path / "o.gpkg", tmp_path / "p.png"
    r = CliRunner().invoke(cli, ["segment", str(path), "houses", "-o", str(out), "--preview", str(png), "--json"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["layers"][0]["features"] == 3
    image = np.asarray(Image.open(png).convert("RGB")).astype(int)
    # the panel is the raster's own (rotated) pixel grid, scaled to 1024 px along its longest side
    assert image.shape[:2] == (round(400 * 1024 / 500) + preview.LEGEND_HEIGHT, 1024)
    r = CliRunner().invoke(cli, ["segment", str(path), "houses", "-o", str(out), "--dry-run", "--json"],
                           catch_exceptions=False)
    assert r.exit_code == 0 and json.loads(r.stdout)["scenes"][0]["width"] == 500
