"""Vector output formats: GeoPackage, GeoParquet, FlatGeobuf, GeoJSON, behind one small interface.

The format is decided once, from the output path (`writer_for`: its extension, or `--format`).
Every writer checks an output before any heavy work (`check`), writes layers atomically
(`write`: a temporary file beside the target, then a rename; an existing file is refused without
--overwrite, and on any failure the previous file is left untouched) and reads back what it wrote
(`read_layer`, `read_provenance`).

- GeoPackage (`.gpkg`, the default): geoseg.io.gpkg, unchanged: a layer per query.
- GeoParquet (`.parquet`), FlatGeobuf (`.fgb`), GeoJSON (`.geojson`) hold one table per file. Every
  query's features go into that one table, with a `layer` column holding the layer name the
  GeoPackage would have used (beside `query`); `--append` adds rows for new layers and keeps the
  rows and run records already there. The run records are one JSON document: the Parquet file's
  key-value metadata, key `geoseg`; beside a FlatGeobuf or GeoJSON file, `<out>.geoseg.json`.

docs/output-format.md describes the files exactly.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import geopandas as gpd
import pandas as pd
import pyogrio

from geoseg.errors import GeosegError, InputError, OutputExistsError
from geoseg.io import gpkg
from geoseg.io.fileio import check_output_target
from geoseg.options import OUTPUT_FORMATS

LAYER_COLUMN = "layer"  # the one-table formats: which layer (query) a feature belongs to
PARQUET_METADATA_KEY = "geoseg"  # Parquet key-value metadata holding the run records
SIDECAR_SUFFIX = ".geoseg.json"  # FlatGeobuf / GeoJSON: the run records beside the file
RECORDS_VERSION = 1
GEOPARQUET_VERSION = "1.1.0"


class Writer(Protocol):
    """What every output format does."""

    @property
    def name(self) -> str: ...  # --format value

    @property
    def label(self) -> str: ...  # what messages call it

    @property
    def extension(self) -> str: ...

    def check(self, path: Path, *, overwrite: bool, append: bool) -> None: ...

    def write(self, path: Path, layers: Sequence[gpkg.LayerData], *, overwrite: bool, append: bool) -> None: ...

    def layers(self, path: Path) -> list[str]: ...

    def read_layer(self, path: Path, layer: str) -> gpd.GeoDataFrame: ...

    def read_provenance(self, path: Path, layer: str) -> dict[str, Any]: ...


# ------------------------------------------------------------------------- GeoPackage


class GeoPackageWriter:
    """geoseg.io.gpkg as it is: one layer per query."""

    name, label, extension = "gpkg", "GeoPackage", ".gpkg"

    def check(self, path: Path, *, overwrite: bool, append: bool) -> None:
        gpkg.check_output_path(path, overwrite=overwrite, append=append)

    def write(self, path: Path, layers: Sequence[gpkg.LayerData], *, overwrite: bool, append: bool) -> None:
        gpkg.write_geopackage(path, layers, overwrite=overwrite, append=append)

    def layers(self, path: Path) -> list[str]:
        return gpkg.polygon_layers(path)

    def read_layer(self, path: Path, layer: str) -> gpd.GeoDataFrame:
        return pyogrio.read_dataframe(path, layer=layer)

    def read_provenance(self, path: Path, layer: str) -> dict[str, Any]:
        return gpkg.read_provenance(path, layer)


# ------------------------------------------------------------------ one-table formats


@dataclass(frozen=True)
class TableWriter:
    """A format holding one table per file: every layer's rows, told apart by `layer`."""

    name: str
    label: str
    extension: str
    driver: str | None  # GDAL driver (pyogrio); None: GeoParquet through geopandas/pyarrow

    # --- checks

    def check(self, path: Path, *, overwrite: bool, append: bool) -> None:
        path = Path(path)
        check_output_target(path, overwrite=overwrite, append=append, extension=self.extension)
        if self.driver is None:
            _need_pyarrow(path)
        if not path.exists():
            return
        if not (overwrite or append):
            raise OutputExistsError(f"{path} exists; pass --overwrite to replace it or --append to add rows")
        if append:
            self.records(path)  # refuses a file geoseg did not write

    # --- run records

    def sidecar(self, path: Path) -> Path | None:
        return None if self.driver is None else path.with_name(path.name + SIDECAR_SUFFIX)

    def _own_sidecar(self, path: Path) -> Path:
        """The sidecar of a format that has one (a GDAL driver)."""
        side = self.sidecar(path)
        assert side is not None
        return side

    def records(self, path: Path) -> dict[str, Any]:
        """The file's run-records document; InputError when it has none (not written by geoseg)."""
        path = Path(path)
        try:
            if self.driver is None:
                import pyarrow.parquet as pq

                metadata = pq.read_schema(path).metadata or {}
                text = metadata.get(PARQUET_METADATA_KEY.encode())
            else:
                side = self._own_sidecar(path)
                text = side.read_bytes() if side.exists() else None
            doc = json.loads(text) if text is not None else None
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: cannot read it as a {self.label} file written by geoseg ({exc})") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("layers"), list):
            where = f"no {self._own_sidecar(path).name} beside it" if self.driver else f"no '{PARQUET_METADATA_KEY}' metadata"
            raise InputError(f"{path}: {where}, so geoseg did not write it; --append adds to geoseg's own files "
                             "(or pass --overwrite)")
        return doc

    def layers(self, path: Path) -> list[str]:
        return [entry["name"] for entry in self.records(path)["layers"]]

    def read_provenance(self, path: Path, layer: str) -> dict[str, Any]:
        for entry in self.records(path)["layers"]:
            if entry["name"] == layer:
                return entry["provenance"]
        raise InputError(f"{path}: no geoseg provenance for layer {layer!r}")

    # --- reading

    def read(self, path: Path) -> gpd.GeoDataFrame:
        frame = gpd.read_parquet(path) if self.driver is None else pyogrio.read_dataframe(path)
        if frame.crs is None:  # a CRS GeoJSON could not name: the run records keep it
            with contextlib.suppress(InputError):
                crs = self.records(path).get("crs")
                if crs:
                    frame = frame.set_crs(crs)
        return frame

    def read_layer(self, path: Path, layer: str) -> gpd.GeoDataFrame:
        frame = self.read(path)
        if LAYER_COLUMN not in frame.columns:  # an empty GeoJSON keeps no columns
            return frame.iloc[0:0]
        return frame[frame[LAYER_COLUMN] == layer].reset_index(drop=True)

    # --- writing

    def write(self, path: Path, layers: Sequence[gpkg.LayerData], *, overwrite: bool, append: bool) -> None:
        """All `layers` as rows of one table, atomically; with `append`, after the rows already there."""
        path = Path(path)
        self.check(path, overwrite=overwrite, append=append)
        gpkg._check_layers(layers)
        old_frame, old_entries = None, []
        if append and path.exists():
            old_entries = self.records(path)["layers"]
            existing = {entry["name"].lower(): entry["name"] for entry in old_entries}
            for layer in layers:
                if layer.name.lower() in existing:
                    raise InputError(
                        f"{path}: layer {existing[layer.name.lower()]!r} already exists; "
                        "pass --layer NAME to add it under another name or --overwrite to replace the file")
            old_frame = self.read(path)
        frames = [_tagged(gpkg._prepare_frame(layer), layer.name) for layer in layers]
        crs = old_frame.crs if old_frame is not None else frames[0].crs
        for layer, frame in zip(layers, frames, strict=True):
            if frame.crs != crs:
                raise InputError(
                    f"{path}: layer {layer.name!r} is in {_crs_name(frame.crs)} but the file holds "
                    f"{_crs_name(crs)}; one table has one CRS: write another file (or reproject, segment --dst-crs)")
        table = _concat(([old_frame] if old_frame is not None else []) + frames, crs)
        doc = {
            "geoseg_records": RECORDS_VERSION,
            "format": self.name,
            "layer_column": LAYER_COLUMN,
            "crs": crs.to_wkt() if crs is not None else None,
            "layers": old_entries + [
                {"name": layer.name, "query": layer.description, "features": len(frame),
                 "provenance": layer.provenance}
                for layer, frame in zip(layers, frames, strict=True)
            ],
        }
        records = gpkg.provenance_json(doc)
        tmp = _temp_path(path)
        side = self.sidecar(path)
        side_tmp = _temp_path(side) if side is not None else None
        try:
            if self.driver is None:
                _write_geoparquet(table, tmp, records)
            else:
                pyogrio.write_dataframe(table, tmp, driver=self.driver, geometry_type="MultiPolygon",
                                        promote_to_multi=True, layer=path.stem)
                assert side_tmp is not None  # a GDAL-driver format has a sidecar
                side_tmp.write_text(records, encoding="utf-8")
            self._verify(tmp, len(table))
            _commit(tmp, path, side_tmp, side)
        except BaseException:
            for leftover in (tmp, side_tmp):
                if leftover is not None:
                    leftover.unlink(missing_ok=True)
            raise

    def _verify(self, tmp: Path, rows: int) -> None:
        """Read back what was written before it replaces anything."""
        if self.driver is None:
            import pyarrow.parquet as pq

            written = pq.read_metadata(tmp).num_rows
        else:
            written = pyogrio.read_info(tmp, force_feature_count=True)["features"]
        if written != rows:
            raise GeosegError(f"{tmp}: wrote {rows} features but {written} read back")


def _need_pyarrow(path: Path) -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise InputError(f"{path}: GeoParquet needs pyarrow; pip install 'geoseg[parquet]' "
                         "(or write .gpkg, .fgb or .geojson)") from None


def _crs_name(crs: Any) -> str:
    if crs is None:
        return "no CRS"
    code = crs.to_authority()
    return ":".join(code) if code else crs.name


def _tagged(frame: gpd.GeoDataFrame, name: str) -> gpd.GeoDataFrame:
    """`layer` first, then the fields as the GeoPackage has them."""
    frame = frame.copy()
    frame.insert(0, LAYER_COLUMN, pd.Series([name] * len(frame), dtype=object))
    return frame


def _concat(frames: list[gpd.GeoDataFrame], crs: Any) -> gpd.GeoDataFrame:
    """One table; a column some parts lack (change mode's before/after/change_type) is null there."""
    parts = [pd.DataFrame(f.drop(columns=f.geometry.name)) for f in frames]
    geoms = [g for f in frames for g in f.geometry.values]
    attrs = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].reset_index(drop=True)
    for column in attrs.columns:
        kind = gpkg.FIELD_TYPES.get(column, "str" if column == LAYER_COLUMN else None)
        if kind == "str" or attrs[column].dtype != object and pd.api.types.is_string_dtype(attrs[column]):
            attrs[column] = attrs[column].astype(object).where(attrs[column].notna(), None)
        elif kind == "float":
            attrs[column] = attrs[column].astype("float64")
        elif kind == "int" and not attrs[column].isna().any():
            attrs[column] = attrs[column].astype("int64")
    return gpd.GeoDataFrame(attrs, geometry=gpd.GeoSeries(geoms, crs=crs, name="geometry"), crs=crs)


def _write_geoparquet(table: gpd.GeoDataFrame, tmp: Path, records: str) -> None:
    """geopandas writes the GeoParquet 1.1 metadata (`geo`); the run records go beside it under
    `geoseg`. Text columns with no value at all (an empty table) are typed string, not null."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False, schema_version=GEOPARQUET_VERSION)
    buffer.seek(0)
    arrow = pq.read_table(buffer)
    fields = [pa.field(f.name, pa.string()) if pa.types.is_null(f.type) else f for f in arrow.schema]
    metadata: dict[bytes | str, bytes | str] = {}
    for key, value in (arrow.schema.metadata or {}).items():
        metadata[key] = value
    metadata[PARQUET_METADATA_KEY.encode()] = records.encode("utf-8")
    arrow = arrow.cast(pa.schema(fields, metadata=metadata))
    pq.write_table(arrow, tmp, compression="snappy")


def _temp_path(path: Path) -> Path:
    """Beside `path`, hidden, ending in its extension (GDAL's FlatGeobuf driver makes a directory
    of a name without .fgb)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}")


def _commit(tmp: Path, path: Path, side_tmp: Path | None, side: Path | None) -> None:
    """Rename the file, then its sidecar; if the sidecar's rename fails, put the old file back."""
    if side_tmp is None:
        os.replace(tmp, path)
        return
    assert side is not None  # side_tmp is the sidecar's temporary copy
    backup = None
    if path.exists():
        backup = _temp_path(path)
        try:
            os.link(path, backup)
        except OSError:  # a file system without hard links
            shutil.copy2(path, backup)
    try:
        os.replace(tmp, path)
        try:
            os.replace(side_tmp, side)
        except BaseException:
            if backup is not None:
                os.replace(backup, path)
                backup = None
            else:
                path.unlink(missing_ok=True)
            raise
    finally:
        if backup is not None:
            backup.unlink(missing_ok=True)


# ------------------------------------------------------------------------- choosing

WRITERS: dict[str, Writer] = {
    "gpkg": GeoPackageWriter(),
    "parquet": TableWriter("parquet", "GeoParquet", ".parquet", None),
    "fgb": TableWriter("fgb", "FlatGeobuf", ".fgb", "FlatGeobuf"),
    "geojson": TableWriter("geojson", "GeoJSON", ".geojson", "GeoJSON"),
}
BY_EXTENSION = {writer.extension: writer for writer in WRITERS.values()}
assert tuple(WRITERS) == OUTPUT_FORMATS, "geoseg.options.OUTPUT_FORMATS lists the writers here"


def supported() -> str:
    return ", ".join(f"{w.extension} ({w.label})" for w in WRITERS.values())


def writer_for(path: str | Path, output_format: str | None = None) -> Writer:
    """The writer for `path`: by its extension, or `output_format` (--format)."""
    path = Path(path)
    ext = path.suffix.lower()
    by_ext = BY_EXTENSION.get(ext)
    if output_format is None:
        if by_ext is None:
            raise InputError(f"{path}: unknown output extension {ext or '(none)'!r}; use {supported()}, "
                             f"or pass --format {'|'.join(WRITERS)}")
        return by_ext
    if output_format not in WRITERS:
        raise InputError(f"{path}: unknown --format {output_format!r}; use one of {', '.join(WRITERS)}")
    writer = WRITERS[output_format]
    if by_ext is not None and by_ext is not writer:
        raise InputError(f"{path}: the extension {ext} means {by_ext.label} but --format is {output_format}; "
                         f"change the extension to {writer.extension} or drop --format")
    return writer


def check_output(path: str | Path, *, output_format: str | None = None, overwrite: bool = False,
                 append: bool = False) -> Writer:
    """Refuse an output that cannot be written as asked, before any heavy work; its writer."""
    writer = writer_for(path, output_format)
    writer.check(Path(path), overwrite=overwrite, append=append)
    return writer


def write_layers(path: str | Path, layers: Sequence[gpkg.LayerData], *, output_format: str | None = None,
                 overwrite: bool = False, append: bool = False) -> None:
    """Write `layers` atomically in the format of `path` (or `output_format`)."""
    writer_for(path, output_format).write(Path(path), layers, overwrite=overwrite, append=append)


def list_layers(path: str | Path, output_format: str | None = None) -> list[str]:
    """The layers (queries) geoseg wrote to `path`, in order."""
    return writer_for(path, output_format).layers(Path(path))


def read_layer(path: str | Path, layer: str, output_format: str | None = None) -> gpd.GeoDataFrame:
    """One layer's features: a GeoPackage layer, or a one-table file's rows with that `layer`."""
    return writer_for(path, output_format).read_layer(Path(path), layer)


def read_provenance(path: str | Path, layer: str, output_format: str | None = None) -> dict[str, Any]:
    """The run record geoseg stored for `layer`, whatever the format."""
    return writer_for(path, output_format).read_provenance(Path(path), layer)


__all__ = [
    "LAYER_COLUMN", "PARQUET_METADATA_KEY", "SIDECAR_SUFFIX", "WRITERS", "Writer", "check_output",
    "list_layers", "read_layer", "read_provenance", "write_layers", "writer_for",
]
