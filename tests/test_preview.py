"""Quick-look PNGs: size as documented, polygon pixels coloured where the polygons are, CLI option."""

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner
from PIL import Image
from shapely.geometry import Polygon, box

from conftest import write_rgb
from doubles import BandOracle
from geoseg.errors import OutputExistsError
from geoseg.io import preview
from geoseg.run import pipeline
from geoseg_cli.main import cli

T = Affine(1, 0, 500000, 0, -1, 5000000)  # 1 m pixels: map x = 500000 + col, y = 5000000 - row
RED = (255, 0, 0)


@pytest.fixture
def scene(tmp_path):
    """400 x 200 RGB with a horizontal gradient (mid-range values after the stretch)."""
    path = tmp_path / "scene.tif"
    ramp = np.tile(np.linspace(60, 190, 400), (200, 1))
    write_rgb(path, np.stack([ramp, ramp, ramp]).astype(np.uint8), T)
    return path


def world_box(col0, row0, col1, row1):
    return box(500000 + col0, 5000000 - row1, 500000 + col1, 5000000 - row0)


def layer(*geoms, colour=RED, label="thing"):
    return preview.PreviewLayer(label, gpd.GeoDataFrame(geometry=list(geoms), crs="EPSG:32633"), colour)


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def test_size_is_scaled_panel_plus_legend(scene, tmp_path):
    out = preview.render_preview([scene], [layer(world_box(100, 50, 200, 150))], tmp_path / "p.png", max_side=200)
    assert Image.open(out).size == (200, 100 + preview.LEGEND_HEIGHT)
    two = preview.render_preview([scene, scene], [], tmp_path / "two.png", max_side=100)
    assert Image.open(two).size == (2 * 100 + preview.GAP, 50 + preview.LEGEND_HEIGHT)


def test_polygon_pixels_coloured_where_the_polygon_is(scene, tmp_path):
    # raster cols 100..200, rows 50..150 with a hole at cols 140..160, rows 90..110;
    # at max_side=200 (scale 1/2) that is panel cols 50..100, rows 25..75, hole 70..80 x 45..55
    ring = world_box(100, 50, 200, 150).exterior.coords
    hole = world_box(140, 90, 160, 110).exterior.coords
    base = pixels(preview.render_preview([scene], [], tmp_path / "base.png", max_side=200))
    drawn = pixels(preview.render_preview([scene], [layer(Polygon(ring, [hole]))], tmp_path / "p.png", max_side=200))

    inside = drawn[35, 60] - base[35, 60]  # row, col inside the fill
    assert inside[0] > 20 and inside[1] < -20 and inside[2] < -20, inside  # tinted towards red
    np.testing.assert_array_equal(drawn[50, 75], base[50, 75])  # the hole stays clear
    np.testing.assert_array_equal(drawn[50, 150], base[50, 150])  # outside untouched
    np.testing.assert_array_equal(drawn[90, 20], base[90, 20])
    left_edge = [tuple(drawn[50, c]) for c in range(48, 53)]
    assert RED in left_edge, left_edge  # the outline is drawn opaque on the polygon's edge
    changed = np.abs(drawn[: 100] - base[: 100]).sum(axis=2) > 0
    rows, cols = np.nonzero(changed)
    assert rows.min() >= 23 and rows.max() <= 77 and cols.min() >= 48 and cols.max() <= 102


def test_polygons_in_another_crs_are_reprojected(scene, tmp_path):
    square = gpd.GeoDataFrame(geometry=[world_box(100, 50, 200, 150)], crs="EPSG:32633").to_crs("EPSG:4326")
    drawn = pixels(preview.render_preview(
        [scene], [preview.PreviewLayer("q", square, RED)], tmp_path / "p.png", max_side=200))
    base = pixels(preview.render_preview([scene], [], tmp_path / "b.png", max_side=200))
    assert (drawn[50, 75] - base[50, 75])[0] > 20
    np.testing.assert_array_equal(drawn[50, 150], base[50, 150])


def test_change_layers_coloured_by_change_type(scene, tmp_path):
    gpkg_path = tmp_path / "c.gpkg"
    gdf = gpd.GeoDataFrame(
        {"change_type": ["appeared", "disappeared"]},
        geometry=[world_box(20, 20, 80, 80), world_box(300, 100, 360, 160)], crs="EPSG:32633",
    )
    gdf.to_file(gpkg_path, layer="new_roads", driver="GPKG")
    out = preview.preview_geopackage([scene, scene], gpkg_path, tmp_path / "c.png", max_side=200)
    img = pixels(out)
    assert img.shape[:2] == (100 + preview.LEGEND_HEIGHT, 2 * 200 + preview.GAP)
    green_part, red_part = img[25, 25], img[65, 165]
    assert green_part[1] > green_part[0] and red_part[0] > red_part[1]
    second = img[:, 200 + preview.GAP :]  # the same polygons on the second panel
    assert second[25, 25][1] > second[25, 25][0]


def test_refuses_to_clobber_and_missing_directory(tmp_path):
    existing = tmp_path / "p.png"
    existing.write_bytes(b"x")
    with pytest.raises(OutputExistsError):
        preview.check_output(existing, overwrite=False)
    preview.check_output(existing, overwrite=True)
    with pytest.raises(Exception, match="directory does not exist"):
        preview.check_output(tmp_path / "nope" / "p.png", overwrite=False)


def test_cli_segment_and_vectorize_write_previews(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "load_segmenter", lambda *a, **k: BandOracle(tile_size=128, overlap=16))
    scene = tmp_path / "s.tif"
    data = np.full((4, 200, 300), 90, np.uint8)
    data[3] = 0
    data[3, 40:100, 50:150] = 255  # the oracle's "truth" band
    with rasterio.open(scene, "w", driver="GTiff", width=300, height=200, count=4, dtype="uint8",
                       crs="EPSG:32633", transform=T) as dst:
        dst.write(data)
    png = tmp_path / "seg.png"
    r = CliRunner().invoke(cli, ["-q", "segment", str(scene), "roofs", "-o", str(tmp_path / "o.gpkg"),
                                 "--probabilities", str(tmp_path / "p.tif"), "--preview", str(png)])
    assert r.exit_code == 0, r.output
    img = pixels(png)
    assert img.shape[:2] == (683 + preview.LEGEND_HEIGHT, 1024)  # 300 x 200 scaled to 1024 wide
    colour = np.array(preview.style_colour("roofs"))
    assert (np.abs(img[: 683] - colour).sum(axis=2) < 10).any()  # its outline, in the layer's colour

    again = CliRunner().invoke(cli, ["-q", "vectorize", str(tmp_path / "p.tif"), "-o", str(tmp_path / "v.gpkg"),
                                     "--preview", str(png)])
    assert again.exit_code == 2 and "exists" in again.output  # refused before any work
    assert not (tmp_path / "v.gpkg").exists()
    r = CliRunner().invoke(cli, ["-q", "vectorize", str(tmp_path / "p.tif"), "-o", str(tmp_path / "v.gpkg"),
                                 "--preview", str(tmp_path / "v.png")])
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "v.png").size == (1024, 683 + preview.LEGEND_HEIGHT)
