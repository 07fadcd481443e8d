"""Cloud-Optimised GeoTIFF copies of the rasters a run writes (probabilities, masks)."""

from __future__ import annotations

from pathlib import Path

import rasterio.shutil


def write_cog(src_path: str | Path, dst_path: str | Path, *, overview_resampling: str | None = None) -> None:
    """Copy a tiled GeoTIFF to a COG (DEFLATE, internal overviews). GDAL streams it block by block,
    and tags, scale/offset and nodata travel with it, so `geoseg vectorize` can read it back.
    Masks want `overview_resampling="nearest"` (GDAL's default averages)."""
    extra = {"overview_resampling": overview_resampling} if overview_resampling else {}
    rasterio.shutil.copy(src_path, dst_path, driver="COG", compress="DEFLATE", BIGTIFF="IF_SAFER", **extra)
