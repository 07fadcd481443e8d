"""GeoPackage output: one layer per query, provenance, a default QGIS style, atomic writes.

What a written file holds (docs/output-format.md has the full description):

- one MultiPolygon layer per query in the scene's CRS, geometry column `geom`, GDAL's integer
  primary key `fid` and never a `fid` attribute, an R-tree spatial index;
- `gpkg_contents.description` = the query, verbatim;
- the run record as JSON twice: GDAL layer metadata item GEOSEG_PROVENANCE (ogrinfo, pyogrio
  read_info) and a `gpkg_metadata` row (md_standard_uri PROVENANCE_URI, application/json)
  referenced from `gpkg_metadata_reference` at table scope; plus a QGIS metadata record
  (http://mrcc.com/qgis.dtd) whose title is the query, shown in QGIS's Metadata tab;
- a default style per layer in QGIS's `layer_styles` table, so the layer opens styled
  (the style itself comes from `geoseg.io.qgis_style`);
- GeoPackage 1.2 (application_id GPKG, user_version 10200): QGIS 3.22 LTR ships GDAL 3.6, which
  warns on 1.4 files.

GDAL (through pyogrio) writes the layer, its description (layer creation option DESCRIPTION)
and its GDAL metadata; SQLite writes only what GDAL cannot: the two metadata records under
geoseg's and QGIS's own standard URIs, and the styles.

The file is built as a temporary file beside the target and renamed over it at the end; on any
failure the temporary file is removed and an existing target is left untouched. All text goes
into SQLite through bound parameters, never through SQL string building.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import secrets
import shutil
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import shapely
from shapely.geometry.base import BaseGeometry

from geoseg.errors import GeosegError, InputError, OutputExistsError
from geoseg.io import qgis_style
from geoseg.io.fileio import check_output_target
from geoseg.queries import MAX_LAYER_NAME, RESERVED_NAMES, RESERVED_PREFIXES

log = logging.getLogger(__name__)

GPKG_VERSION = "1.2"
GPKG_APPLICATION_ID = 0x47504B47  # "GPKG"
GPKG_USER_VERSION = 10200
GEOMETRY_COLUMN = "geom"
FID_COLUMN = "fid"
LAYER_METADATA_KEY = "GEOSEG_PROVENANCE"
PROVENANCE_URI = "https://geoseg.dev/provenance"
QGIS_METADATA_URI = "http://mrcc.com/qgis.dtd"
FID_LIKE = ("fid", "ogc_fid")

# Known attribute fields and their types: an empty layer still gets the right column types.
FIELD_TYPES: dict[str, str] = {
    "query": "str", "target": "str", "score": "float", "area_m2": "float", "perimeter_m": "float",
    "pixel_count": "int", "model": "str", "model_version": "str", "run_id": "str", "source": "str",
    "before": "str", "after": "str", "change_type": "str",
}


@dataclass
class LayerData:
    """One layer to write: a slug name, the features, the query and the run record."""

    name: str
    gdf: gpd.GeoDataFrame
    description: str  # the query, verbatim -> gpkg_contents.description
    provenance: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------- names


def unique_layer_names(names: Iterable[str]) -> list[str]:
    """Make names unique (case-insensitively, as SQLite tables are) with _2, _3 ... suffixes."""
    seen: set[str] = set()
    out = []
    for name in names:
        candidate, k = name, 1
        while candidate.lower() in seen:
            k += 1
            suffix = f"_{k}"
            candidate = f"{name[: MAX_LAYER_NAME - len(suffix)]}{suffix}"
        seen.add(candidate.lower())
        out.append(candidate)
    return out


# ------------------------------------------------------------------------ output checks


def polygon_layers(geopackage: str | Path) -> list[str]:
    """Names of the layers that hold geometries (not layer_styles or other plain tables)."""
    return [str(name) for name, geometry_type in pyogrio.list_layers(geopackage) if geometry_type]


def check_output_path(path: str | Path, *, overwrite: bool, append: bool) -> None:
    """Fail fast (before any heavy work) when the output cannot be written as asked."""
    path = Path(path)
    if path.suffix.lower() != ".gpkg" and not (overwrite and append):
        raise InputError(f"{path}: the output must be a GeoPackage file ending in .gpkg")
    check_output_target(path, overwrite=overwrite, append=append, extension=".gpkg")
    if not path.exists():
        return
    if not (overwrite or append):
        raise OutputExistsError(f"{path} exists; pass --overwrite to replace it or --append to add a layer")
    if append and not _is_geopackage(path):
        raise InputError(f"{path} is not a GeoPackage; --append needs an existing .gpkg (or use --overwrite)")


def _is_geopackage(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            header = f.read(100)
    except OSError:
        return False
    return (
        len(header) == 100
        and header[:16] == b"SQLite format 3\x00"
        and int.from_bytes(header[68:72], "big") == GPKG_APPLICATION_ID
    )


def _check_text(value: str, what: str) -> None:
    """Text must survive GDAL's C strings and UTF-8: no NUL, no lone surrogates."""
    if "\x00" in value:
        raise InputError(f"{what} contains a NUL character; remove it")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"{what} is not valid Unicode text ({exc.reason}); check the terminal encoding") from exc


def _check_layer_name(name: str) -> None:
    if not name or not name.strip():
        raise InputError("layer name is empty; pass --layer NAME")
    _check_text(name, f"layer name {name!r}")
    lower = name.lower()
    if lower.startswith(RESERVED_PREFIXES) or lower in RESERVED_NAMES:
        raise InputError(f"layer name {name!r} is reserved by GeoPackage/QGIS; pass another --layer NAME")


def _check_layers(layers: Sequence[LayerData]) -> None:
    if not layers:
        raise GeosegError("no layer to write")
    seen: set[str] = set()
    for layer in layers:
        _check_layer_name(layer.name)
        if layer.name.lower() in seen:
            raise InputError(f"layer {layer.name!r} is given twice; pass distinct --layer names")
        seen.add(layer.name.lower())
        _check_text(layer.description, f"query of layer {layer.name!r}")


# ------------------------------------------------------------------------- features


def _as_multipolygon(geom: BaseGeometry | None) -> shapely.MultiPolygon | None:
    """Valid MultiPolygon (Polygons promoted, invalid repaired, non-areal parts dropped)."""
    if geom is None or geom.is_empty:
        return None
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    polys = [p for p in shapely.get_parts(geom) if p.geom_type in ("Polygon", "MultiPolygon")]
    polys = [q for p in polys for q in shapely.get_parts(p) if not q.is_empty]
    if not polys:
        return None
    return shapely.MultiPolygon(polys)


def _as_multipolygons(geoms: np.ndarray) -> np.ndarray:
    """`_as_multipolygon` over an array, with one vectorised call for the common case (valid,
    non-empty Polygons and MultiPolygons, which is what the vectoriser produces)."""
    type_id = shapely.get_type_id(geoms)
    areal = np.isin(type_id, (3, 6)) & ~shapely.is_empty(geoms) & shapely.is_valid(geoms)
    polygons = areal & (type_id == 3)
    out = np.empty(len(geoms), dtype=object)
    out[areal & ~polygons] = geoms[areal & ~polygons]
    if polygons.any():
        out[polygons] = shapely.multipolygons(geoms[polygons], indices=np.arange(int(polygons.sum())))
    for i in np.flatnonzero(~areal):
        out[i] = _as_multipolygon(geoms[i])
    return out


def _prepare_frame(layer: LayerData) -> gpd.GeoDataFrame:
    """Lowercase fields, no fid attribute, typed known fields, valid MultiPolygons in `geom`."""
    gdf = layer.gdf
    if not isinstance(gdf, gpd.GeoDataFrame) or gdf.geometry.name not in gdf.columns:
        raise GeosegError(f"layer {layer.name!r}: expected a GeoDataFrame with a geometry column")
    crs = gdf.crs
    geometry = _as_multipolygons(np.asarray(gdf.geometry.values, dtype=object))
    attrs = pd.DataFrame(gdf.drop(columns=gdf.geometry.name)).reset_index(drop=True)
    attrs.columns = [str(c).lower() for c in attrs.columns]
    dropped = [c for c in attrs.columns if c in FID_LIKE or c == GEOMETRY_COLUMN]
    if dropped:
        # GDAL's own primary key is `fid`; a second one breaks QGIS edits ("UNIQUE constraint failed").
        log.warning("layer %r: dropping attribute column(s) %s", layer.name, ", ".join(dropped))
        attrs = attrs.drop(columns=dropped)
    if attrs.columns.duplicated().any():
        dupes = sorted(set(attrs.columns[attrs.columns.duplicated()]))
        raise GeosegError(f"layer {layer.name!r}: columns {dupes} clash once lowercased")
    for column in attrs.columns:
        attrs[column] = _typed(attrs[column], FIELD_TYPES.get(column), layer.name)
    keep = np.array([g is not None for g in geometry], dtype=bool)
    if not keep.all():
        log.warning("layer %r: dropping %d feature(s) with empty geometry", layer.name, int((~keep).sum()))
    geoms = gpd.GeoSeries([g for g in geometry if g is not None], crs=crs, name=GEOMETRY_COLUMN)
    return gpd.GeoDataFrame(attrs[keep].reset_index(drop=True), geometry=geoms, crs=crs)


def _typed(values: pd.Series, kind: str | None, layer: str) -> pd.Series:
    if kind == "float":
        return values.astype("float64")
    if kind == "int":
        return values.astype("int64")
    if kind == "str" or values.dtype == object:
        out = values.astype(object).where(values.notna(), None)
        # Columns are mostly one value repeated (query, model, run id): convert and check each
        # distinct value once, not once per feature.
        if not all(v is None or isinstance(v, str) for v in _distinct(out)):
            out = out.map(lambda v: v if v is None or isinstance(v, str) else str(v))
        for v in _distinct(out):
            if v is not None:
                _check_text(v, f"a {values.name!r} value of layer {layer!r}")
        return out
    return values


def _distinct(values: pd.Series) -> np.ndarray:
    try:
        return pd.unique(values.to_numpy())
    except TypeError:  # unhashable values (lists, dicts): all of them
        return values.to_numpy()


# ------------------------------------------------------------------------- provenance


def _jsonable(value: Any) -> Any:
    """Plain JSON types; non-finite floats become "nan"/"inf"/"-inf" (strict JSON has none)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def provenance_json(record: dict[str, Any]) -> str:
    """The run record as compact UTF-8 JSON (control characters escaped by JSON itself)."""
    text = json.dumps(_jsonable(record), ensure_ascii=False, allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates (undecodable argv bytes): keep them as \u escapes
        text = json.dumps(_jsonable(record), ensure_ascii=True, allow_nan=False)
    return text


def _qgis_metadata_xml(layer: LayerData) -> str:
    """A QGIS layer metadata document: title = the query, for QGIS's Metadata tab."""
    record = layer.provenance
    model = record.get("model") or {}
    model_text = " ".join(str(model.get(k, "")) for k in ("name", "version")).strip() if isinstance(model, dict) else str(model)
    abstract = f"Polygons segmented by geoseg for the query: {layer.description}"
    history = []
    if record.get("run_id"):
        command = f" ({record['command']})" if record.get("command") else ""
        history.append(f"geoseg run {record['run_id']}{command}")
    if model_text:
        history.append(f"model: {model_text}")
    if record.get("created_utc"):
        history.append(f"created: {record['created_utc']}")
    history_xml = "".join(f"  <history>{qgis_style.xml_text(h)}</history>\n" for h in history)
    return (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        '<qgis version="3.22.0">\n'
        f"  <identifier>{qgis_style.xml_text(layer.name)}</identifier>\n"
        "  <parentidentifier></parentidentifier>\n"
        "  <language></language>\n"
        "  <type>dataset</type>\n"
        f"  <title>{qgis_style.xml_text(layer.description)}</title>\n"
        f"  <abstract>{qgis_style.xml_text(abstract)}</abstract>\n"
        '  <keywords vocabulary="geoseg">\n'
        "    <keyword>segmentation</keyword>\n"
        "    <keyword>geoseg</keyword>\n"
        "  </keywords>\n"
        "  <links/>\n"
        f"{history_xml}"
        "  <fees></fees>\n"
        "  <encoding></encoding>\n"
        "  <extent/>\n"
        "</qgis>\n"
    )


# ------------------------------------------------------------------------------ SQL


def _add_metadata(con: sqlite3.Connection, table: str, uri: str, mime: str, text: str) -> None:
    cur = con.execute(
        "INSERT INTO gpkg_metadata (md_scope, md_standard_uri, mime_type, metadata) VALUES ('dataset', ?, ?, ?)",
        (uri, mime, text),
    )
    con.execute(
        "INSERT INTO gpkg_metadata_reference (reference_scope, table_name, column_name, row_id_value, "
        "timestamp, md_file_id, md_parent_id) VALUES ('table', ?, NULL, NULL, ?, ?, NULL)",
        (table, qgis_style.timestamp(), cur.lastrowid),
    )


def _finish_with_sqlite(path: Path, layers: Sequence[LayerData], records: dict[str, str]) -> None:
    """What GDAL cannot write, in one transaction with bound parameters only: the metadata rows
    under geoseg's and QGIS's own standard URIs (GDAL writes its metadata only as one GDAL PAM
    document, md_standard_uri http://gdal.org) and the QGIS default styles (GDAL has no
    layer_styles API). GDAL has already created gpkg_metadata and gpkg_metadata_reference and
    registered the metadata extension, as every layer carries GDAL layer metadata."""
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute("BEGIN")
        qgis_style.ensure_layer_styles(con)
        for layer in layers:
            _add_metadata(con, layer.name, PROVENANCE_URI, "application/json", records[layer.name])
            _add_metadata(con, layer.name, QGIS_METADATA_URI, "text/xml", _qgis_metadata_xml(layer))
            qgis_style.add_default_style(con, layer.name, GEOMETRY_COLUMN, f"geoseg default style for: {layer.description}")
        con.execute("COMMIT")
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise
    finally:
        con.close()


# ------------------------------------------------------------------------------ write


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp.gpkg")


def _remove_temp(tmp: Path) -> None:
    for suffix in ("", "-journal", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{tmp}{suffix}").unlink()


def _write_layer(tmp: Path, layer: LayerData, frame: gpd.GeoDataFrame, record: str, create: bool) -> None:
    pyogrio.write_dataframe(
        frame,
        tmp,
        layer=layer.name,
        driver="GPKG",
        geometry_type="MultiPolygon",
        promote_to_multi=True,
        append=not create,
        dataset_options={"VERSION": GPKG_VERSION} if create else None,
        layer_options={
            "SPATIAL_INDEX": "YES", "GEOMETRY_NAME": GEOMETRY_COLUMN, "FID": FID_COLUMN,
            "DESCRIPTION": layer.description,  # -> gpkg_contents.description
        },
        layer_metadata={LAYER_METADATA_KEY: record},  # GDAL layer metadata, in gpkg_metadata
    )


def _existing_layers(path: Path) -> list[str]:
    try:
        return [str(name) for name in pyogrio.list_layers(path)[:, 0]]
    except Exception as exc:  # noqa: BLE001 - any GDAL failure means we cannot append
        raise InputError(f"{path}: cannot read the existing GeoPackage to append to it ({exc})") from exc


def _verify(tmp: Path, layers: Sequence[LayerData], frames: dict[str, gpd.GeoDataFrame]) -> None:
    """Read back what was written before it replaces anything."""
    for layer in layers:
        info = pyogrio.read_info(tmp, layer=layer.name)
        if info["features"] != len(frames[layer.name]) or info["geometry_type"] != "MultiPolygon":
            raise GeosegError(f"{tmp}: layer {layer.name!r} did not read back as written")


def write_geopackage(
    path: str | Path, layers: Sequence[LayerData], *, overwrite: bool = False, append: bool = False
) -> None:
    """Write `layers` to a GeoPackage atomically.

    overwrite: replace the whole file. append: add the layers to an existing file (a layer name
    that already exists there is an InputError). Neither: the file must not exist.
    """
    path = Path(path)
    check_output_path(path, overwrite=overwrite, append=append)
    _check_layers(layers)
    appending = append and path.exists()
    if appending:
        existing = {name.lower(): name for name in _existing_layers(path)}
        for layer in layers:
            if layer.name.lower() in existing:
                raise InputError(
                    f"{path}: layer {existing[layer.name.lower()]!r} already exists; "
                    "pass --layer NAME to add it under another name or --overwrite to replace the file"
                )
    frames = {layer.name: _prepare_frame(layer) for layer in layers}
    records = {layer.name: provenance_json(layer.provenance) for layer in layers}

    tmp = _temp_path(path)
    try:
        if appending:
            shutil.copyfile(path, tmp)
        for i, layer in enumerate(layers):
            _write_layer(tmp, layer, frames[layer.name], records[layer.name], create=not appending and i == 0)
        _finish_with_sqlite(tmp, layers, records)
        _verify(tmp, layers, frames)
        os.replace(tmp, path)
    except BaseException:
        _remove_temp(tmp)
        raise


# ------------------------------------------------------------------------------- read


def _connect_readonly(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


def read_provenance(path: str | Path, layer: str) -> dict[str, Any]:
    """The run record stored for `layer` (newest if the layer was written more than once)."""
    path = Path(path)
    if not _is_geopackage(path):
        raise InputError(f"{path} is not a GeoPackage")
    con = _connect_readonly(path)
    try:
        row = con.execute(
            "SELECT m.metadata FROM gpkg_metadata m JOIN gpkg_metadata_reference r ON r.md_file_id = m.id "
            "WHERE m.md_standard_uri = ? AND r.reference_scope = 'table' AND r.table_name = ? "
            "ORDER BY m.id DESC LIMIT 1",
            (PROVENANCE_URI, layer),
        ).fetchone()
    except sqlite3.DatabaseError as exc:
        raise InputError(f"{path}: no geoseg provenance for layer {layer!r} ({exc})") from exc
    finally:
        con.close()
    if row is None:
        raise InputError(f"{path}: no geoseg provenance for layer {layer!r}; was it written by geoseg?")
    return json.loads(row[0])


def read_description(path: str | Path, layer: str) -> str | None:
    """gpkg_contents.description of a layer (the query for layers geoseg wrote)."""
    con = _connect_readonly(Path(path))
    try:
        row = con.execute("SELECT description FROM gpkg_contents WHERE table_name = ?", (layer,)).fetchone()
    finally:
        con.close()
    return None if row is None else row[0]


__all__ = [
    "FIELD_TYPES", "GEOMETRY_COLUMN", "LAYER_METADATA_KEY", "LayerData", "PROVENANCE_URI",
    "check_output_path", "polygon_layers", "provenance_json", "read_description", "read_provenance",
    "unique_layer_names", "write_geopackage",
]
