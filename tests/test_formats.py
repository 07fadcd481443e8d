"""Vector outputs beside GeoPackage (geoseg.io.formats): GeoParquet, FlatGeobuf, GeoJSON.

Read back with geopandas and pyarrow (Debian's GDAL 3.6 has no Parquet driver) and, for FlatGeobuf
and GeoJSON, with Debian's `ogrinfo` too. The fields, values, CRS and run records must be the
GeoPackage's; writes are atomic like the GeoPackage's.
"""

import json
import shutil
import subprocess

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from affine import Affine
from click.testing import CliRunner
from shapely.geometry import box

from conftest import write_truth_scene
from geoseg.errors import InputError, OutputExistsError
from geoseg.io import formats, gpkg
from geoseg.options import RunOptions
from geoseg.run import pipeline
from geoseg.run.outputs import with_fields
from geoseg_cli.main import cli

pq = pytest.importorskip("pyarrow.parquet")

T = Affine(0.5, 0, 500000, 0, -0.5, 5000120)
TABLE_FORMATS = ["parquet", "fgb", "geojson"]
FIELDS = ["query", "target", "score", "pixel_count", "area_m2", "perimeter_m", "model", "model_version",
          "run_id", "source"]
CHANGE_FIELDS = ["before", "after", "change_type"]


@pytest.fixture
def scene(tmp_path):
    path = tmp_path / "scene.tif"
    write_truth_scene(path, [box(500020, 5000020, 500060, 5000080), box(500080, 5000010, 500100, 5000030)],
                      width=256, height=240, transform=T)
    return path


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def read_table(path):
    """geopandas' own reader: pyarrow for Parquet, GDAL (pyogrio) for the others."""
    return gpd.read_parquet(path) if str(path).endswith(".parquet") else pyogrio.read_dataframe(path)


def layer_data(name, n, crs="EPSG:32633", query=None, change=False):
    g = gpd.GeoDataFrame({"score": [0.75] * n, "pixel_count": [40] * n, "area_m2": [1.0] * n,
                          "perimeter_m": [4.0] * n},
                         geometry=[box(500000 + i, 5000000, 500001 + i, 5000001) for i in range(n)], crs=crs)
    g = with_fields(g, query=query or name, model=("m", "1"), run_id="run-1", source="s.tif")
    if change:
        g["before"], g["after"], g["change_type"] = "b.tif", "a.tif", "appeared"
    return gpkg.LayerData(name, g, query or name, {"run_id": "run-1", "query": query or name, "layer": name})


def in_raster_order(frame):
    """Top row first, then left to right (the GeoPackage's order; FlatGeobuf sorts along its index)."""
    bounds = frame.geometry.bounds
    return frame.assign(_y=-bounds["maxy"], _x=bounds["minx"]).sort_values(["_y", "_x"]).drop(
        columns=["_y", "_x"]).reset_index(drop=True)


def ogrinfo_summary(path):
    if shutil.which("ogrinfo") is None:
        pytest.skip("ogrinfo not installed (Debian: apt-get install gdal-bin; .ci/run installs it)")
    r = subprocess.run(["ogrinfo", "-ro", "-al", "-so", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


# ---------------------------------------------------------------- the same content as the GeoPackage


@pytest.mark.parametrize("fmt", TABLE_FORMATS)
def test_two_queries_one_table_same_fields_crs_and_records_as_the_geopackage(oracle, scene, tmp_path, fmt):
    ref, out = tmp_path / "ref.gpkg", tmp_path / f"out.{fmt}"
    for path in (ref, out):
        r = run("-q", "segment", scene, "--query", "Buildings", "--query", "roads!", "-o", path, "--json")
        assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert [ly["name"] for ly in summary["layers"]] == ["buildings", "roads"]

    table = read_table(out)
    ref_columns = list(pyogrio.read_dataframe(ref, layer="buildings").columns)
    assert list(table.columns) == ["layer", *ref_columns]  # the GeoPackage's fields, in its order
    assert set(FIELDS) < set(table.columns)
    assert table.crs == pyogrio.read_info(ref, layer="buildings")["crs"] == "EPSG:32633"
    assert set(shapely.get_type_id(table.geometry.values)) == {6}  # MultiPolygon, as in the GeoPackage
    assert formats.list_layers(out) == ["buildings", "roads"]
    for name in ("buildings", "roads"):
        want = in_raster_order(pyogrio.read_dataframe(ref, layer=name))
        got = in_raster_order(formats.read_layer(out, name))  # FlatGeobuf: in its spatial index's order
        assert len(got) == len(want) == 2
        assert (table["layer"] == name).sum() == len(want)
        for field in FIELDS:
            if field != "run_id":  # two runs
                assert list(got[field]) == list(want[field]), field
        assert got.geometry.normalize().geom_equals_exact(want.geometry.normalize(), 1e-9).all()
        record = formats.read_provenance(out, name)
        assert record["layer"] == name and record["query"] == got["query"][0]
        assert set(got["run_id"]) == {record["run_id"]} == {summary["run_id"]}
        assert record.keys() == gpkg.read_provenance(ref, name).keys()


def test_geoparquet_1_1_metadata_and_run_records_in_key_value_metadata(oracle, scene, tmp_path):
    out = tmp_path / "out.parquet"
    r = run("-q", "segment", scene, "--query", "buildings", "--query", "nothing", "-o", out, "--json")
    assert r.exit_code == 0, r.stderr
    schema = pq.read_schema(out)
    geo = json.loads(schema.metadata[b"geo"])
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry"
    column = geo["columns"]["geometry"]
    assert column["encoding"] == "WKB" and column["geometry_types"] == ["MultiPolygon"]
    assert column["crs"]["id"] == {"authority": "EPSG", "code": 32633}  # PROJJSON
    doc = json.loads(schema.metadata[b"geoseg"])
    assert [(e["name"], e["query"]) for e in doc["layers"]] == [("buildings", "buildings"), ("nothing", "nothing")]
    assert doc["layers"][0]["provenance"]["run_id"] == json.loads(r.stdout)["run_id"]
    assert doc["layer_column"] == "layer" and doc["format"] == "parquet"
    for field in ("layer", "query", "target", "model", "model_version", "run_id", "source"):
        assert str(schema.field(field).type) == "string", field
    assert str(schema.field("pixel_count").type) == "int64" and str(schema.field("score").type) == "double"
    assert not (tmp_path / "out.parquet.geoseg.json").exists()  # Parquet keeps the records inside


def test_empty_result_keeps_typed_columns_in_parquet_and_fgb(tmp_path):
    for fmt in ("parquet", "fgb"):
        out = tmp_path / f"e.{fmt}"
        formats.write_layers(out, [layer_data("empty", 0)])
        table = read_table(out)
        assert len(table) == 0 and list(table.columns) == ["layer", "score", "pixel_count", "area_m2",
                                                           "perimeter_m", *FIELDS[:2], *FIELDS[6:], "geometry"]
        assert formats.read_provenance(out, "empty")["query"] == "empty"
    assert str(pq.read_schema(tmp_path / "e.parquet").field("query").type) == "string"


# ---------------------------------------------------------------- FlatGeobuf and GeoJSON: GDAL 3.6 reads them


@pytest.mark.parametrize("fmt", ["fgb", "geojson"])
def test_ogrinfo_reads_fgb_and_geojson_and_the_sidecar_holds_the_records(oracle, scene, tmp_path, fmt):
    out = tmp_path / f"out.{fmt}"
    r = run("-q", "segment", scene, "--query", "buildings", "--query", "roads", "-o", out, "--json")
    assert r.exit_code == 0, r.stderr
    text = ogrinfo_summary(out)
    assert "Geometry: Multi Polygon" in text and "Feature Count: 4" in text
    assert 'ID["EPSG",32633]' in text
    for field, kind in [("layer", "String"), ("query", "String"), ("score", "Real"), ("area_m2", "Real"),
                        ("run_id", "String"), ("source", "String")]:
        assert f"{field}: {kind}" in text, field
    sidecar = json.loads((tmp_path / f"out.{fmt}.geoseg.json").read_text())
    assert [e["name"] for e in sidecar["layers"]] == ["buildings", "roads"]
    assert [e["features"] for e in sidecar["layers"]] == [2, 2]
    assert sidecar["layers"][1]["provenance"]["query"] == "roads"
    assert sidecar["crs"].startswith("PROJCRS")


# ---------------------------------------------------------------- change mode and --append


@pytest.mark.parametrize("fmt", TABLE_FORMATS)
def test_change_fields_and_append_adds_rows_keeps_records(oracle, tmp_path, fmt):
    before, after = tmp_path / "b.tif", tmp_path / "a.tif"
    write_truth_scene(before, [], width=256, height=256, transform=T)
    write_truth_scene(after, [box(500020, 5000020, 500060, 5000080)], width=256, height=256, transform=T)
    out = tmp_path / f"c.{fmt}"
    r = run("-q", "change", before, after, "new buildings", "-o", out, "--json")
    assert r.exit_code == 0, r.stderr
    first = formats.read_provenance(out, "new_buildings")
    r = run("-q", "change", before, after, "demolished buildings", "-o", out, "--append")
    assert r.exit_code == 0, r.stderr
    table = read_table(out)
    assert set(table.columns) == {"layer", *FIELDS, *CHANGE_FIELDS, "geometry"}
    assert list(table.columns)[0] == "layer"
    assert list(table["layer"]) == ["new_buildings"]  # nothing disappeared: an empty layer, no rows
    assert list(table["change_type"]) == ["appeared"]
    assert table["before"][0] == str(before) and table["after"][0] == str(after)
    assert formats.list_layers(out) == ["new_buildings", "demolished_buildings"]
    assert formats.read_provenance(out, "new_buildings") == first  # kept as it was
    assert formats.read_provenance(out, "demolished_buildings")["change_direction"] == "disappeared"

    kept = out.read_bytes()
    r = run("change", before, after, "new buildings", "-o", out, "--append")
    assert r.exit_code == 2 and "'new_buildings' already exists" in r.stderr and "--layer NAME" in r.stderr
    assert out.read_bytes() == kept


def test_append_refuses_a_file_geoseg_did_not_write_and_another_crs(tmp_path):
    fgb = tmp_path / "other.fgb"
    pyogrio.write_dataframe(layer_data("x", 1).gdf, fgb)
    with pytest.raises(InputError, match="other.fgb.geoseg.json.*--overwrite"):
        formats.write_layers(fgb, [layer_data("roads", 1)], append=True)
    plain = tmp_path / "plain.parquet"
    layer_data("x", 1).gdf.to_parquet(plain)
    with pytest.raises(InputError, match="no 'geoseg' metadata"):
        formats.check_output(plain, append=True)
    out = tmp_path / "o.parquet"
    formats.write_layers(out, [layer_data("roads", 1)])
    with pytest.raises(InputError, match="EPSG:4326 but the file holds EPSG:32633"):
        formats.write_layers(out, [layer_data("rivers", 1, crs="EPSG:4326")], append=True)
    formats.write_layers(out, [layer_data("rivers", 2, query="Rivers", change=True)], append=True)
    table = read_table(out)
    assert list(table["layer"]) == ["roads", "rivers", "rivers"]
    assert table["change_type"].isna().tolist() == [True, False, False]  # a column only some layers have
    assert formats.list_layers(out) == ["roads", "rivers"]
    # a missing file is created by --append, as for a GeoPackage
    formats.write_layers(tmp_path / "new.geojson", [layer_data("roads", 1)], append=True)
    assert formats.list_layers(tmp_path / "new.geojson") == ["roads"]


# ---------------------------------------------------------------- atomic writes


@pytest.mark.parametrize("fmt", TABLE_FORMATS)
def test_existing_output_needs_overwrite_and_failures_leave_it_untouched(tmp_path, monkeypatch, fmt):
    out = tmp_path / f"o.{fmt}"
    formats.write_layers(out, [layer_data("roads", 2)])
    sidecar = tmp_path / f"o.{fmt}.geoseg.json"
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(OutputExistsError, match="--overwrite"):
        formats.write_layers(out, [layer_data("rivers", 1)])

    def broken(frame, path, *a, **k):
        with open(path, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(formats, "_write_geoparquet", lambda table, tmp, records: broken(table, tmp))
    monkeypatch.setattr(formats.pyogrio, "write_dataframe", broken)
    with pytest.raises(OSError, match="disk full"):
        formats.write_layers(out, [layer_data("rivers", 1)], overwrite=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp files either
    monkeypatch.undo()
    formats.write_layers(out, [layer_data("rivers", 3)], overwrite=True)
    assert formats.list_layers(out) == ["rivers"] and len(read_table(out)) == 3
    assert sidecar.exists() == (fmt != "parquet")


def test_sidecar_rename_failure_puts_the_previous_file_back(tmp_path, monkeypatch):
    out = tmp_path / "o.fgb"
    formats.write_layers(out, [layer_data("roads", 2)])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_replace = formats.os.replace

    def replace(src, dst):
        if str(dst).endswith(".geoseg.json"):
            raise OSError("no space for the sidecar")
        real_replace(src, dst)

    monkeypatch.setattr(formats.os, "replace", replace)
    with pytest.raises(OSError, match="sidecar"):
        formats.write_layers(out, [layer_data("rivers", 5)], overwrite=True)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# ---------------------------------------------------------------- choosing the format


def test_unknown_extension_and_contradicting_format_exit_2(tmp_path):
    probs = tmp_path / "p.tif"
    data = np.zeros((1, 64, 64), np.float32)
    data[0, 10:30, 20:40] = 0.9
    with rasterio.open(probs, "w", driver="GTiff", width=64, height=64, count=1, dtype="float32",
                       crs="EPSG:32633", transform=T) as dst:
        dst.write(data)
    r = run("vectorize", probs, "-o", tmp_path / "out.shp")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1
    assert all(ext in r.stderr for ext in (".gpkg", ".parquet", ".fgb", ".geojson", "--format")), r.stderr
    r = run("vectorize", probs, "-o", tmp_path / "out.gpkg", "--format", "parquet")
    assert r.exit_code == 2 and "--format" in r.stderr and not (tmp_path / "out.gpkg").exists()
    # --format names the format of a file whose extension does not
    r = run("-q", "vectorize", probs, "-o", tmp_path / "out.json", "--format", "geojson", "--query", "field",
            "--preview", tmp_path / "p.png")
    assert r.exit_code == 0, r.stderr
    assert pyogrio.read_info(tmp_path / "out.json")["driver"] == "GeoJSON"
    assert len(formats.read_layer(tmp_path / "out.json", "field", "geojson")) == 1
    assert (tmp_path / "p.png").stat().st_size > 0 and (tmp_path / "out.json.geoseg.json").exists()
    # vectorize writes each format by its extension
    for fmt in TABLE_FORMATS:
        r = run("-q", "vectorize", probs, "-o", tmp_path / f"v.{fmt}", "--query", "field")
        assert r.exit_code == 0, r.stderr
        assert formats.read_provenance(tmp_path / f"v.{fmt}", "field")["command"] == "vectorize"


def test_python_api_and_batch_options_take_the_format(oracle, scene, tmp_path):
    summary = pipeline.segment([scene], ["buildings"], tmp_path / "api.data",
                               RunOptions(output_format="parquet", progress=False))
    assert summary.layers[0].features == 2
    assert formats.read_layer(tmp_path / "api.data", "buildings", "parquet")["query"].tolist() == ["buildings"] * 2
    assert RunOptions.from_mapping({"format": "fgb"}).output_format == "fgb"
    with pytest.raises(InputError, match="format='shp'.*gpkg, parquet, fgb, geojson"):
        RunOptions.from_mapping({"format": "shp"}, "jobs.jsonl:1")
