"""End to end through the library: georeferencing to the pixel, change mode, outputs, provenance."""

import json

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import rasterio.features
from affine import Affine
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.ops import unary_union

from conftest import write_truth_scene
from doubles import BandOracle, count_calls
from geoseg import provenance, queries
from geoseg.errors import InputError, OutputExistsError
from geoseg.io import gpkg, raster
from geoseg.models.base import ChangeAware
from geoseg.run import engine, pipeline, revectorize

T = Affine(0.5, 0, 500000, 0, -0.5, 5000120)


def opts(**kw):
    return pipeline.RunOptions(progress=False, **kw)


def feature_layers(path):
    return [name for name, geom in pyogrio.list_layers(path) if geom is not None]


def iou(a, b):
    return a.intersection(b).area / a.union(b).area


def rotated_house(cx, cy, w, h, angle_deg):
    from shapely import affinity

    return affinity.rotate(box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), angle_deg)


def truth_polygons_utm():
    # buildings, a lake and a field, in metres; sizes chosen well above the 0.5 m pixel
    return [
        rotated_house(500040, 4999960, 30, 18, 20),
        rotated_house(500150, 4999880, 40, 25, -35),
        box(500210, 4999990, 500290, 5000100),
        Polygon([(500020, 4999800), (500120, 4999760), (500100, 4999700), (500010, 4999720)]),
    ]


def test_georeferencing_utm_to_the_pixel(tmp_path):
    polys = truth_polygons_utm()
    scene = tmp_path / "utm.tif"
    write_truth_scene(scene, polys, width=640, height=900, transform=Affine(0.5, 0, 500000, 0, -0.5, 5000120))
    out = tmp_path / "out.gpkg"
    summary = pipeline.segment([scene], ["buildings"], out, opts(tile_size=256, overlap=32), segmenter=BandOracle())
    got = gpd.read_file(out, layer=0)
    assert got.crs.to_epsg() == 32633 and summary.layers[0].features == len(got) == 4
    assert iou(unary_union(got.geometry), unary_union(polys)) >= 0.98


def test_georeferencing_epsg4326_and_geodesic_area(tmp_path):
    # ~1 m pixels at 45N: 1/111320 deg in latitude, 1/(111320 cos 45) in longitude
    dy, dx = 1 / 111320, 1 / (111320 * np.cos(np.radians(45)))
    t = Affine(dx, 0, 15.0, 0, -dy, 45.0)
    polys = [box(15.0 + 40 * dx, 45.0 - 120 * dy, 15.0 + 100 * dx, 45.0 - 60 * dy),
             rotated_house(15.0 + 200 * dx, 45.0 - 200 * dy, 50 * dx, 30 * dy, 0)]
    scene = tmp_path / "geo.tif"
    write_truth_scene(scene, polys, width=300, height=300, transform=t, crs="EPSG:4326")
    out = tmp_path / "out.gpkg"
    pipeline.segment([scene], ["fields"], out, opts(tile_size=128, overlap=32), segmenter=BandOracle())
    got = gpd.read_file(out, layer=0)
    assert got.crs.to_epsg() == 4326
    assert iou(unary_union(got.geometry), unary_union(polys)) >= 0.98
    # areas in m2 on the ellipsoid: the 60 x 60 px square is ~3600 m2
    assert sorted(got["area_m2"].round(-1))[-1] == pytest.approx(3600, rel=0.03)


def test_change_pair_on_different_grids(tmp_path):
    # before: two buildings; after (on a grid shifted by 0.25 px, other pixel size): one more
    t_before = Affine(0.5, 0, 500000, 0, -0.5, 5000120)
    t_after = Affine(0.4, 0, 499999.9, 0, -0.4, 5000120.1)
    old = truth_polygons_utm()[:2]
    new = rotated_house(500250, 5000030, 60, 40, 10)
    before, after = tmp_path / "before.tif", tmp_path / "after.tif"
    write_truth_scene(before, old, width=640, height=900, transform=t_before)
    write_truth_scene(after, [*old, new], width=800, height=1125, transform=t_after, seed=1)
    out = tmp_path / "change.gpkg"
    summary = pipeline.change(before, after, ["new buildings"], out, opts(tile_size=256, overlap=32),
                              segmenter=BandOracle())
    got = gpd.read_file(out, layer=0)
    assert set(got["change_type"]) == {"appeared"} and summary.overlap_fraction > 0.99
    assert iou(unary_union(got.geometry), new) >= 0.98
    assert set(got["before"]) == {str(before)} and set(got["after"]) == {str(after)}


def test_change_direction_words():
    assert queries.change_direction("new roads") == "appeared"
    assert queries.change_direction("Demolished buildings") == "disappeared"
    assert queries.change_direction("changed buildings") == "both"


def test_every_trained_change_wording_names_its_direction():
    """A change-native model is asked once per direction when a query names none, so a wording
    it was trained on ("missing buildings", "road construction", "flood water") must parse to its
    own direction, or it would be asked as "new missing buildings". Damage names no direction: asked
    both ways ("new damaged buildings" and "removed damaged buildings", whose union also holds the
    destroyed footprints), compact-change scores higher on the composited damage pairs than asked
    as "appeared" only (model card, "Release 0.6.0 of compact-change")."""
    from geoseg.train.real import RealVocabulary
    from geoseg.train.synth.vocab import CHANGE_PHRASES

    expected = {"new_buildings": {"appeared"}, "new_roads": {"appeared"}, "flooding": {"appeared"},
                "demolished_buildings": {"disappeared"}, "damaged_buildings": {"appeared", "both"}}
    real_pairs = RealVocabulary().change  # what real and composited pairs are asked
    assert queries.change_direction("damaged buildings") == "both"
    assert "damaged buildings" in real_pairs["damaged_buildings"]
    for kind, directions in expected.items():
        for phrase in {*CHANGE_PHRASES[kind], *real_pairs.get(kind, ())}:
            assert queries.change_direction(phrase) in directions, phrase


def test_single_date_model_change_both_directions(tmp_path):
    t = Affine(0.5, 0, 500000, 0, -0.5, 5000120)
    a, b = truth_polygons_utm()[:2]
    before, after = tmp_path / "b.tif", tmp_path / "a.tif"
    write_truth_scene(before, [a], width=640, height=900, transform=t)
    write_truth_scene(after, [b], width=640, height=900, transform=t, seed=2)

    model = BandOracle()
    assert not isinstance(model, ChangeAware)  # asked through PerDateChange: one date per predict call
    out = tmp_path / "c.gpkg"
    pipeline.change(before, after, ["changed buildings"], out, opts(tile_size=256), segmenter=model)
    got = gpd.read_file(out, layer=0)
    appeared = unary_union(got[got.change_type == "appeared"].geometry)
    disappeared = unary_union(got[got.change_type == "disappeared"].geometry)
    assert iou(appeared, b) > 0.95 and iou(disappeared, a) > 0.95


def test_multi_query_encodes_each_tile_once(tmp_path):
    scene = tmp_path / "s.tif"
    write_truth_scene(scene, truth_polygons_utm(), width=640, height=900, transform=Affine(0.5, 0, 500000, 0, -0.5, 5000120))
    model = BandOracle()
    out = tmp_path / "m.gpkg"
    summary = pipeline.segment([scene], ["buildings", "roads", "lakes"], out, opts(tile_size=256, overlap=32, batch_size=64), segmenter=model)
    assert model.calls == 1  # 6 tiles, 3 queries, one call
    assert feature_layers(out) == ["buildings", "roads", "lakes"]
    assert [layer.features for layer in summary.layers] == [4, 4, 4]


def test_queries_with_the_same_slug_get_distinct_layers(tmp_path):
    scene = tmp_path / "s.tif"
    write_truth_scene(scene, truth_polygons_utm(), width=320, height=240, transform=Affine(0.5, 0, 500000, 0, -0.5, 5000120))
    out = tmp_path / "m.gpkg"
    summary = pipeline.segment([scene], ["Roads", "roads!"], out, opts(tile_size=256), segmenter=BandOracle())
    assert feature_layers(out) == ["roads", "roads_2"] == [layer.name for layer in summary.layers]


def test_probability_and_mask_cogs_and_revectorize(tmp_path):
    scene = tmp_path / "s.tif"
    polys = truth_polygons_utm()
    write_truth_scene(scene, polys, width=640, height=900, transform=Affine(0.5, 0, 500000, 0, -0.5, 5000120))
    probs, mask, out = tmp_path / "p.tif", tmp_path / "m.tif", tmp_path / "o.gpkg"
    pipeline.segment([scene], ["buildings"], out, opts(tile_size=256, probabilities=probs, mask_out=mask), segmenter=BandOracle())
    with rasterio.open(probs) as p, rasterio.open(mask) as m:
        assert p.driver == "GTiff" and p.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert p.crs.to_epsg() == 32633 and p.transform == Affine(0.5, 0, 500000, 0, -0.5, 5000120)
        assert p.scales[0] == pytest.approx(1 / 254)
        assert set(np.unique(m.read(1))) <= {0, 1}
    again = tmp_path / "again.gpkg"
    summary = revectorize.vectorize_raster(probs, again, opts(threshold=0.6))
    got = gpd.read_file(again, layer=0)
    assert summary.layers[0].features == 4 and set(got["query"]) == {"buildings"}
    assert iou(unary_union(got.geometry), unary_union(polys)) >= 0.98


def test_polygons_are_built_from_the_rows_as_they_are_blended(tmp_path, monkeypatch):
    from geoseg import vectorize
    from geoseg.vectorize import polygons

    monkeypatch.setattr(polygons, "STREAMED_BLOCK", 48)  # many block rows, a feed of 96 rows
    scene = tmp_path / "s.tif"
    write_truth_scene(scene, truth_polygons_utm(), width=640, height=900, transform=T)
    probs, out = tmp_path / "p.tif", tmp_path / "o.gpkg"
    from_file = count_calls(monkeypatch, vectorize, "vectorize_probabilities")
    streamed = count_calls(monkeypatch, vectorize, "vectorize_rows")
    pipeline.segment([scene], ["buildings"], out, opts(tile_size=128, overlap=16, probabilities=probs),
                     segmenter=BandOracle())
    assert len(streamed) == 1 and not from_file  # the raster is never read back
    got = gpd.read_file(out, layer=0)
    again = vectorize.vectorize_probabilities(probs, vectorize.VectorizeOptions())
    assert len(got) == len(again) == 4  # the layer's MultiPolygons hold the very same vertices
    assert all(a.equals_exact(MultiPolygon([b]), 0) for a, b in zip(got.geometry, again.geometry, strict=True))
    assert got["score"].tolist() == again["score"].tolist()


def test_nodata_tiles_skipped_and_no_polygons_there(tmp_path):
    scene = tmp_path / "nd.tif"
    polys = truth_polygons_utm()
    write_truth_scene(scene, polys, width=640, height=900, transform=Affine(0.5, 0, 500000, 0, -0.5, 5000120),
                      nodata=0, nodata_cols=300)  # 640 x 900 px, 128 px tiles: 5 x 8
    out = tmp_path / "o.gpkg"
    summary = pipeline.segment([scene], ["x"], out, opts(tile_size=128, overlap=0), segmenter=BandOracle())
    assert summary.tiles == 5 * 8 and summary.tiles_skipped_nodata == 2 * 8  # first two tile columns
    got = gpd.read_file(out, layer=0)
    assert got.total_bounds[0] >= 500000 + 300 * 0.5 - 1e-6


def test_provenance_and_hostile_query_round_trip(tmp_path):
    scene = tmp_path / "s.tif"
    write_truth_scene(scene, truth_polygons_utm(), width=320, height=240, transform=Affine(0.5, 0, 500000, 0, -0.5, 5000120))
    query = "b'\"; DROP TABLE gpkg_contents;-- 🏠\nline two " + "x" * 10_000
    out = tmp_path / "h.gpkg"
    summary = pipeline.segment([scene], [query], out, opts(tile_size=256), segmenter=BandOracle())
    got = gpd.read_file(out, layer=summary.layers[0].name)
    assert (got["query"] == query).all()
    meta = pyogrio.read_info(out, layer=summary.layers[0].name)
    assert "fid" not in [f.lower() for f in meta["fields"]]
    from geoseg.io.gpkg import read_provenance

    record = read_provenance(out, summary.layers[0].name)
    assert record["query"] == query and record["run_id"] == summary.run_id
    assert record["model"]["name"] == "band-oracle"
    assert len(record["inputs"][str(scene)]["sha256"]) == 64


def test_existing_output_untouched_without_overwrite(tmp_path):
    scene = tmp_path / "s.tif"
    write_truth_scene(scene, truth_polygons_utm(), width=320, height=240, transform=Affine(0.5, 0, 500000, 0, -0.5, 5000120))
    out = tmp_path / "o.gpkg"
    out.write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        pipeline.segment([scene], ["q"], out, opts(), segmenter=BandOracle())
    assert out.read_bytes() == b"precious"


def test_empty_query_refused():
    with pytest.raises(InputError, match="query is empty"):
        queries.validate_queries(["  "])


def test_found_nothing_is_an_empty_layer(tmp_path):
    scene = tmp_path / "s.tif"
    write_truth_scene(scene, [], width=320, height=240, transform=Affine(0.5, 0, 500000, 0, -0.5, 5000120))
    out = tmp_path / "e.gpkg"
    summary = pipeline.segment([scene], ["unicorns"], out, opts(tile_size=256), segmenter=BandOracle())
    assert summary.status == "empty" and len(gpd.read_file(out, layer=0)) == 0
    assert json.loads(json.dumps(summary.to_dict()))["status"] == "empty"


def test_several_scenes_in_different_crs_into_one_layer(tmp_path):
    polys = truth_polygons_utm()
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    write_truth_scene(a, polys[:2], width=640, height=900, transform=Affine(0.5, 0, 500000, 0, -0.5, 5000120))
    dy, dx = 1 / 111320, 1 / (111320 * np.cos(np.radians(45)))
    geo = [box(15.0 + 40 * dx, 45.0 - 120 * dy, 15.0 + 100 * dx, 45.0 - 60 * dy)]
    write_truth_scene(b, geo, width=200, height=200, transform=Affine(dx, 0, 15.0, 0, -dy, 45.0), crs="EPSG:4326")
    out = tmp_path / "two.gpkg"
    pipeline.segment([a, b], ["things"], out, opts(tile_size=256), segmenter=BandOracle())
    got = gpd.read_file(out, layer=0)
    assert got.crs.to_epsg() == 32633 and sorted(set(got["source"])) == sorted([str(a), str(b)])
    from_b = got[got.source == str(b)].to_crs(4326)
    assert iou(unary_union(from_b.geometry), geo[0]) > 0.97


# ------------------------------------------------------------------ real files (../shared/data)


def test_landsat_epsg4326_areas_in_square_metres(shared_data, tmp_path):
    from pyproj import Geod

    from doubles import DarkOracle

    scene = shared_data / "georef-landsat-pucallpa" / "2020.tif"
    out = tmp_path / "water.gpkg"
    pipeline.segment([scene], ["river"], out, opts(min_area="20px"), segmenter=DarkOracle())
    got = gpd.read_file(out, layer=0)
    assert got.crs.to_epsg() == 4326 and len(got) > 0
    geod = Geod(ellps="WGS84")
    for geom, area in zip(got.geometry[:5], got["area_m2"][:5], strict=True):
        expected = abs(geod.geometry_area_perimeter(geom)[0])
        assert area == pytest.approx(expected, rel=1e-6)
    # ~0.000808 deg pixels at 8.3 S are ~90 m: each pixel is roughly 8000 m2, never 6.5e-7 "deg2"
    per_pixel = got["area_m2"] / got["pixel_count"]
    assert per_pixel.between(7000, 9000).all()


def test_rgb_byte_nodata_never_becomes_polygons(shared_data, tmp_path):
    from shapely.geometry import shape

    from doubles import DarkOracle

    scene = shared_data / "georef-rasterio" / "RGB.byte.tif"
    out = tmp_path / "dark.gpkg"
    summary = pipeline.segment([scene], ["dark things"], out, opts(tile_size=128, overlap=16), segmenter=DarkOracle(128, 16, 0.5))
    assert summary.tiles_skipped_nodata > 0
    got = gpd.read_file(out, layer=0)
    with rasterio.open(scene) as src:
        valid = src.dataset_mask() > 0
        footprint = unary_union([shape(g) for g, v in rasterio.features.shapes(valid.astype("uint8"), transform=src.transform) if v == 1])
    # the dark nodata collar (value 0) is not data: no polygon reaches outside the valid footprint
    assert unary_union(got.geometry).difference(footprint.buffer(1e-6)).area == pytest.approx(0, abs=1.0)


@pytest.mark.parametrize("crs", ["EPSG:32633", "EPSG:4326"])
@pytest.mark.parametrize("query", ["water", "fields"])
def test_synthetic_scene_oracle_matches_truth_polygons(tmp_path, crs, query):
    """The synthetic ground truth, run through the whole pipeline, lands on its own polygons.

    (Water and fields: large shapes, so the pixel staircase of any raster, not the pipeline,
    stays far below the 2 % budget; small rotated buildings lose ~4 % to that staircase alone.)
    """
    from geoseg.train.synth import write_scene

    synth = write_scene(tmp_path / "scene.tif", 7, 512, 512, 0.5, crs=crs)
    with rasterio.open(synth.path) as src:
        profile, image = src.profile, src.read()
    profile.update(count=4, photometric="minisblack")
    with_truth = tmp_path / "with_truth.tif"
    with rasterio.open(with_truth, "w", **profile) as dst:
        dst.write(np.concatenate([image, synth.truth_mask(query)[None].astype(image.dtype) * 255]))
    out = tmp_path / "out.gpkg"
    pipeline.segment([with_truth], [query], out, opts(tile_size=256, overlap=32), segmenter=BandOracle())
    got = gpd.read_file(out, layer=0)
    assert got.crs == synth.crs
    assert iou(unary_union(got.geometry), unary_union(synth.truth_polygons(query).geometry)) >= 0.98


def test_dry_run_reports_the_weights_of_torch_backed_models_only():
    import torch

    class Backed(BandOracle):
        def __init__(self):
            super().__init__(tile_size=128)
            self.model = torch.nn.Linear(256, 1024)  # (256 * 1024 + 1024) float32 = 1.0 MiB

    assert engine.parameter_megabytes(Backed()) == 1.0
    assert engine.parameter_megabytes(BandOracle(tile_size=128)) == 0.0


def test_each_input_is_hashed_once_per_run_whatever_the_number_of_queries(tmp_path, monkeypatch):
    scene = tmp_path / "s.tif"
    write_truth_scene(scene, [box(500020, 5000020, 500060, 5000080)], width=128, height=128, transform=T)
    hashed = count_calls(monkeypatch, provenance, "sha256_file")
    five = [f"query {n}" for n in range(5)]
    summary = pipeline.segment([scene], five, tmp_path / "o.gpkg", opts(), segmenter=BandOracle(tile_size=128))
    assert len(summary.layers) == 5 and hashed == [(scene,)]
    for layer in summary.layers:  # every layer still carries the hash
        assert gpkg.read_provenance(tmp_path / "o.gpkg", layer.name)["inputs"][str(scene)]["sha256"]


@pytest.mark.parametrize("model_bands,bands", [(3, None), (4, "1,2,3"), (4, None)])
def test_change_computes_the_statistics_once(tmp_path, monkeypatch, model_bands, bands):
    before, after = tmp_path / "b.tif", tmp_path / "a.tif"
    write_truth_scene(before, [], width=128, height=128, transform=T)
    write_truth_scene(after, [box(500020, 5000020, 500060, 5000080)], width=128, height=128, transform=T)
    stats = count_calls(monkeypatch, raster, "compute_stats")
    hashed = count_calls(monkeypatch, provenance, "sha256_file")
    model = BandOracle(bands=model_bands, tile_size=128)
    monkeypatch.setattr(pipeline, "load_segmenter", lambda *a, **k: model)
    pipeline.change(before, after, ["new buildings", "changed roads"], tmp_path / "c.gpkg", opts(bands=bands))
    assert len(stats) == 1 and len(hashed) == 2
