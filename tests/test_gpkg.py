"""GeoPackage writer: schema, provenance, QGIS style, atomicity, append/overwrite, hostile text."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely
from pyproj import CRS
from shapely.geometry import MultiPolygon, Polygon, box

from geoseg.errors import InputError, OutputExistsError
from geoseg.io import gpkg
from geoseg.io.gpkg import (
    LayerData,
    check_output_path,
    read_description,
    read_provenance,
    unique_layer_names,
    write_geopackage,
)
from geoseg.io.qgis_style import style_colour
from geoseg.queries import layer_name_for

HOSTILE = [
    "it's a \"quoted\" query",
    "'); DROP TABLE gpkg_contents;--",
    "roads\nand\r\nrivers\tand tabs",
    "🏠 houses 🌊 near water 🚧",
    "bâtiments détruits, Straße, 建物, مباني",
    "x" * 10_000,
    "control \x01\x07\x1f chars and ]]> and <tag attr='1'>&amp;",
    "e\u0301 combining, \u200b zero width, \u202e right-to-left",
]


def frame(n: int = 2, crs="EPSG:32618", query: str = "buildings") -> gpd.GeoDataFrame:
    geoms = [box(500000 + 10 * i, 4000000, 500005 + 10 * i, 4000005) for i in range(n)]
    return gpd.GeoDataFrame(
        {
            "query": [query] * n, "target": [query] * n, "score": np.linspace(0.5, 0.9, n),
            "area_m2": [25.0] * n, "perimeter_m": [20.0] * n, "model": ["compact"] * n,
            "model_version": ["1.0"] * n, "run_id": ["r1"] * n, "source": ["scene.tif"] * n,
        },
        geometry=geoms,
        crs=crs,
    )


def record(query: str = "buildings", **extra) -> dict:
    return {"run_id": "r1", "command": "segment", "query": query, "model": {"name": "compact", "version": "1.0"},
            "parameters": {"threshold": 0.5, "tile_size": [512, 512]}, **extra}


def layer(name="buildings", query="buildings", gdf=None, **extra) -> LayerData:
    return LayerData(name, frame(query=query) if gdf is None else gdf, query, record(query, **extra))


def sql(path: Path, query: str, params=()) -> list[tuple]:
    con = sqlite3.connect(path)
    try:
        return con.execute(query, params).fetchall()
    finally:
        con.close()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------ schema


def test_layer_schema_geometry_crs_and_no_fid_attribute(tmp_path):
    out = tmp_path / "out.gpkg"
    gdf = frame(3)
    gdf["FID"] = [7, 7, 7]  # a dataframe carrying its own fid: must never become an attribute
    gdf["Extra_Field"] = ["a", "b", "c"]
    write_geopackage(out, [layer(gdf=gdf)])
    info = pyogrio.read_info(out, layer="buildings")
    assert info["geometry_type"] == "MultiPolygon"
    assert info["geometry_name"] == "geom"
    assert info["fid_column"] == "fid"
    assert info["features"] == 3
    assert "fid" not in [f.lower() for f in info["fields"]]
    assert list(info["fields"]) == ["query", "target", "score", "area_m2", "perimeter_m", "model",
                                    "model_version", "run_id", "source", "extra_field"]
    assert CRS(info["crs"]).to_epsg() == 32618
    back = pyogrio.read_dataframe(out, layer="buildings", fid_as_index=True)
    assert list(back.index) == [1, 2, 3]  # GDAL's own fid, unique
    assert (back.geometry.geom_type == "MultiPolygon").all() and back.geometry.is_valid.all()
    assert back.geometry.iloc[0].equals(gdf.geometry.iloc[0])
    assert back["score"].tolist() == pytest.approx(gdf["score"].tolist())
    # spatial index present and registered
    assert sql(out, "SELECT count(*) FROM sqlite_master WHERE name = 'rtree_buildings_geom'") == [(1,)]


def test_geopackage_version_is_1_2(tmp_path):
    out = tmp_path / "out.gpkg"
    write_geopackage(out, [layer()])
    assert sql(out, "PRAGMA application_id") == [(0x47504B47,)]
    assert sql(out, "PRAGMA user_version") == [(10200,)]


def test_non_epsg_crs_preserved(tmp_path):
    custom = CRS.from_proj4("+proj=aea +lat_1=29.5 +lat_2=45.5 +lat_0=37.5 +lon_0=-96 +datum=WGS84 +units=m")
    out = tmp_path / "out.gpkg"
    write_geopackage(out, [layer(gdf=frame(crs=custom))])
    back = pyogrio.read_dataframe(out, layer="buildings")
    assert CRS(back.crs).equals(custom, ignore_axis_order=True)


def test_invalid_and_polygon_geometries_become_valid_multipolygons(tmp_path):
    bowtie = Polygon([(0, 0), (2, 2), (2, 0), (0, 2), (0, 0)])
    gdf = gpd.GeoDataFrame({"score": [0.5, 0.6, 0.7]},
                           geometry=[bowtie, box(5, 5, 6, 6), MultiPolygon([box(8, 8, 9, 9), box(10, 8, 11, 9)])],
                           crs="EPSG:32618")
    out = tmp_path / "out.gpkg"
    write_geopackage(out, [LayerData("shapes", gdf, "shapes", {})])
    back = pyogrio.read_dataframe(out, layer="shapes")
    assert (back.geometry.geom_type == "MultiPolygon").all() and back.geometry.is_valid.all()
    assert back.geometry.iloc[0].area == pytest.approx(2.0)
    assert len(back.geometry.iloc[2].geoms) == 2


def test_empty_layer_keeps_schema(tmp_path):
    empty = frame(0)
    empty = empty.astype({c: object for c in ["score", "area_m2"]})  # e.g. built from nothing
    out = tmp_path / "out.gpkg"
    write_geopackage(out, [layer(gdf=empty)])
    info = pyogrio.read_info(out, layer="buildings")
    assert info["features"] == 0
    assert info["geometry_type"] == "MultiPolygon"
    assert CRS(info["crs"]).to_epsg() == 32618
    types = dict(zip(info["fields"], info["ogr_types"], strict=True))
    assert types["score"] == "OFTReal" and types["area_m2"] == "OFTReal" and types["query"] == "OFTString"
    assert read_description(out, "buildings") == "buildings"
    assert sql(out, "SELECT count(*) FROM layer_styles WHERE f_table_name = 'buildings'") == [(1,)]


def test_multiple_layers_in_one_file(tmp_path):
    out = tmp_path / "out.gpkg"
    write_geopackage(out, [layer("roads", "roads"), layer("rivers", "rivers", gdf=frame(0))])
    assert [str(n) for n in pyogrio.list_layers(out)[:, 0] if n != "layer_styles"] == ["roads", "rivers"]
    assert read_provenance(out, "rivers")["query"] == "rivers"


# -------------------------------------------------------------------------- provenance


def test_provenance_in_gdal_metadata_and_gpkg_metadata(tmp_path):
    out = tmp_path / "out.gpkg"
    rec = record(nodata=float("nan"), count=np.int64(3), path=Path("/data/scene.tif"), bands=(1, 2, 3))
    write_geopackage(out, [LayerData("buildings", frame(), "buildings", rec)])
    expected = {**record(), "nodata": "nan", "count": 3, "path": "/data/scene.tif", "bands": [1, 2, 3]}
    assert read_provenance(out, "buildings") == expected
    gdal_md = pyogrio.read_info(out, layer="buildings")["layer_metadata"]
    assert json.loads(gdal_md[gpkg.LAYER_METADATA_KEY]) == expected

    rows = sql(out, "SELECT m.md_scope, m.md_standard_uri, m.mime_type, r.reference_scope, r.table_name, "
                    "r.column_name, r.row_id_value FROM gpkg_metadata m JOIN gpkg_metadata_reference r "
                    "ON r.md_file_id = m.id ORDER BY m.id")
    assert ("dataset", "https://geoseg.dev/provenance", "application/json", "table", "buildings", None, None) in rows
    assert ("dataset", "http://mrcc.com/qgis.dtd", "text/xml", "table", "buildings", None, None) in rows
    assert ("dataset", "http://gdal.org", "text/xml", "table", "buildings", None, None) in rows
    extensions = sql(out, "SELECT table_name, extension_name, scope FROM gpkg_extensions "
                          "WHERE extension_name = 'gpkg_metadata' ORDER BY table_name")
    assert extensions == [("gpkg_metadata", "gpkg_metadata", "read-write"),
                          ("gpkg_metadata_reference", "gpkg_metadata", "read-write")]
    (qgis_xml,) = sql(out, "SELECT metadata FROM gpkg_metadata WHERE md_standard_uri = 'http://mrcc.com/qgis.dtd'")[0]
    root = ET.fromstring(qgis_xml.split("\n", 1)[1])
    assert root.findtext("title") == "buildings"
    assert root.findtext("identifier") == "buildings"
    assert sql(out, "SELECT description FROM gpkg_contents WHERE table_name = 'buildings'") == [("buildings",)]


def test_read_provenance_errors(tmp_path):
    out = tmp_path / "out.gpkg"
    write_geopackage(out, [layer()])
    with pytest.raises(InputError, match="no geoseg provenance"):
        read_provenance(out, "other")
    not_gpkg = tmp_path / "x.gpkg"
    not_gpkg.write_text("hello")
    with pytest.raises(InputError, match="not a GeoPackage"):
        read_provenance(not_gpkg, "buildings")


# ------------------------------------------------------------------------------- style

LAYER_STYLES_COLUMNS = [
    ("id", "INTEGER"), ("f_table_catalog", "TEXT(256)"), ("f_table_schema", "TEXT(256)"),
    ("f_table_name", "TEXT(256)"), ("f_geometry_column", "TEXT(256)"), ("styleName", "TEXT(30)"),
    ("styleQML", "TEXT"), ("styleSLD", "TEXT"), ("useAsDefault", "BOOLEAN"), ("description", "TEXT"),
    ("owner", "TEXT(30)"), ("ui", "TEXT(30)"), ("update_time", "DATETIME"),
]


def test_layer_styles_has_qgis_schema_and_default_row(tmp_path):
    out = tmp_path / "out.gpkg"
    write_geopackage(out, [layer("roads", "roads"), layer("rivers", "rivers")])
    columns = [(r[1], r[2]) for r in sql(out, "PRAGMA table_info(layer_styles)")]
    assert columns == LAYER_STYLES_COLUMNS
    assert sql(out, "SELECT data_type FROM gpkg_contents WHERE table_name = 'layer_styles'") == [("attributes",)]
    rows = sql(out, "SELECT f_table_catalog, f_table_schema, f_table_name, f_geometry_column, styleName, "
                    "useAsDefault, typeof(update_time), styleQML, styleSLD FROM layer_styles ORDER BY id")
    assert [r[:7] for r in rows] == [("", "", "roads", "geom", "roads", 1, "text"),
                                     ("", "", "rivers", "geom", "rivers", 1, "text")]
    for (_, _, name, *_rest, qml, sld) in rows:
        rgb = style_colour(name)
        root = ET.fromstring(qml.split("\n", 1)[1])
        options = {o.get("name"): o.get("value") for o in root.iter("Option") if o.get("name")}
        assert options["color"] == f"{rgb[0]},{rgb[1]},{rgb[2]},90"  # semi-transparent fill
        assert options["outline_color"].endswith(",255")
        assert root.find("renderer-v2").get("type") == "singleSymbol"
        assert ET.fromstring(sld.encode()).tag.endswith("StyledLayerDescriptor")
    # QGIS's own tooling (GDAL) can read the styles table as an attribute layer
    styles = pyogrio.read_dataframe(out, layer="layer_styles")
    assert list(styles["f_table_name"]) == ["roads", "rivers"]


def test_style_colour_is_deterministic():
    assert style_colour("roads") == style_colour("roads")
    colours = {style_colour(f"layer_{i}") for i in range(20)}
    assert len(colours) > 15
    assert all(0 <= c <= 255 for rgb in colours for c in rgb)


# ---------------------------------------------------------------------------- ogrinfo


@pytest.mark.skipif(shutil.which("ogrinfo") is None, reason="ogrinfo not installed (Debian gdal-bin)")
def test_ogrinfo_reads_it_without_warnings(tmp_path):
    out = tmp_path / "out.gpkg"
    write_geopackage(out, [layer("roads", "roads"), layer("empty", "empty", gdf=frame(0))])
    listing = subprocess.run(["ogrinfo", "-ro", "-q", str(out)], capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert "roads (Multi Polygon)" in listing.stdout and "empty (Multi Polygon)" in listing.stdout
    assert "warning" not in listing.stderr.lower(), listing.stderr  # GDAL 3.6 warns on GPKG 1.4
    detail = subprocess.run(["ogrinfo", "-ro", "-so", str(out), "roads"], capture_output=True, text=True, timeout=60)
    assert "Feature Count: 2" in detail.stdout
    assert "Geometry Column = geom" in detail.stdout and "FID Column = fid" in detail.stdout
    assert "GEOSEG_PROVENANCE=" in detail.stdout and "DESCRIPTION=roads" in detail.stdout
    assert "warning" not in detail.stderr.lower(), detail.stderr


# ---------------------------------------------------------------- overwrite / append


def test_existing_output_refused_without_flags(tmp_path):
    out = tmp_path / "out.gpkg"
    write_geopackage(out, [layer()])
    with pytest.raises(OutputExistsError) as err:
        write_geopackage(out, [layer()])
    assert str(err.value) == f"{out} exists; pass --overwrite to replace it or --append to add a layer"


def test_overwrite_replaces_the_whole_file(tmp_path):
    out = tmp_path / "out.gpkg"
    write_geopackage(out, [layer("roads", "roads")])
    write_geopackage(out, [layer("rivers", "rivers")], overwrite=True)
    assert set(pyogrio.list_layers(out)[:, 0]) == {"rivers", "layer_styles"}
    assert sql(out, "SELECT f_table_name FROM layer_styles") == [("rivers",)]


def test_append_adds_a_layer_and_keeps_the_old_one(tmp_path):
    out = tmp_path / "out.gpkg"
    write_geopackage(out, [layer("roads", "roads")])
    write_geopackage(out, [layer("rivers", "rivers")], append=True)
    assert set(pyogrio.list_layers(out)[:, 0]) == {"roads", "rivers", "layer_styles"}
    assert read_provenance(out, "roads")["query"] == "roads"
    assert read_provenance(out, "rivers")["query"] == "rivers"
    assert read_description(out, "roads") == "roads" and read_description(out, "rivers") == "rivers"
    assert sql(out, "SELECT f_table_name FROM layer_styles ORDER BY id") == [("roads",), ("rivers",)]
    assert sql(out, "SELECT count(*) FROM gpkg_contents WHERE table_name = 'layer_styles'") == [(1,)]
    assert sql(out, "PRAGMA user_version") == [(10200,)]
    assert pyogrio.read_info(out, layer="roads")["features"] == 2


def test_append_to_missing_file_creates_it(tmp_path):
    out = tmp_path / "new.gpkg"
    write_geopackage(out, [layer()], append=True)
    assert pyogrio.read_info(out, layer="buildings")["features"] == 2


def test_append_to_a_foreign_geopackage_without_metadata_tables(tmp_path):
    """geoseg relies on GDAL creating gpkg_metadata(_reference) when it writes layer metadata."""
    out = tmp_path / "foreign.gpkg"
    pyogrio.write_dataframe(frame(1), out, layer="theirs", driver="GPKG")
    assert sql(out, "SELECT count(*) FROM sqlite_master WHERE name LIKE 'gpkg_metadata%'") == [(0,)]
    write_geopackage(out, [layer("ours", "our query")], append=True)
    assert read_provenance(out, "ours")["query"] == "our query"
    assert read_description(out, "ours") == "our query"
    assert pyogrio.read_info(out, layer="theirs")["features"] == 1


def test_append_same_layer_name_is_an_error_naming_it(tmp_path):
    out = tmp_path / "out.gpkg"
    write_geopackage(out, [layer("roads", "roads")])
    before = out.read_bytes()
    with pytest.raises(InputError, match=r"'roads' already exists; pass --layer"):
        write_geopackage(out, [layer("Roads", "roads again")], append=True)
    assert out.read_bytes() == before and leftovers(tmp_path) == []


def test_check_output_path_rules(tmp_path):
    check_output_path(tmp_path / "fresh.gpkg", overwrite=False, append=False)
    with pytest.raises(InputError, match=r"\.gpkg"):
        check_output_path(tmp_path / "out.shp", overwrite=False, append=False)
    with pytest.raises(InputError, match="does not exist"):
        check_output_path(tmp_path / "missing" / "out.gpkg", overwrite=False, append=False)
    with pytest.raises(InputError, match="together"):
        check_output_path(tmp_path / "out.gpkg", overwrite=True, append=True)
    (tmp_path / "dir.gpkg").mkdir()
    with pytest.raises(InputError, match="directory"):
        check_output_path(tmp_path / "dir.gpkg", overwrite=True, append=False)
    text = tmp_path / "text.gpkg"
    text.write_text("not sqlite")
    with pytest.raises(OutputExistsError):
        check_output_path(text, overwrite=False, append=False)
    with pytest.raises(InputError, match="not a GeoPackage"):
        check_output_path(text, overwrite=False, append=True)
    check_output_path(text, overwrite=True, append=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_check_output_path_unwritable_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(InputError, match="not writable"):
            check_output_path(locked / "out.gpkg", overwrite=False, append=False)
    finally:
        locked.chmod(0o700)


# ------------------------------------------------------------------------- atomicity


def _boom(*args, **kwargs):
    raise RuntimeError("disk on fire")


@pytest.mark.parametrize("mode", ["overwrite", "append"])
@pytest.mark.parametrize("stage", ["second_layer", "sqlite", "verify", "rename"])
def test_failure_mid_write_leaves_old_file_identical(tmp_path, monkeypatch, mode, stage):
    out = tmp_path / "out.gpkg"
    write_geopackage(out, [layer("roads", "roads")])
    before = out.read_bytes()
    if stage == "second_layer":
        real = pyogrio.write_dataframe
        calls = []

        def flaky(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("disk on fire")
            return real(*args, **kwargs)

        monkeypatch.setattr(gpkg.pyogrio, "write_dataframe", flaky)
    elif stage == "sqlite":
        monkeypatch.setattr(gpkg.qgis_style, "add_default_style", _boom)
    elif stage == "verify":
        monkeypatch.setattr(gpkg, "_verify", _boom)
    else:
        monkeypatch.setattr(gpkg.os, "replace", _boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_geopackage(out, [layer("rivers", "rivers"), layer("lakes", "lakes")], **{mode: True})
    assert out.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_failure_with_no_previous_file_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(gpkg.qgis_style, "add_default_style", _boom)
    with pytest.raises(RuntimeError):
        write_geopackage(tmp_path / "out.gpkg", [layer()])
    assert list(tmp_path.iterdir()) == []


def test_temp_file_is_built_beside_the_target(tmp_path, monkeypatch):
    seen = []
    real = os.replace

    def spy(src, dst):
        seen.append((Path(src), Path(dst)))
        return real(src, dst)

    monkeypatch.setattr(gpkg.os, "replace", spy)
    write_geopackage(tmp_path / "out.gpkg", [layer()])
    (src, dst), = seen
    assert src.parent == dst.parent == tmp_path
    assert src.name.startswith(".out.gpkg.") and src.name.endswith(".tmp.gpkg")


# --------------------------------------------------------------------- hostile text


@pytest.mark.parametrize("query", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_query_round_trips_byte_for_byte(tmp_path, query):
    out = tmp_path / "out.gpkg"
    name = layer_name_for(query)
    write_geopackage(out, [LayerData(name, frame(query=query), query, record(query))])
    assert read_description(out, name).encode("utf-8") == query.encode("utf-8")
    back = pyogrio.read_dataframe(out, layer=name)
    assert [q.encode("utf-8") for q in back["query"]] == [query.encode("utf-8")] * 2
    assert read_provenance(out, name)["query"].encode("utf-8") == query.encode("utf-8")
    gdal_md = json.loads(pyogrio.read_info(out, layer=name)["layer_metadata"][gpkg.LAYER_METADATA_KEY])
    assert gdal_md["query"] == query
    # the QGIS XML record stays well-formed; its title is the query (XML-illegal controls replaced)
    (xml_text,) = sql(out, "SELECT metadata FROM gpkg_metadata WHERE md_standard_uri = ?", (gpkg.QGIS_METADATA_URI,))[0]
    title = ET.fromstring(xml_text.split("\n", 1)[1]).findtext("title")
    assert title == "".join("\ufffd" if ch in "\x01\x07\x1f" else ch for ch in query).replace("\r\n", "\n").replace("\r", "\n")
    # nothing was executed: every table is still there
    assert {"gpkg_contents", "gpkg_metadata", "layer_styles"} <= {r[0] for r in sql(out, "SELECT name FROM sqlite_master")}


def test_hostile_layer_name_is_quoted_not_executed(tmp_path):
    out = tmp_path / "out.gpkg"
    name = "x'); DROP TABLE gpkg_contents;--"
    write_geopackage(out, [LayerData(name, frame(), "q", record())])
    assert pyogrio.read_info(out, layer=name)["features"] == 2
    assert read_provenance(out, name)["run_id"] == "r1"
    assert sql(out, "SELECT f_table_name FROM layer_styles") == [(name,)]


def test_nul_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "out.gpkg"
    with pytest.raises(InputError, match="NUL"):
        write_geopackage(out, [LayerData("q", frame(query="a\x00b"), "a\x00b", record())])
    with pytest.raises(InputError, match="NUL"):
        write_geopackage(out, [LayerData("q", frame(query="a\x00b"), "ab", record())])
    assert list(tmp_path.iterdir()) == []
    # inside the JSON record a NUL is just an escape sequence: fine
    write_geopackage(out, [LayerData("q", frame(), "q", record(note="a\x00b"))])
    assert read_provenance(out, "q")["note"] == "a\x00b"


def test_reserved_and_duplicate_layer_names_refused(tmp_path):
    for bad in ("gpkg_contents", "rtree_x", "layer_styles", "", "  "):
        with pytest.raises(InputError):
            write_geopackage(tmp_path / "o.gpkg", [LayerData(bad, frame(), "q", {})])
    with pytest.raises(InputError, match="twice"):
        write_geopackage(tmp_path / "o.gpkg", [layer("a"), layer("A")])
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("query", "slug"),
    [
        ("Damaged Buildings", "damaged_buildings"),
        ("  new   roads!!  ", "new_roads"),
        ("bâtiments détruits", "batiments_detruits"),
        ("2020 floods", "q_2020_floods"),
        ("🏠🏠", "query"),
        ("", "query"),
        ("建物", "query"),
        ("gpkg_contents", "q_gpkg_contents"),
        ("layer styles", "q_layer_styles"),
        ("'); DROP TABLE x;--", "drop_table_x"),
    ],
)
def test_layer_name_for(query, slug):
    assert layer_name_for(query) == slug


def test_layer_name_for_long_queries():
    name = layer_name_for("word " * 100)
    assert len(name) <= 63 and not name.endswith("_")
    assert all(c.isascii() and (c.isalnum() or c == "_") and not c.isupper() for c in name)


def test_unique_layer_names():
    assert unique_layer_names(["roads", "Roads", "roads", "rivers"]) == ["roads", "Roads_2", "roads_3", "rivers"]
    long = "a" * 63
    out = unique_layer_names([long, long])
    assert out[1].endswith("_2") and len(out[1]) == 63


def test_written_geometries_survive_shapely_round_trip(tmp_path):
    out = tmp_path / "out.gpkg"
    gdf = frame(5)
    write_geopackage(out, [layer(gdf=gdf)])
    back = pyogrio.read_dataframe(out, layer="buildings")
    for a, b in zip(gdf.geometry, back.geometry, strict=True):
        assert shapely.equals(a, b)
