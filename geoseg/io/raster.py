"""Open and validate input rasters, pick bands, honour nodata, and align a second date.

Everything the pipeline reads goes through a `Scene`: one or two validated files, the reference
grid every tile is cut from, and normalisation statistics computed once (from a decimated read)
and shared by every tile and by both dates. Per-tile min-max stretching, which makes contrast jump
between tiles (samgeo, geoai), never happens here.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform as transform_coords
from rasterio.windows import Window
from shapely.geometry.base import BaseGeometry

from geoseg.errors import GeosegError, InputError
from geoseg.io import gsd as gsd_
from geoseg.io import remote, stac

log = logging.getLogger("geoseg")

STATS_MAX_SIDE = 1024  # longest side of the decimated read used for normalisation statistics
PERCENTILES = (2.0, 98.0)
RESAMPLING = {"nearest": Resampling.nearest, "bilinear": Resampling.bilinear, "cubic": Resampling.cubic}


@dataclass(frozen=True)
class Grid:
    """The pixel grid tiles are cut from: size, georeferencing and CRS (None: pixel coordinates)."""

    width: int
    height: int
    transform: Affine
    crs: CRS | None

    @property
    def pixel_size(self) -> tuple[float, float]:
        """Side lengths of one pixel in CRS units (column step, row step). They are the lengths of
        the affine's columns, so a rotated or sheared grid reports its true pixel size."""
        t = self.transform
        return math.hypot(t.a, t.d), math.hypot(t.b, t.e)

    def resized(self, width: int, height: int) -> Grid:
        """The grid of `width` x `height` pixels over the same footprint: the affine scaled, so
        rotation and shear are kept and map coordinates of the outline do not move."""
        if (width, height) == (self.width, self.height):
            return self
        scale = Affine.scale(self.width / width, self.height / height)
        return Grid(width, height, self.transform @ scale, self.crs)

    def footprint(self, crs: CRS | None = None, *, densify: int = 21) -> shapely.Polygon:
        """The grid's outline in map coordinates (in `crs` when given and different): a
        parallelogram for any affine, rotated or not; edges are densified so that a
        reprojected outline stays close to the true curved one."""
        t = np.linspace(0.0, 1.0, densify, endpoint=False)
        w, h = self.width, self.height
        cols = np.concatenate([t * w, np.full(densify, w), (1 - t) * w, np.zeros(densify)])
        rows = np.concatenate([np.zeros(densify), t * h, np.full(densify, h), (1 - t) * h])
        a, b, c, d, e, f = self.transform[:6]
        xs, ys = a * cols + b * rows + c, d * cols + e * rows + f
        if crs is not None and self.crs is not None and crs != self.crs:
            xs, ys = transform_coords(self.crs, crs, list(xs), list(ys))
        points = np.column_stack([xs, ys])
        points = points[np.isfinite(points).all(axis=1)]  # corners outside the target CRS's domain
        return shapely.Polygon(points) if len(points) >= 3 else shapely.Polygon()


@dataclass(frozen=True)
class BandStats:
    """Per-band linear stretch to [0, 1]: (value - low) / (high - low), clipped."""

    low: tuple[float, ...]
    high: tuple[float, ...]

    def to_dict(self) -> dict:
        return {"low": list(self.low), "high": list(self.high), "percentiles": list(PERCENTILES)}


@dataclass(frozen=True)
class Source:
    """Where an input's pixels come from: a local file, a URL or /vsi path GDAL reads remotely,
    or a STAC Item's asset(s). `name` is what messages, the `source` field and the provenance
    show (a URL without credentials); `href` is what GDAL opens."""

    name: str | Path
    href: str
    remote: bool = False
    given: str = ""  # as the user gave it (may hold credentials: never shown)
    stac: dict | None = None  # item id, self link, asset hrefs (geoseg.io.stac)
    asset_hrefs: tuple[str, ...] = ()

    @property
    def local_file(self) -> Path | None:
        """The file on disk whose bytes are the input, when there is exactly one."""
        if self.remote or self.href.startswith("/vsi"):
            return None
        return Path(self.href)

    @property
    def short_name(self) -> str:
        return remote.display_name(self.asset_hrefs[0] if self.asset_hrefs else self.name)


def resolve(path: str | Path | Source, asset: str | None = None) -> Source:
    """What the user named as an input, resolved: a path stays a Path; a URL (https://, s3://,
    gs://, az://) or /vsi path is read remotely; a STAC Item (.json) becomes its chosen asset(s)."""
    if isinstance(path, Source):
        return path
    text = str(path)
    if stac.is_stac(text):
        item = _stac_item(text, asset)
        first = item.asset_hrefs[0] if item.asset_hrefs else item.href
        return Source(item.name, item.href, remote=remote.is_remote(first) or remote.is_remote(text), given=text,
                      stac=item.record, asset_hrefs=item.asset_hrefs)
    if remote.is_remote(text):
        remote.configure_gdal(text)
        return Source(remote.redact(text), remote.gdal_path(text), remote=True, given=text)
    return Source(Path(path), str(path), given=text)


_stac_lock = threading.Lock()
_stac_cache: dict[tuple[str, str | None], stac.ItemAssets] = {}


def _stac_item(text: str, asset: str | None) -> stac.ItemAssets:
    """An Item is read once per process and asset choice (validated, then opened)."""
    key = (text, asset)
    with _stac_lock:
        if key not in _stac_cache:
            if len(_stac_cache) > 256:
                _stac_cache.clear()
            _stac_cache[key] = stac.resolve(text, asset)
        return _stac_cache[key]


@dataclass
class RasterInput:
    """One validated input file, optionally warped onto a reference grid."""

    source: Source
    bands: tuple[int, ...]  # 1-based band indexes read from the file
    nodata: float | None
    native: Grid
    band_count: int  # bands in the file (a pair's dates must match when -b is not given)
    warp_to: Grid | None = None  # set when read on another grid: the other date's, or a resampled one
    resampling: Resampling = Resampling.bilinear
    _local: threading.local = field(default_factory=threading.local, repr=False)

    @property
    def path(self) -> str | Path:
        """The input as messages, fields and provenance name it (a URL without credentials)."""
        return self.source.name

    @property
    def href(self) -> str:
        """What GDAL opens."""
        return self.source.href

    def _dataset(self):
        """A dataset handle per thread: GDAL handles must not be shared across reader threads."""
        ds = getattr(self._local, "ds", None)
        if ds is None:
            try:
                ds = rasterio.open(self.href)
            except RasterioIOError as e:
                if self.source.remote:
                    remote.raise_for(str(self.path), str(e), opening=False)
                raise
            if self.warp_to is not None:
                ds = WarpedVRT(
                    ds,
                    crs=self.warp_to.crs,
                    transform=self.warp_to.transform,
                    width=self.warp_to.width,
                    height=self.warp_to.height,
                    resampling=self.resampling,
                    src_nodata=self.nodata,
                    nodata=self.nodata,
                    add_alpha=self.nodata is None,
                )
            self._local.ds = ds
        return ds

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Raw values (bands x h x w, float32) and the validity mask (h x w, bool) of a window."""
        ds = self._dataset()
        try:
            data = ds.read(list(self.bands), window=window, out_dtype="float32")
            if isinstance(ds, WarpedVRT) and self.nodata is None:
                valid = ds.read(ds.count, window=window) > 0  # the alpha band added by the warp
            else:
                valid = _any_band_valid(ds.read_masks(list(self.bands), window=window))
        except RasterioError as e:
            if self.source.remote:
                remote.raise_for(str(self.path), str(e), opening=False)
            raise GeosegError(
                f"{self.path}: reading window {window} failed ({e}); the file may be truncated or "
                "corrupt: check it with `gdalinfo -checksum` and re-export it"
            ) from None
        if self.nodata is not None:
            valid &= ~np.all(data == self.nodata, axis=0)
        valid &= np.all(np.isfinite(data), axis=0)
        return data, valid

    def decimated(self, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
        """A small read of the whole grid (for statistics): bands x h x w and validity."""
        if self.warp_to is not None and self.warp_to == self.native.resized(self.warp_to.width, self.warp_to.height):
            # A resized read grid (geoseg.io.gsd) covers the file's own pixels: sample the file
            # itself, which GDAL decimates from blocks or overviews, rather than have the warped
            # view resample the whole scene once just for a sample.
            with rasterio.open(self.href) as ds:
                return self._sample(ds, self.native)
        return self._sample(self._dataset(), grid)

    def _sample(self, ds, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
        scale = max(grid.width, grid.height) / STATS_MAX_SIDE
        out_h = max(1, round(grid.height / max(scale, 1)))
        out_w = max(1, round(grid.width / max(scale, 1)))
        window = Window(0, 0, grid.width, grid.height)
        try:
            data = ds.read(
                list(self.bands), window=window, out_shape=(len(self.bands), out_h, out_w),
                resampling=Resampling.nearest, out_dtype="float32",
            )
            if isinstance(ds, WarpedVRT) and self.nodata is None:
                valid = ds.read(ds.count, window=window, out_shape=(out_h, out_w), resampling=Resampling.nearest) > 0
            else:
                valid = _any_band_valid(
                    ds.read_masks(list(self.bands), window=window, out_shape=(len(self.bands), out_h, out_w))
                )
        except RasterioError as e:
            if self.source.remote:
                remote.raise_for(str(self.path), str(e), opening=False)
            raise InputError(
                f"{self.path}: the file cannot be read ({e}); it may be truncated or corrupt: "
                "check it with `gdalinfo -checksum` and re-export it"
            ) from None
        if self.nodata is not None:
            valid &= ~np.all(data == self.nodata, axis=0)
        valid &= np.all(np.isfinite(data), axis=0)
        return data, valid


def _any_band_valid(masks: np.ndarray) -> np.ndarray:
    """A pixel is nodata only where every band says so (GDAL nodata masks are per band; a 0 in
    one band of a valid pixel is data). Alpha bands and internal masks are shared by all bands."""
    return masks.max(axis=0) > 0


@dataclass
class Scene:
    """What the pipeline tiles: the reference grid, one or two inputs on it, shared statistics."""

    grid: Grid
    inputs: list[RasterInput]  # [scene] or [before, after]
    stats: BandStats
    model_bands: int
    overlap_fraction: float = 1.0  # of the reference grid covered by both dates (pairs)
    gsd: gsd_.GsdChoice | None = None  # the ground resolution `grid` reads the files at

    @property
    def paths(self) -> list[str | Path]:
        return [i.path for i in self.inputs]

    def read_tile(self, window: Window) -> tuple[list[np.ndarray], np.ndarray]:
        """Normalised float32 arrays (model_bands x h x w) per input and their joint validity."""
        arrays, valid = [], None
        for source in self.inputs:
            raw, ok = source.read(window)
            arrays.append(to_model_bands(normalise(raw, self.stats), self.model_bands))
            valid = ok if valid is None else valid & ok
        assert valid is not None  # a scene has at least one input
        return arrays, valid


# ---------------------------------------------------------------- opening and validation


def open_input(
    path: str | Path | Source,
    *,
    bands: Sequence[int] | None = None,
    nodata: float | None = None,
    pixel_coords: bool = False,
    default_bands: int = 3,
    asset: str | None = None,
) -> RasterInput:
    """Validate a raster file, URL or STAC Item and describe it; every failure is one line
    naming the input.

    Without `bands`, the first `default_bands` bands are read (the model's band count); `asset`
    chooses a STAC Item's asset(s) (geoseg.io.stac).
    """
    source = resolve(path, asset)
    path = source.name
    local = source.local_file
    if local is not None and not source.stac:
        if not local.exists():
            raise InputError(f"{path}: no such file; check the path")
        if local.is_dir():
            raise InputError(f"{path}: is a directory, not a raster file")
    try:
        with rasterio.open(source.href) as src:
            profile = (src.count, src.width, src.height, src.transform, src.crs, src.nodata, src.dtypes)
            _probe_first_block(src, path, source.remote)
    except RasterioIOError as e:
        if source.remote:
            remote.raise_for(str(path), str(e), opening=True)
        raise InputError(
            f"{path}: not a readable raster ({_first_line(e)}); give a GeoTIFF or another GDAL raster"
        ) from None
    count, width, height, transform, crs, file_nodata, dtypes = profile
    selected = _select_bands(path, count, bands, default_bands)
    if any(np.dtype(dtypes[b - 1]).kind == "c" for b in selected):
        raise InputError(f"{path}: complex-valued bands are not imagery; select other bands with -b")
    georef_missing = crs is None or transform == Affine.identity()
    if georef_missing and not pixel_coords:
        raise InputError(
            f"{path}: has no CRS or geotransform, so polygons cannot be georeferenced; assign one "
            "(gdal_edit.py -a_srs EPSG:XXXX -a_ullr ...) or pass --pixel-coords"
        )
    if not georef_missing and transform.determinant == 0:
        raise InputError(
            f"{path}: its geotransform is degenerate (zero pixel area); fix it with "
            "gdal_edit.py -a_ullr ... or re-georeference the file"
        )
    if georef_missing:
        transform, crs = Affine.identity(), None
    use_nodata = nodata if nodata is not None else file_nodata
    if use_nodata is not None and math.isnan(use_nodata):
        use_nodata = None  # NaN never compares equal; the finite check in read() covers it
    return RasterInput(
        source=source,
        bands=tuple(selected),
        nodata=use_nodata,
        native=Grid(width, height, transform, crs),
        band_count=count,
    )


def _probe_first_block(src, path: str | Path, is_remote: bool = False) -> None:
    """Read one small window so a truncated or corrupt file fails here, not mid-run."""
    try:
        src.read(1, window=Window(0, 0, min(src.width, 64), min(src.height, 64)))
    except RasterioError as e:
        if is_remote:
            remote.raise_for(str(path), str(e), opening=True)
        raise InputError(
            f"{path}: the file is corrupt or truncated ({_first_line(e)}); re-export or re-download it"
        ) from None


def _select_bands(path: str | Path, count: int, bands: Sequence[int] | None, default: int) -> list[int]:
    if not bands:
        return list(range(1, min(count, default) + 1))
    bad = [b for b in bands if b < 1 or b > count]
    if bad:
        raise InputError(f"{path}: has {count} band(s); -b {','.join(map(str, bad))} does not exist")
    return list(bands)


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def open_scene(
    path: str | Path,
    *,
    bands: Sequence[int] | None = None,
    nodata: float | None = None,
    model_bands: int = 3,
    pixel_coords: bool = False,
    gsd: gsd_.GsdSetting = "native",
    gsd_range: tuple[float, float] | None = None,
    asset: str | None = None,
) -> Scene:
    """Open one scene and compute its normalisation statistics.

    `gsd` ("native", "auto" or metres) with the model's `gsd_range` decides the grid the scene is
    read at (see geoseg.io.gsd); the choice is logged once and kept in `Scene.gsd`."""
    source = open_input(path, bands=bands, nodata=nodata, pixel_coords=pixel_coords, default_bands=model_bands,
                        asset=asset)
    choice, grid = read_grid(source, gsd, gsd_range)
    read_on(source, grid, decimating=choice.coarsens)
    stats = compute_stats([source], grid)
    return Scene(grid=grid, inputs=[source], stats=stats, model_bands=model_bands, gsd=choice)


def read_grid(
    source: RasterInput, setting: gsd_.GsdSetting, model_range: tuple[float, float] | None
) -> tuple[gsd_.GsdChoice, Grid]:
    """The ground resolution to read `source` at and the grid that gives it (its own grid, or
    the same footprint in fewer/more pixels); the choice is logged once, on stderr by the CLI."""
    native = source.native
    sides = gsd_.pixel_sides_m(native.transform, native.crs, native.width, native.height)
    choice = gsd_.choose_gsd(source.path, sides, setting, model_range)
    grid = native.resized(*choice.read_shape(native.width, native.height))
    # A resampled read changes what the model sees: worth saying at the default log level; an
    # auto choice to keep the pixels is worth -v; reading natively because told to, only -vv.
    level = logging.WARNING if grid != native else logging.INFO if choice.mode != "native" else logging.DEBUG
    log.log(level, "%s", choice.describe(source.path))
    return choice, grid


def read_on(source: RasterInput, grid: Grid, *, decimating: bool, resampling: Resampling = Resampling.bilinear) -> None:
    """Make `source` read its pixels on `grid` (a warped view when that is not its own grid).

    Decimation uses area averaging: every native pixel counts, so fine texture does not alias
    into the coarser grid as it would with nearest or bilinear sampling."""
    if source.native == grid:
        return
    source.warp_to = grid
    source.resampling = Resampling.average if decimating else resampling


def open_pair(
    before: str | Path,
    after: str | Path,
    *,
    bands: Sequence[int] | None = None,
    nodata: float | None = None,
    model_bands: int = 3,
    align_to: str = "before",
    resampling: str = "bilinear",
    gsd: gsd_.GsdSetting = "native",
    gsd_range: tuple[float, float] | None = None,
    asset: str | None = None,
) -> Scene:
    """Open a bi-temporal pair and warp the other date onto the reference date's grid.

    With `gsd`/`gsd_range` (see open_scene) the reference date's resolution decides the read
    grid, and both dates are read on it."""
    first = open_input(before, bands=bands, nodata=nodata, default_bands=model_bands, asset=asset)
    second = open_input(after, bands=bands, nodata=nodata, default_bands=model_bands, asset=asset)
    if not bands and first.band_count != second.band_count:
        raise InputError(
            f"{second.path}: has {second.band_count} band(s) but {first.path} has {first.band_count}; "
            "select matching bands with -b"
        )
    if align_to not in ("before", "after"):
        raise InputError(f"--align-to must be 'before' or 'after', not {align_to!r}")
    if resampling not in RESAMPLING:
        raise InputError(f"--resampling must be one of {', '.join(RESAMPLING)}, not {resampling!r}")
    ref, other = (first, second) if align_to == "before" else (second, first)
    fraction = overlap_fraction(ref.native, other.native)
    if fraction <= 0:
        crs = ref.native.crs
        raise InputError(
            f"{other.path} does not overlap {ref.path} (their footprints are disjoint in "
            f"{crs.to_string() if crs else 'pixel space'}); give two images of the same place"
        )
    choice, grid = read_grid(ref, gsd, gsd_range)
    read_on(ref, grid, decimating=choice.coarsens)
    read_on(other, grid, decimating=choice.coarsens, resampling=RESAMPLING[resampling])
    stats = compute_stats([first, second], grid)
    return Scene(
        grid=grid, inputs=[first, second], stats=stats, model_bands=model_bands,
        overlap_fraction=fraction, gsd=choice,
    )



def overlap_fraction(ref: Grid, other: Grid) -> float:
    """Share of the reference grid's footprint that the other grid covers.

    Footprints are the true (possibly rotated) outlines, not their bounding boxes, which for a
    rotated scene would count the empty corners of the box as covered."""
    ref_outline = ref.footprint()
    other_outline: BaseGeometry = other.footprint(ref.crs)
    if other_outline.is_empty:
        return 0.0
    if not other_outline.is_valid:  # a reprojection that folds the outline (antimeridian, poles)
        other_outline = shapely.make_valid(other_outline)
    return float(ref_outline.intersection(other_outline).area / ref_outline.area)


# ---------------------------------------------------------------- normalisation


def compute_stats(sources: Sequence[RasterInput], grid: Grid) -> BandStats:
    """Per-band 2-98 percentiles of valid pixels from a decimated read, pooled over all dates."""
    samples = []
    for source in sources:
        data, valid = source.decimated(grid)
        samples.append(data[:, valid])
    pooled = np.concatenate(samples, axis=1)
    if pooled.shape[1] == 0:
        names = " and ".join(str(s.path) for s in sources)
        raise InputError(
            f"{names}: every pixel is nodata; check the file or override the nodata value with --nodata"
        )
    low, high = np.percentile(pooled, PERCENTILES, axis=1)
    # A band whose percentiles coincide (a mostly constant band, a sparse 0/1 band) falls back to
    # its full range so the stretch never divides by zero.
    flat = high <= low
    low[flat] = pooled.min(axis=1)[flat]
    high[flat] = pooled.max(axis=1)[flat]
    high = np.where(high <= low, low + 1.0, high)
    return BandStats(tuple(map(float, low)), tuple(map(float, high)))


def normalise(raw: np.ndarray, stats: BandStats) -> np.ndarray:
    low = np.asarray(stats.low, dtype=np.float32)[:, None, None]
    high = np.asarray(stats.high, dtype=np.float32)[:, None, None]
    out = (raw - low) / (high - low)
    np.clip(out, 0.0, 1.0, out=out)
    return np.nan_to_num(out, copy=False)


def to_model_bands(data: np.ndarray, model_bands: int) -> np.ndarray:
    """Match the model's band count: a single band is repeated (grey), extra bands dropped."""
    count = data.shape[0]
    if count == model_bands:
        return data
    if count > model_bands:
        return data[:model_bands]
    return np.concatenate([data, np.repeat(data[-1:], model_bands - count, axis=0)], axis=0)
