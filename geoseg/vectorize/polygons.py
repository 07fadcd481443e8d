"""The vectoriser's entry points: a raster file or a row feed in, a GeoDataFrame of polygons out
(and the thresholded mask raster of --mask-out)."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import rasterio.shutil
import shapely
from affine import Affine
from rasterio.windows import Window

from geoseg.errors import InputError
from geoseg.io.cog import write_cog
from geoseg.vectorize.options import VectorizeOptions
from geoseg.vectorize.pixels import Coding, coding_of, feed_reader, read_block
from geoseg.vectorize.postprocess import fill_holes, polygon_metrics, simplify
from geoseg.vectorize.rowfeed import RowFeed
from geoseg.vectorize.seams import Components, components, to_world

OUTPUT_COLUMNS = ["score", "pixel_count", "area_m2", "perimeter_m"]




def _empty_frame(crs) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {
            "score": np.zeros(0, dtype=np.float64),
            "pixel_count": np.zeros(0, dtype=np.int64),
            "area_m2": np.zeros(0, dtype=np.float64),
            "perimeter_m": np.zeros(0, dtype=np.float64),
        },
        geometry=gpd.GeoSeries([], crs=crs),
        crs=crs,
    )


def vectorize_probabilities(
    path: str | Path, options: VectorizeOptions | None = None, *, progress: bool = False
) -> gpd.GeoDataFrame:
    """Polygons of the foreground of a probability raster (or mask), in the raster's CRS.

    Columns: geometry (Polygon, or MultiPolygon with 8-connectivity or after simplification),
    score (mean probability of the component's foreground pixels), pixel_count (foreground pixels),
    area_m2, perimeter_m (see polygon_metrics). Rows are sorted by the component's first pixel in
    raster order (top row first, then left to right).
    """
    options = options or VectorizeOptions()
    options.validate()
    try:
        src = rasterio.open(path)  # a str as given: a /vsi path must not go through Path
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"{path}: cannot open as a raster ({exc})") from exc
    with src:
        coding = coding_of(src)
        read = partial(read_block, src, coding=coding, threshold=options.threshold)
        comps = Components.concat(list(components(read, src.shape, options, coding, progress)))
        return _frame(comps, coding, src.transform, src.crs, options)


# Blocks read from a RowFeed are at most this tall (see pipeline.polygons_beside for the memory).
STREAMED_BLOCK = 1024


def vectorize_rows(
    feed: RowFeed, transform: Affine, crs, options: VectorizeOptions, *, scale: float, nodata: int
) -> gpd.GeoDataFrame:
    """vectorize_probabilities for a raster whose rows arrive through `feed` as they are made
    (the pipeline's probability rasters: integer values, probability = value * scale, `nodata`).

    The same polygons and fields as reading the finished raster back, in blocks of at most
    STREAMED_BLOCK rows. Raises FeedAbandoned when the writer gives up on the feed."""
    options = replace(options, block_size=min(options.block_size, STREAMED_BLOCK))
    options.validate()
    coding = Coding(False, scale, 0.0)
    read = feed_reader(feed, coding, nodata, options.threshold)
    try:
        comps = Components.concat(list(components(read, (feed.height, feed.width), options, coding, False)))
    except BaseException:
        feed.end(abandoned=True)  # the writer must not wait on a reader that is gone
        raise
    return _frame(comps, coding, transform, crs, options)


def _frame(comps: Components, coding: Coding, transform: Affine, crs, options: VectorizeOptions) -> gpd.GeoDataFrame:
    """The components as the result's rows: sorted, holes filled, filtered, simplified, in map
    coordinates with their measures."""
    comps = comps.take(np.argsort(comps.first, kind="stable"))
    if options.hole_area_limit_m2 > 0:
        comps = fill_holes(comps, options.hole_area_limit_m2, transform, crs)
    comps = comps.take(np.flatnonzero(comps.pixel_count >= options.min_area_px))
    geoms = simplify(comps.geoms, options.simplify) if options.simplify > 0 else comps.geoms
    kept = np.flatnonzero(shapely.is_geometry(geoms))
    if kept.size == 0:
        return _empty_frame(crs)
    comps, geoms = comps.take(kept), geoms[kept]
    # One normal form per component whatever the block layout: ring start, orientation, hole order.
    world = shapely.normalize(to_world(geoms, transform))
    area, perimeter = polygon_metrics(world, crs)
    frame = gpd.GeoDataFrame(
        {
            "score": coding.mean_probability(comps.value_sum, comps.pixel_count),
            "pixel_count": comps.pixel_count.astype(np.int64),
            "area_m2": area,
            "perimeter_m": perimeter,
        },
        geometry=gpd.GeoSeries(world, crs=crs),
        crs=crs,
    )
    return frame[frame["area_m2"] >= options.min_area_m2].reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Thresholded mask raster (for --mask-out)


def write_mask(
    probabilities: str | Path,
    destination: str | Path,
    *,
    threshold: float = 0.5,
    block_size: int = 2048,
    cog: bool = True,
) -> Path:
    """Write the thresholded foreground as a uint8 raster: 1 in, 0 out, 255 nodata.

    Same pixel rule as vectorize_probabilities (threshold, nodata, masks), no sieve or area
    filter. With cog=True the result is a Cloud-Optimised GeoTIFF (DEFLATE, internal overviews);
    the blocks are first written to a tiled temporary GeoTIFF beside the destination, so memory
    stays bounded by block_size.
    """
    VectorizeOptions(threshold=threshold, block_size=block_size).validate()
    destination = Path(destination)
    tmp = destination.with_name(f".{destination.name}.blocks.tif") if cog else destination
    try:
        with rasterio.open(probabilities) as src:
            coding = coding_of(src)
            profile = {
                "driver": "GTiff", "width": src.width, "height": src.height, "count": 1,
                "dtype": "uint8", "nodata": 255, "crs": src.crs, "transform": src.transform,
                "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate",
            }
            with rasterio.open(tmp, "w", **profile) as dst:
                for row0 in range(0, src.height, block_size):
                    for col0 in range(0, src.width, block_size):
                        window = Window(col0, row0, min(block_size, src.width - col0),
                                        min(block_size, src.height - row0))
                        foreground, valid, _ = read_block(src, window, coding, threshold)
                        out = np.where(valid, foreground.astype(np.uint8), np.uint8(255))
                        dst.write(out, 1, window=window)
        if cog:
            write_cog(tmp, destination, overview_resampling="nearest")
    finally:
        if cog and tmp.exists():
            tmp.unlink()
    return destination
