"""GSD-aware reading: scenes far finer than the model's training range are read at its finest
resolution (auto), kept as they are (native) or read at a forced resolution; polygons still land
where the objects are, and the choice shows in the log, the dry-run and the provenance."""

import dataclasses
import json
import logging
from pathlib import Path

import geopandas as gpd
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner
from shapely.geometry import box
from shapely.ops import unary_union

from conftest import write_truth_scene
from doubles import BandOracle
from geoseg.errors import InputError
from geoseg.io import gsd, raster
from geoseg.io.gpkg import read_provenance
from geoseg.models.compact import config as compact_config
from geoseg.models.compact.config import CompactConfig
from geoseg.models.compact.segmenter import model_info
from geoseg.models.segearth.config import parse_config
from geoseg.options import RunOptions
from geoseg.run import pipeline, tiling
from geoseg_cli.main import cli

X0, Y0 = 500000.0, 5000000.0
GEO_EQUATOR_M = (1.1131949, 1.1057427)  # WGS84 metres per 1e-5 degree of longitude / latitude at the equator


class RangedOracle(BandOracle):
    """BandOracle declaring the compact model's training range."""

    def __init__(self, gsd_range=(0.07, 2.0), **kw):
        super().__init__(**kw)
        self.info = dataclasses.replace(self.info, gsd_range=gsd_range)


def opts(**kw):
    return pipeline.RunOptions(progress=False, tile_size=128, overlap=32, **kw)


def iou(a, b):
    return a.intersection(b).area / a.union(b).area


def squares():
    """Three known squares (map metres) inside the 35 m x 28 m scene of `fine_scene`."""
    return [box(X0 + 3, Y0 - 9, X0 + 9, Y0 - 3), box(X0 + 20, Y0 - 12, X0 + 28, Y0 - 4),
            box(X0 + 10, Y0 - 25, X0 + 17, Y0 - 17)]


@pytest.fixture
def fine_scene(tmp_path):
    """A 5 cm scene, 700 x 560 px (35 m x 28 m), with the squares in its truth band."""
    path = tmp_path / "scene.tif"
    write_truth_scene(path, squares(), width=700, height=560, transform=Affine(0.05, 0, X0, 0, -0.05, Y0))
    return path


def coarse_scene(tmp_path, pixel=0.5, size=200):
    path = tmp_path / "coarse.tif"
    write_truth_scene(path, [box(X0 + 20, Y0 - 60, X0 + 60, Y0 - 20)], width=size, height=size,
                      transform=Affine(pixel, 0, X0, 0, -pixel, Y0))
    return path


# ------------------------------------------------------------------ parsing and choosing


@pytest.mark.parametrize("given,expected", [("auto", "auto"), ("Native", "native"), ("0.3", 0.3), (0.3, 0.3),
                                            ("0.25m", 0.25)])
def test_parse_gsd(given, expected):
    assert gsd.parse_gsd(given) == expected


@pytest.mark.parametrize("bad", ["0", "-1", "fast", "nan", "inf", ""])
def test_parse_gsd_refuses_nonsense(bad):
    with pytest.raises(InputError, match="--gsd .*auto, native or a ground resolution in metres"):
        gsd.parse_gsd(bad)


def test_pixel_sides_projected_rotated_and_in_feet():
    assert gsd.pixel_sides_m(Affine(0.05, 0, X0, 0, -0.05, Y0), "EPSG:32633", 10, 10) == pytest.approx((0.05, 0.05))
    turned = Affine.rotation(20) @ Affine.scale(0.05, -0.08)
    assert gsd.pixel_sides_m(turned, "EPSG:32633", 10, 10) == pytest.approx((0.05, 0.08))
    # NAD83 / New York Long Island, US survey feet
    assert gsd.pixel_sides_m(Affine(1, 0, 0, 0, -1, 0), "EPSG:2263", 10, 10) == pytest.approx((0.3048006,) * 2)
    assert gsd.pixel_sides_m(Affine.identity(), None, 10, 10) is None


def test_pixel_sides_geographic_are_geodesic_metres():
    at_equator = Affine(1e-5, 0, 10.0, 0, -1e-5, 0.0005)  # 100 x 100 px centred on the equator
    assert gsd.pixel_sides_m(at_equator, "EPSG:4326", 100, 100) == pytest.approx(GEO_EQUATOR_M, rel=1e-4)
    at_60n = Affine(1e-5, 0, 10.0, 0, -1e-5, 60.0005)
    x, y = gsd.pixel_sides_m(at_60n, "EPSG:4326", 100, 100)
    assert x == pytest.approx(0.5 * 1.1131949 * 1.0017, rel=2e-3) and y > GEO_EQUATOR_M[1]  # cos 60 on the ellipsoid


@pytest.mark.parametrize("setting,sides,expect_read,expect_scale", [
    ("auto", (0.05, 0.05), 0.07, (1.4, 1.4)),  # finer than the range: to its finest
    ("auto", (0.5, 0.5), 0.5, (1.0, 1.0)),  # inside the range: as it is
    ("auto", (3.0, 3.0), 3.0, (1.0, 1.0)),  # coarser than the range: never upsampled
    ("auto", (0.068, 0.068), 0.068, (1.0, 1.0)),  # within 5 % of the lower end: not worth resampling
    ("native", (0.05, 0.05), 0.05, (1.0, 1.0)),
    (0.3, (0.5, 0.5), 0.3, (0.6, 0.6)),  # forced: upsampling because the user asked
    (0.1, (0.05, 0.05), 0.1, (2.0, 2.0)),
])
def test_choose_gsd(setting, sides, expect_read, expect_scale):
    choice = gsd.choose_gsd("s.tif", sides, setting, (0.07, 2.0))
    assert choice.read_m == pytest.approx(expect_read) and choice.scale == pytest.approx(expect_scale)


def test_a_forced_gsd_far_finer_than_the_pixels_is_refused():
    assert gsd.choose_gsd("s.tif", (1.0, 1.0), 0.1, None).scale == pytest.approx((10.0 ** -1,) * 2)
    with pytest.raises(InputError, match=r"s\.tif: --gsd 0\.03 is over 10x finer than its 1 m pixels"):
        gsd.choose_gsd("s.tif", (1.0, 1.0), 0.03, None)


def test_auto_without_a_model_range_or_a_crs_reads_natively():
    assert not gsd.choose_gsd("s.tif", (0.05, 0.05), "auto", None).resampled
    assert not gsd.choose_gsd("s.tif", None, "auto", (0.07, 2.0)).resampled
    with pytest.raises(InputError, match=r"s\.tif: has no CRS, so --gsd 0\.3 .*drop --gsd"):
        gsd.choose_gsd("s.tif", None, 0.3, (0.07, 2.0))


def test_auto_never_upsamples_either_side_of_an_oblong_pixel():
    choice = gsd.choose_gsd("s.tif", (0.04, 0.2), "auto", (0.07, 2.0))  # mean 0.089 is in range
    assert not choice.resampled
    choice = gsd.choose_gsd("s.tif", (0.02, 0.1), "auto", (0.07, 2.0))  # mean 0.045 is finer
    assert choice.scale == pytest.approx((3.5, 1.0))


def test_models_expose_their_gsd_range():
    shipped = Path(compact_config.__file__).parent / "weights"
    for name in ("compact", "compact-change"):  # the embedded checkpoints' own config.json
        assert model_info(CompactConfig.load(shipped / name), name, None).gsd_range == (0.07, 2.0)
    assert BandOracle().info.gsd_range is None  # no declared range: no constraint
    segearth = {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 128}
    assert parse_config(segearth).options.gsd_range is None
    assert parse_config({**segearth, "geoseg": {"gsd_range": [0.3, 1.0]}}).options.gsd_range == (0.3, 1.0)
    with pytest.raises(ValueError, match="gsd_range"):
        dataclasses.replace(BandOracle().info, gsd_range=(2.0, 0.07))


# ------------------------------------------------------------------ reading on the coarser grid


def test_scene_read_on_the_coarser_grid_keeps_its_footprint(fine_scene):
    scene = raster.open_scene(fine_scene, model_bands=4, gsd="auto", gsd_range=(0.07, 2.0))
    assert (scene.grid.width, scene.grid.height) == (500, 400)
    native = raster.open_scene(fine_scene, model_bands=4)
    assert scene.grid.footprint().equals_exact(native.grid.footprint(), 1e-6)
    assert scene.stats == native.stats  # sampled from the file itself, not from a whole-scene warp
    data, valid = scene.read_tile(rasterio.windows.Window(0, 0, 500, 400))
    assert data[0].shape == (4, 400, 500) and valid.all()


def test_auto_reads_a_5cm_scene_at_7cm_and_polygons_land_on_the_squares(fine_scene, tmp_path, caplog):
    out, probs = tmp_path / "out.gpkg", tmp_path / "probs.tif"
    with caplog.at_level(logging.INFO, logger="geoseg"):
        summary = pipeline.segment([fine_scene], ["squares"], out, opts(probabilities=probs), segmenter=RangedOracle())
    with rasterio.open(probs) as src:  # blended on the 7 cm grid, georeferenced by its own affine
        assert (src.width, src.height) == (500, 400)
        assert src.transform.almost_equals(Affine(0.07, 0, X0, 0, -0.07, Y0))
    got = gpd.read_file(out, layer=0)
    assert len(got) == 3
    for square in squares():
        assert max(iou(g, square) for g in got.geometry) >= 0.95
    assert summary.tiles == len(tiling.plan_tiles(400, 500, 128, 32).tiles)
    said = [r.getMessage() for r in caplog.records if "pixels read at" in r.getMessage()]
    assert said == [f"{fine_scene}: 0.05 m pixels read at 0.07 m (model range 0.07-2 m); --gsd native keeps them"]
    assert caplog.records[[r.getMessage() for r in caplog.records].index(said[0])].levelno == logging.WARNING
    record = read_provenance(out, summary.layers[0].name)
    assert record["scene"]["gsd"] == [{"mode": "auto", "native_m": 0.05, "read_m": 0.07, "model_range_m": [0.07, 2.0],
                                       "outside_model_range": None}]
    assert record["parameters"]["gsd"] == "auto"


def test_native_keeps_the_5cm_pixels(fine_scene, tmp_path):
    out, probs = tmp_path / "out.gpkg", tmp_path / "probs.tif"
    pipeline.segment([fine_scene], ["squares"], out, opts(probabilities=probs, gsd="native"), segmenter=RangedOracle())
    with rasterio.open(probs) as src:
        assert (src.width, src.height) == (700, 560)
    assert iou(unary_union(gpd.read_file(out, layer=0).geometry), unary_union(squares())) >= 0.99


def test_dry_run_shows_the_read_grid_and_its_plan(fine_scene, tmp_path):
    auto = pipeline.dry_run([fine_scene], opts(), segmenter=RangedOracle())["scenes"][0]
    assert (auto["width"], auto["height"]) == (500, 400)
    assert auto["tiles"] == len(tiling.plan_tiles(400, 500, 128, 32).tiles)
    assert auto["gsd"] == {"mode": "auto", "native_m": 0.05, "read_m": 0.07, "model_range_m": [0.07, 2.0],
                           "outside_model_range": None}
    coarse = coarse_scene(tmp_path)  # 0.5 m is inside the range: not resampled
    plan = pipeline.dry_run([coarse], opts(), segmenter=RangedOracle())["scenes"][0]
    assert (plan["width"], plan["height"], plan["gsd"]["read_m"]) == (200, 200, 0.5)


def test_a_rotated_5cm_scene_is_read_at_7cm(tmp_path):
    t = Affine.translation(X0, Y0) @ Affine.rotation(20) @ Affine.scale(0.05, -0.05)
    path = tmp_path / "rot.tif"
    house = box(X0 + 8, Y0 - 14, X0 + 16, Y0 - 6)
    write_truth_scene(path, [house], width=500, height=400, transform=t)
    out, probs = tmp_path / "out.gpkg", tmp_path / "probs.tif"
    pipeline.segment([path], ["house"], out, opts(probabilities=probs), segmenter=RangedOracle())
    with rasterio.open(probs) as src:
        assert (src.width, src.height) == (357, 286)
        assert src.transform.almost_equals(t @ Affine.scale(500 / 357, 400 / 286))
    assert iou(gpd.read_file(out, layer=0).geometry.item(), house) >= 0.95


def test_geographic_scene_gsd_in_metres(tmp_path):
    # ~5 cm pixels at the equator in degrees: 0.05 / 1.113 m per 1e-5 degree of longitude
    step = 0.05 / GEO_EQUATOR_M[0] * 1e-5
    path = tmp_path / "geo.tif"
    write_truth_scene(path, [], width=300, height=300, transform=Affine(step, 0, 10.0, 0, -step, 0.0001), crs="EPSG:4326")
    plan = pipeline.dry_run([path], opts(), segmenter=RangedOracle())["scenes"][0]
    assert plan["gsd"]["native_m"] == pytest.approx(0.0498, abs=2e-4)  # latitude degrees are a little shorter
    assert plan["gsd"]["read_m"] == 0.07 and plan["width"] == round(300 * 0.05 / 0.07)


# ------------------------------------------------------------------ change mode


def test_change_pair_read_on_one_coarser_grid(tmp_path):
    old = [box(X0 + 3, Y0 - 9, X0 + 9, Y0 - 3)]
    new = box(X0 + 20, Y0 - 20, X0 + 28, Y0 - 12)
    before, after = tmp_path / "before.tif", tmp_path / "after.tif"
    write_truth_scene(before, old, width=700, height=560, transform=Affine(0.05, 0, X0, 0, -0.05, Y0))
    write_truth_scene(after, [*old, new], width=900, height=720, seed=1,
                      transform=Affine(0.04, 0, X0 - 0.01, 0, -0.04, Y0 + 0.02))
    out, probs = tmp_path / "change.gpkg", tmp_path / "probs.tif"
    summary = pipeline.change(before, after, ["new buildings"], out, opts(probabilities=probs),
                              segmenter=RangedOracle())
    with rasterio.open(probs) as src:
        assert (src.width, src.height) == (500, 400)
    got = gpd.read_file(out, layer=0)
    assert iou(unary_union(got.geometry), new) >= 0.95
    record = read_provenance(out, summary.layers[0].name)
    assert record["scene"]["gsd"][0]["read_m"] == 0.07  # one entry per scene; a pair is one scene


# ------------------------------------------------------------------ options: CLI and batch


@pytest.fixture
def oracle(monkeypatch):
    model = RangedOracle(tile_size=128, overlap=16)
    monkeypatch.setattr(pipeline, "load_segmenter", lambda *a, **k: model)
    return model


def test_cli_gsd_forces_and_dry_run_shows_it(oracle, tmp_path):
    coarse = coarse_scene(tmp_path)  # 0.5 m, 200 x 200
    r = CliRunner().invoke(cli, ["segment", str(coarse), "q", "-o", str(tmp_path / "o.gpkg"), "--dry-run", "--json",
                                 "--gsd", "0.3"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)["scenes"][0]
    assert (plan["width"], plan["gsd"]["mode"], plan["gsd"]["read_m"]) == (333, "metres", 0.3)
    assert "0.5 m pixels read at 0.3 m (--gsd 0.3)" in r.stderr


def test_cli_refuses_a_bad_gsd(oracle, tmp_path):
    r = CliRunner().invoke(cli, ["segment", str(coarse_scene(tmp_path)), "q", "-o", str(tmp_path / "o.gpkg"),
                                 "--gsd", "fine"])
    assert r.exit_code == 2 and "--gsd" in r.stderr and "auto, native" in r.stderr


def test_batch_option_table_knows_gsd():
    assert RunOptions.from_mapping({"gsd": "0.3"}, "jobs.jsonl:1").gsd == 0.3
    with pytest.raises(InputError, match="jobs.jsonl:1: option gsd='x'"):
        RunOptions.from_mapping({"gsd": "x"}, "jobs.jsonl:1")


def test_the_embedded_compact_model_reads_a_5cm_scene_at_7cm(fine_scene):
    from geoseg.models.registry import load_segmenter

    model = load_segmenter("compact", device="cpu")
    assert model.info.gsd_range == (0.07, 2.0)
    plan = pipeline.dry_run([fine_scene], pipeline.RunOptions(progress=False), segmenter=model)["scenes"][0]
    assert (plan["width"], plan["height"], plan["gsd"]["read_m"]) == (500, 400, 0.07)
    assert plan["tile_size"] == model.info.tile_size
