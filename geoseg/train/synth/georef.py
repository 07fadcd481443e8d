"""Synthetic scenes on the map: grids, GeoTIFF files and ground truth in the scene's CRS.

A scene is rendered in pixel space and then given a grid (CRS + affine transform); its truth
polygons are the pixel-space polygons pushed through the same transform, so a polygon's map
coordinates map back through the written file's transform onto exactly the pixels that show it.
Geographic CRSs get degree pixel sizes computed from the ground sample distance at the scene's
latitude, so pixels are about `gsd` metres on the ground.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import rasterio.warp
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling

from .change import PairArrays, render_pair
from .layout import Instance
from .render import DTYPE_MAX, SceneArrays, quantise, render_scene, stream
from .vocab import CHANGE_KINDS, CLASS_FILTERS, CLASS_NAMES, DEFAULT_CHANGE_KINDS, matches, resolve

DEFAULT_GEOGRAPHIC_ORIGIN = (15.0, 45.0)  # lon, lat of the top-left corner (projected CRSs: the same place)
BAND_NAMES = ("red", "green", "blue", "nir")


def metres_per_degree(lat: float) -> tuple[float, float]:
    """(metres per degree of longitude, of latitude) on WGS84 at a latitude."""
    phi = math.radians(lat)
    per_lat = 111_132.92 - 559.82 * math.cos(2 * phi) + 1.175 * math.cos(4 * phi) - 0.0023 * math.cos(6 * phi)
    per_lon = 111_412.84 * math.cos(phi) - 93.5 * math.cos(3 * phi) + 0.118 * math.cos(5 * phi)
    return per_lon, per_lat


def scene_grid(crs: str | CRS, gsd: float, height: int, width: int, origin: tuple[float, float] | None = None) -> tuple[CRS, Affine]:
    """CRS and north-up transform whose pixels are about `gsd` metres, top-left at `origin`."""
    crs = CRS.from_user_input(crs)
    if crs.is_geographic:
        lon0, lat0 = origin or DEFAULT_GEOGRAPHIC_ORIGIN
        _, per_lat = metres_per_degree(lat0)
        lat_mid = lat0 - height * gsd / 2 / per_lat
        per_lon, per_lat = metres_per_degree(lat_mid)
        return crs, Affine(gsd / per_lon, 0.0, lon0, 0.0, -gsd / per_lat, lat0)
    units = (crs.linear_units or "").lower()
    if units not in ("metre", "meter", "m", "metres", "meters"):
        raise ValueError(f"CRS {crs.to_string()} has linear units {crs.linear_units!r}; use a metre-based or geographic CRS")
    if origin is None:
        xs, ys = rasterio.warp.transform("EPSG:4326", crs, [DEFAULT_GEOGRAPHIC_ORIGIN[0]], [DEFAULT_GEOGRAPHIC_ORIGIN[1]])
        origin = (round(xs[0]), round(ys[0]))
    x0, y0 = origin
    return crs, Affine(gsd, 0.0, x0, 0.0, -gsd, y0)


def to_map(geoms, transform: Affine) -> np.ndarray:
    """Pixel-space geometries -> map coordinates through an affine transform."""
    a, b, c, d, e, f = transform.a, transform.b, transform.c, transform.d, transform.e, transform.f
    return shapely.transform(np.asarray(geoms, dtype=object),
                             lambda xy: np.c_[a * xy[:, 0] + b * xy[:, 1] + c, d * xy[:, 0] + e * xy[:, 1] + f])


def truth_frame(instances: list[Instance], transform: Affine, crs: CRS) -> gpd.GeoDataFrame:
    """One row per instance: id, class, subclass, its attributes, geometry in map coordinates."""
    rows = [{"id": i.id, "class": i.cls, "subclass": i.subclass, **i.attrs} for i in instances]
    geoms: np.ndarray | list = to_map([i.geometry for i in instances], transform) if instances else []
    df = pd.DataFrame(rows, columns=None if rows else ["id", "class", "subclass"])
    return tidy(gpd.GeoDataFrame(df, geometry=list(geoms), crs=crs))


def tidy(frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Drop attribute columns that are empty here; true/false columns become bool (nullable when
    some rows lack them), so GeoPackage stores them as booleans."""
    frame = frame.dropna(axis=1, how="all").copy()
    for col in frame.columns:
        if col == "geometry" or frame[col].dtype != object:
            continue
        values = frame[col].dropna()
        if len(values) and all(isinstance(v, bool | np.bool_) for v in values):
            frame[col] = frame[col].astype(bool if len(values) == len(frame) else "boolean")
    return frame


def class_layers(frame: gpd.GeoDataFrame, instances: list[Instance]) -> dict[str, gpd.GeoDataFrame]:
    """Truth split by class mask (building, damaged_building, ...), each with its own columns."""
    out = {}
    for name in CLASS_NAMES:
        concept = resolve(name)
        ids = {i.id for i in instances if matches(i.cls, i.subclass, i.attrs, concept)}
        sub = frame[frame["id"].isin(ids)] if len(frame) else frame
        if len(sub):
            out[name] = tidy(sub)
    return out


def write_gpkg(path: Path, layers: dict[str, gpd.GeoDataFrame]) -> Path:
    """Write layers to a fresh GeoPackage (replacing the file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    for name, frame in layers.items():
        frame.to_file(path, layer=name, driver="GPKG", engine="pyogrio")
    return path


def write_geotiff(path: Path, image: np.ndarray, crs: CRS, transform: Affine, *, nodata: int | None,
                  tags: dict | None = None) -> Path:
    """Tiled, DEFLATE-compressed GeoTIFF (512-pixel blocks; 256 for small images)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w, bands = image.shape
    block = 512 if min(h, w) >= 512 else 256
    profile = {
        "driver": "GTiff", "height": h, "width": w, "count": bands, "dtype": image.dtype.name, "crs": crs,
        "transform": transform, "tiled": True, "blockxsize": block, "blockysize": block, "compress": "deflate",
        "predictor": 2, "interleave": "pixel", "photometric": "RGB",
    }
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.moveaxis(image, 2, 0))
        dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined][:bands]
        for b in range(bands):
            dst.set_band_description(b + 1, BAND_NAMES[b])
        dst.update_tags(**{k: str(v) for k, v in (tags or {}).items()})
    return path


@dataclass
class SynthScene:
    """A written synthetic scene: the GeoTIFF, its grid, the in-memory arrays and the truth."""

    path: Path
    arrays: SceneArrays
    crs: CRS
    transform: Affine
    truth: gpd.GeoDataFrame  # every instance, geometry in `crs`
    truth_path: Path | None = None

    @property
    def height(self) -> int:
        return self.arrays.height

    @property
    def width(self) -> int:
        return self.arrays.width

    def truth_polygons(self, phrase: str) -> gpd.GeoDataFrame:
        """Truth polygons (scene CRS) of a phrase; an empty frame when the target is absent."""
        ids = [i.id for i in self.arrays.select(phrase)]
        return tidy(self.truth[self.truth["id"].isin(ids)].reset_index(drop=True))

    def truth_mask(self, phrase: str) -> np.ndarray:
        """Truth mask of a phrase on the image grid (H x W bool)."""
        return self.arrays.mask(phrase)

    def save_truth(self, path: Path) -> Path:
        """GeoPackage with one layer per class (building, damaged_building, road, ...)."""
        self.truth_path = write_gpkg(path, class_layers(self.truth, self.arrays.instances))
        return self.truth_path


def write_scene(path: Path | str, seed: int, height: int, width: int, gsd: float = 0.5, *, crs: str | CRS = "EPSG:32633",
                dtype: str = "uint8", bands: int = 3, nodata_border: bool = False,
                origin: tuple[float, float] | None = None, season: str = "summer",
                truth_path: Path | str | None = None) -> SynthScene:
    """Render a scene and write it as a GeoTIFF; optionally save its truth GeoPackage.

    uint16 scenes hold 11-bit values (0..2047). With `nodata_border`, a ragged margin is nodata
    (value 0 in every band, set as the file's nodata) and the truth is clipped to the footprint.
    """
    scene = render_scene(seed, height, width, gsd, bands=bands, season=season, dtype=dtype, nodata_border=nodata_border)
    crs_obj, transform = scene_grid(crs, gsd, height, width, origin)
    tags = {"generator": "geoseg.train.synth", "seed": seed, "gsd_m": gsd, "season": scene.season, "value_max": DTYPE_MAX[dtype]}
    write_geotiff(Path(path), scene.image, crs_obj, transform, nodata=scene.nodata, tags=tags)
    out = SynthScene(Path(path), scene, crs_obj, transform, truth_frame(scene.instances, transform, crs_obj))
    if truth_path is not None:
        out.save_truth(Path(truth_path))
    return out


# ---- pairs --------------------------------------------------------------------------------------
@dataclass
class SynthPair:
    """A written before/after pair. Truth masks are on the before grid, polygons in its CRS."""

    before_path: Path
    after_path: Path
    arrays: PairArrays  # on the before grid
    crs: CRS
    transform: Affine
    after_crs: CRS
    after_transform: Affine
    after_shape: tuple[int, int]
    change_truth: gpd.GeoDataFrame  # column "change" names the kind
    before_truth: gpd.GeoDataFrame
    after_truth: gpd.GeoDataFrame
    truth_path: Path | None = None
    meta: dict = field(default_factory=dict)

    def truth_polygons(self, phrase: str) -> gpd.GeoDataFrame:
        """Change polygons of a change phrase, or after-date polygons of a scene phrase."""
        concept = resolve(phrase)
        if concept.kind == "change":
            return tidy(self.change_truth[self.change_truth["change"] == concept.change].reset_index(drop=True))
        ids = [i.id for i in self.arrays.after.select(phrase)]
        return tidy(self.after_truth[self.after_truth["id"].isin(ids)].reset_index(drop=True))

    def truth_mask(self, phrase: str) -> np.ndarray:
        return self.arrays.mask(phrase)

    def save_truth(self, path: Path) -> Path:
        """Layers: one per change kind present, plus before_<class> and after_<class>."""
        layers: dict[str, gpd.GeoDataFrame] = {}
        for kind in CHANGE_KINDS:
            sub = self.change_truth[self.change_truth["change"] == kind] if len(self.change_truth) else self.change_truth
            if len(sub):
                layers[kind] = tidy(sub)
        for when, frame, scene in (("before", self.before_truth, self.arrays.before), ("after", self.after_truth, self.arrays.after)):
            for name, layer in class_layers(frame, scene.instances).items():
                layers[f"{when}_{name}"] = layer
        self.truth_path = write_gpkg(path, layers)
        return self.truth_path


def _crop_instances(instances: list[Instance], margin: int, height: int, width: int) -> list[Instance]:
    from .geometry import clean

    view = shapely.box(0, 0, width, height)
    out = []
    for inst in instances:
        g = clean(shapely.affinity.translate(inst.geometry, -margin, -margin).intersection(view))
        if not g.is_empty and g.area >= 1.0:
            out.append(Instance(inst.cls, inst.subclass, g, dict(inst.attrs), inst.paint, inst.id))
    return out


def crop_scene(scene: SceneArrays, margin: int, height: int, width: int) -> SceneArrays:
    """The central height x width window of a scene rendered with `margin` extra pixels per side."""
    win = (slice(margin, margin + height), slice(margin, margin + width))
    instances = _crop_instances(scene.instances, margin, height, width)
    labels = scene.labels[win].copy()
    out = SceneArrays(scene.image[win].copy(), labels, {}, instances, scene.valid[win].copy(), scene.gsd, scene.seed,
                      scene.date, scene.layout, scene.nodata, None,
                      None if scene.reflectance is None else scene.reflectance[win].copy())
    out.masks = {name: out.mask(name) for name in CLASS_FILTERS}
    return out


def crop_pair(pair: PairArrays, margin: int, height: int, width: int) -> PairArrays:
    win = (slice(margin, margin + height), slice(margin, margin + width))
    changes = _crop_instances(pair.change_instances, margin, height, width)
    masks = {k: v[win].copy() for k, v in pair.change.items()}
    return PairArrays(crop_scene(pair.before, margin, height, width), crop_scene(pair.after, margin, height, width),
                      pair.kinds, masks, changes)


def after_grid_for(kind: str, crs: CRS, transform: Affine, height: int, width: int, gsd: float,
                   after_crs: str | CRS, after_gsd: float | None, rng: np.random.Generator) -> tuple[CRS, Affine, int, int]:
    """The grid the after image is written on: same, shifted/resampled, or another CRS."""
    if kind == "same":
        return crs, transform, height, width
    if kind == "offset":
        g = after_gsd or gsd * 1.2
        scale = g / gsd  # in units of the before grid's pixels
        dx, dy = rng.uniform(0.2, 0.8, size=2) * np.array([1.0, 1.0])  # sub-pixel shift, before pixels
        t = transform @ Affine.translation(dx, dy) @ Affine.scale(scale)
        return crs, t, int(math.floor((height - dy) / scale)), int(math.floor((width - dx) / scale))
    if kind == "other_crs":
        dst_crs = CRS.from_user_input(after_crs)
        left, top = transform @ (0, 0)
        right, bottom = transform @ (width, height)
        kwargs = {}
        if after_gsd is not None and not dst_crs.is_geographic:
            kwargs["resolution"] = after_gsd
        t, w2, h2 = rasterio.warp.calculate_default_transform(crs, dst_crs, width, height, left, bottom, right, top, **kwargs)
        return dst_crs, t, int(h2), int(w2)
    raise ValueError(f"after_grid must be 'same', 'offset' or 'other_crs', not {kind!r}")


def warp_image(reflectance: np.ndarray, src_crs: CRS, src_transform: Affine, dst_crs: CRS, dst_transform: Affine,
               height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear reprojection of an H x W x B float image; also the mask of covered pixels."""
    src = np.ascontiguousarray(np.moveaxis(reflectance, 2, 0), dtype=np.float32)
    dst = np.zeros((src.shape[0], height, width), dtype=np.float32)
    rasterio.warp.reproject(src, dst, src_transform=src_transform, src_crs=src_crs, dst_transform=dst_transform,
                            dst_crs=dst_crs, resampling=Resampling.bilinear)
    cover = np.zeros((height, width), dtype=np.uint8)
    rasterio.warp.reproject(np.ones(src.shape[1:], np.uint8), cover, src_transform=src_transform, src_crs=src_crs,
                            dst_transform=dst_transform, dst_crs=dst_crs, resampling=Resampling.nearest, dst_nodata=0)
    return np.moveaxis(dst, 0, 2), cover.astype(bool)


def write_pair(out_dir: Path | str, seed: int, height: int, width: int, gsd: float = 0.5, *,
               crs: str | CRS = "EPSG:32633", dtype: str = "uint8", bands: int = 3,
               change_kinds: tuple[str, ...] = DEFAULT_CHANGE_KINDS, after_grid: str = "same",
               after_crs: str | CRS = "EPSG:4326", after_gsd: float | None = None,
               origin: tuple[float, float] | None = None, season_before: str = "summer",
               season_after: str | None = None, prefix: str = "", save_truth: bool = True) -> SynthPair:
    """Write `<prefix>before.tif`, `<prefix>after.tif` (and `<prefix>truth.gpkg`) into out_dir.

    after_grid: "same" (identical grid), "offset" (sub-pixel shift and a pixel `after_gsd`,
    default 1.2 x gsd) or "other_crs" (reprojected into `after_crs` with rasterio.warp). Off-grid
    after images are rendered with a margin around the scene and warped (bilinear), so they are
    covered edge to edge. Truth masks are on the before grid, polygons in the before CRS.
    """
    out_dir = Path(out_dir)
    crs_obj, transform = scene_grid(crs, gsd, height, width, origin)
    margin = 0 if after_grid == "same" else max(8, int(math.ceil(0.06 * max(height, width))))
    padded = render_pair(seed, height + 2 * margin, width + 2 * margin, gsd, change_kinds=tuple(change_kinds),
                         bands=bands, dtype=dtype, season_before=season_before, season_after=season_after)
    pair = crop_pair(padded, margin, height, width) if margin else padded
    a_crs, a_transform, ah, aw = after_grid_for(after_grid, crs_obj, transform, height, width, gsd, after_crs,
                                                after_gsd, stream(seed, "grid"))
    if after_grid == "same":
        after_image, after_nodata = pair.after.image, None
    else:
        src_transform = transform @ Affine.translation(-margin, -margin)
        assert padded.after.reflectance is not None  # compose() keeps it
        warped, cover = warp_image(padded.after.reflectance[..., :bands], crs_obj, src_transform, a_crs, a_transform, ah, aw)
        full = cover.all()
        after_image = quantise(warped, bands, dtype, None if full else cover)
        after_nodata = None if full else 0
    tags = {"generator": "geoseg.train.synth", "seed": seed, "gsd_m": gsd, "value_max": DTYPE_MAX[dtype]}
    before_path = write_geotiff(out_dir / f"{prefix}before.tif", pair.before.image, crs_obj, transform, nodata=None,
                                tags={**tags, "date": "before", "season": pair.before.season})
    after_path = write_geotiff(out_dir / f"{prefix}after.tif", after_image, a_crs, a_transform, nodata=after_nodata,
                               tags={**tags, "date": "after", "season": pair.after.season, "after_grid": after_grid})
    change_truth = truth_frame(pair.change_instances, transform, crs_obj)
    if "change" not in change_truth.columns:
        change_truth["change"] = pd.Series(dtype=object)
    result = SynthPair(before_path, after_path, pair, crs_obj, transform, a_crs, a_transform, (ah, aw), change_truth,
                       truth_frame(pair.before.instances, transform, crs_obj),
                       truth_frame(pair.after.instances, transform, crs_obj),
                       meta={"after_grid": after_grid, "margin": margin, "kinds": list(change_kinds)})
    if save_truth:
        result.save_truth(out_dir / f"{prefix}truth.gpkg")
    return result
