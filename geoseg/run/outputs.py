"""The steps every command shares around the model, none of which needs torch: refusing bad
output settings early, the vectorising options, the fields and provenance of each layer, the
work directory, committing the outputs atomically and the run's summary."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import geopandas as gpd
import pandas as pd

from geoseg import provenance, vectorize
from geoseg.errors import InputError, OutputExistsError
from geoseg.io import cog, formats, gpkg, raster, remote
from geoseg.options import RunOptions
from geoseg.queries import Query

log = logging.getLogger("geoseg")


@dataclass
class LayerSummary:
    """One layer a run wrote: its name, query, feature count and (change) direction."""

    name: str
    query: str
    features: int
    change_type: str | None = None


@dataclass
class RunSummary:
    """What a run did (the CLI's --json object): its layers, tiles, time; status ok or empty."""

    command: str
    output: str
    run_id: str
    model: str
    layers: list[LayerSummary] = field(default_factory=list)
    tiles: int = 0
    tiles_skipped_nodata: int = 0
    seconds: float = 0.0
    overlap_fraction: float | None = None
    # per query, whether the model was trained on something close (None: the model declares no
    # concepts, so nothing was checked); geoseg.models.concepts.QueryKnowledge.to_dict()
    query_check: list[dict] | None = None
    warnings: list[str] = field(default_factory=list)  # the run's WARNING lines about its inputs and queries

    @property
    def status(self) -> str:
        return "ok" if any(layer.features for layer in self.layers) else "empty"

    def to_dict(self) -> dict:
        return {"status": self.status, **asdict(self)}


def vector_options(opts: RunOptions) -> vectorize.VectorizeOptions:
    """The vectorising step's share of the run's options."""
    return vectorize.VectorizeOptions(
        threshold=opts.threshold, min_area_px=opts.min_area.px, min_area_m2=opts.min_area.m2,
        fill_holes=opts.fill_holes, simplify=opts.simplify,
    )


def check_outputs(output: Path, opts: RunOptions, *, n_scenes: int, n_queries: int) -> None:
    """Refuse bad output settings before any heavy work."""
    if opts.overwrite and opts.append:
        raise InputError("--overwrite and --append exclude each other; choose one")
    formats.check_output(output, output_format=opts.output_format, overwrite=opts.overwrite, append=opts.append)
    if opts.layer and n_queries > 1:
        raise InputError("--layer names one layer but several queries were given; drop --layer")
    for extra in (opts.probabilities, opts.mask_out):
        if extra is None:
            continue
        if n_scenes > 1 or n_queries > 1:
            raise InputError(f"{extra}: --probabilities/--mask-out take one scene and one query")
        if Path(extra).exists() and not opts.overwrite:
            raise OutputExistsError(f"{extra} exists; pass --overwrite to replace it")
        if not Path(extra).parent.is_dir():
            raise InputError(f"{extra}: its directory does not exist; create it first")


def work_directory(output: Path, persistent: Path | None) -> AbstractContextManager[str]:
    """A temporary directory beside the output, or the persistent one of a resumable run."""
    if persistent is None:
        return tempfile.TemporaryDirectory(dir=output.parent, prefix=".geoseg-")
    persistent.mkdir(parents=True, exist_ok=True)
    return nullcontext(str(persistent))


def with_fields(
    gdf: gpd.GeoDataFrame, *, query: str, model: tuple[str, str], run_id: str, source: str, target: str | None = None
) -> gpd.GeoDataFrame:
    """The fields every layer carries; `model` is (name, version)."""
    gdf = gdf.copy()
    gdf["query"], gdf["target"] = query, target or query
    gdf["model"], gdf["model_version"] = model
    gdf["run_id"], gdf["source"] = run_id, source
    return gdf


def merge_scenes(parts: list[gpd.GeoDataFrame], dst_crs: str | None) -> gpd.GeoDataFrame:
    """One layer from several scenes: reprojected to `dst_crs` or to the first scene's CRS."""
    target = dst_crs or parts[0].crs
    if target is not None:
        parts = [p.to_crs(target) if p.crs is not None and p.crs != target else p for p in parts]
    return concat(parts)


def concat(parts: list[gpd.GeoDataFrame]) -> gpd.GeoDataFrame:
    if len(parts) == 1:
        return parts[0].reset_index(drop=True)
    return gpd.GeoDataFrame(pd.concat(parts, ignore_index=True), geometry="geometry", crs=parts[0].crs)


def layer_for(query: Query, gdf: gpd.GeoDataFrame, record: dict, direction: str | None) -> gpkg.LayerData:
    """The layer a query's polygons are written to (`direction`: what a change layer holds)."""
    record = {**record, "layer": query.layer}
    if direction is not None:
        record["change_direction"] = direction
    return gpkg.LayerData(name=query.layer, gdf=gdf, description=query.text, provenance=record)


def input_record(source: raster.RasterInput, hash_remote: bool = False) -> dict:
    """What the provenance says about one input: a local file's sha256 (read here, once per
    run); a remote one's URL, size, ETag and Last-Modified (its sha256 with `hash_remote`); a
    STAC Item's id, self link and asset hrefs."""
    return source_record(source.source, hash_remote) | {
        "bands": list(source.bands), "nodata": source.nodata,
        "crs": source.native.crs.to_string() if source.native.crs else None,
        "width": source.native.width, "height": source.native.height,
    }


def source_record(source: raster.Source, hash_remote: bool = False) -> dict:
    """The bytes an input was read from: hashed when local, described by the server when not."""
    record = dict(source.stac or {})
    local = source.local_file
    if local is not None:
        return record | input_record_path(local)
    if not source.asset_hrefs:
        return record | remote.remote_record(source.given, source.href, hash_bytes=hash_remote)
    parts = []
    for href in source.asset_hrefs:
        if remote.is_remote(href):
            parts.append(remote.remote_record(href, remote.gdal_path(href), hash_bytes=hash_remote))
        else:
            local_asset = Path(href.removeprefix("file://"))
            parts.append({"path": str(local_asset)} | input_record_path(local_asset))
    return record | (parts[0] if len(parts) == 1 else {"assets": parts})


def input_record_path(path: str | Path) -> dict:
    return {"sha256": provenance.sha256_file(path), "bytes": os.path.getsize(path)}


def commit_outputs(
    output: Path, layers: list[gpkg.LayerData], opts: RunOptions, prob_paths: list[Path], summary: RunSummary
) -> None:
    """Write the optional COGs beside their targets, then the vector file atomically (its format
    from the output path or --format: geoseg.io.formats), then rename the COGs."""
    # Two queries can slug to the same layer name ("Roads", "roads!"): suffix _2, _3 ...
    names = gpkg.unique_layer_names(layer.name for layer in layers)
    layers = [replace(layer, name=n, provenance={**layer.provenance, "layer": n}) for layer, n in zip(layers, names, strict=True)]
    staged: list[tuple[Path, Path]] = []
    try:
        for target, write in (
            (opts.probabilities, cog.write_cog),
            (opts.mask_out, lambda src, dst: vectorize.write_mask(src, dst, threshold=opts.threshold)),
        ):
            if target is not None:
                part = Path(target).with_name(f".{Path(target).name}.geoseg-part")
                staged.append((part, Path(target)))
                write(prob_paths[0], part)
        formats.write_layers(output, layers, output_format=opts.output_format, overwrite=opts.overwrite,
                             append=opts.append)
        for part, target in staged:
            os.replace(part, target)
    finally:
        for part, _ in staged:
            part.unlink(missing_ok=True)
    summary.layers = [
        LayerSummary(layer.name, layer.description, len(layer.gdf),
                     layer.provenance.get("change_direction")) for layer in layers
    ]


def finish(summary: RunSummary, started: float) -> RunSummary:
    summary.seconds = round(time.perf_counter() - started, 3)
    for layer in summary.layers:
        if layer.features == 0:
            log.warning("found nothing for %r: wrote an empty layer %r", layer.query, layer.name)
    return summary
