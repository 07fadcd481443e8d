"""Ground sample distance: how large a scene's pixels are on the ground, and the resolution to
read the scene at for a model trained on a range of resolutions.

A model sees objects at the scale it was trained on: a compact model trained on 0.07-2 m pixels
sees a 5 cm drone orthophoto's cars as it would see lorries. `choose_gsd` picks the read
resolution; `geoseg.io.raster` reads the scene on the correspondingly coarser grid (same footprint,
the native affine scaled), so tiles, blending and vectorising all happen on that grid and
polygons are mapped back to the map exactly through its affine.

Modes (the `--gsd` option):
- `auto`: a scene finer than the model's range is read at the range's lower end (the most detail
  the model was trained for); anything else, and any scene without a CRS or any model without a
  declared range, is read as it is. Auto never upsamples.
- `native`: always the file's own pixels.
- a number of metres: read at exactly that resolution, upsampling if the user asks for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from affine import Affine
from pyproj import CRS as ProjCRS
from pyproj import Geod

from geoseg.errors import InputError

GSD_MODES = ("auto", "native")
# `auto` leaves scenes within 5 % of the range's lower end alone: resampling by a few percent
# blurs every pixel and changes nothing the model would notice.
AUTO_TOLERANCE = 0.05

# A forced resolution more than 10x finer than the file's pixels invents 100x the pixels (and
# blending memory grows with the read width): almost surely a typo (0.03 for 0.3), so refused.
MAX_UPSAMPLING = 10.0

GsdSetting = str | float  # "auto" | "native" | metres > 0


def parse_gsd(value: object) -> GsdSetting:
    """`--gsd` as given (auto, native, or metres as a number or text) -> "auto" | "native" | float."""
    if isinstance(value, str) and value.strip().lower() in GSD_MODES:
        return value.strip().lower()
    try:
        metres = float(str(value).strip().lower().removesuffix("m"))
    except ValueError:
        metres = math.nan
    if not (math.isfinite(metres) and metres > 0):
        raise InputError(f"--gsd {value!r}: give auto, native or a ground resolution in metres > 0 (e.g. 0.3)")
    return metres


@dataclass(frozen=True)
class GsdChoice:
    """The resolution a scene is read at and why.

    native_m: ground size of a native pixel in metres (geometric mean of its two sides; None
    without a CRS). read_m: the resolution the scene is read at; the read grid covers exactly the
    scene's footprint in whole pixels, so its pixels match read_m to within one pixel over the
    scene's width (and `auto` leaves a side that is already coarser than read_m as it is).
    scale: how many native pixels one read pixel spans along columns and rows.
    """

    mode: str  # auto | native | metres (a number was given)
    native_m: float | None
    read_m: float | None
    scale: tuple[float, float] = (1.0, 1.0)
    model_range_m: tuple[float, float] | None = None

    @property
    def resampled(self) -> bool:
        return self.scale != (1.0, 1.0)

    @property
    def coarsens(self) -> bool:
        """True when a read pixel spans more than one native pixel (decimation)."""
        return max(self.scale) > 1.0

    def read_shape(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of the read grid that covers the same footprint as width x height."""
        if not self.resampled:
            return width, height
        return max(1, round(width / self.scale[0])), max(1, round(height / self.scale[1]))

    @property
    def outside_range(self) -> str | None:
        """`coarser` or `finer` when the model reads this scene at a resolution outside the range
        it was trained for (beyond AUTO_TOLERANCE), else None. Auto never leaves a scene finer than
        the range; `--gsd native` (or a forced resolution) can."""
        if self.read_m is None or self.model_range_m is None:
            return None
        low, high = self.model_range_m
        if self.read_m > high * (1 + AUTO_TOLERANCE):
            return "coarser"
        if self.read_m < low * (1 - AUTO_TOLERANCE):
            return "finer"
        return None

    def range_warning(self, path: str | Path) -> str | None:
        """One line for people when the scene is read outside the model's range, else None."""
        side = self.outside_range
        if side is None or self.model_range_m is None:
            return None
        low, high = self.model_range_m
        read = f"read at {_fmt(self.read_m)} m" if self.resampled else f"{_fmt(self.native_m)} m pixels"
        advice = ("objects are smaller than the model has seen; expect few or no polygons" if side == "coarser"
                  else "objects are larger than the model has seen; --gsd auto reads it inside the range")
        return (f"{path}: {read}, {side} than the {_fmt(low)}-{_fmt(high)} m the model was trained for; {advice}")

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "native_m": _sig(self.native_m),
            "read_m": _sig(self.read_m),
            "model_range_m": list(self.model_range_m) if self.model_range_m else None,
            "outside_model_range": self.outside_range,
        }

    def describe(self, path: str | Path) -> str:
        """One log line: what was read at which resolution, and how to get the other behaviour."""
        if self.native_m is None:
            return f"{path}: no CRS, so no ground resolution; read at its own pixels"
        native = f"{path}: {_fmt(self.native_m)} m pixels"
        option = f"--gsd {_fmt(self.read_m) if self.mode == 'metres' else self.mode}"
        if not self.resampled:
            return f"{native} read as they are ({option})"
        if self.mode == "auto":
            low, high = self.model_range_m or (math.nan, math.nan)
            return (f"{native} read at {_fmt(self.read_m)} m (model range {_fmt(low)}-{_fmt(high)} m); "
                    "--gsd native keeps them")
        return f"{native} read at {_fmt(self.read_m)} m ({option})"


def pixel_sides_m(transform: Affine, crs, width: int, height: int) -> tuple[float, float] | None:
    """Ground lengths in metres of a pixel's two sides (along columns, along rows), or None
    without a CRS. The sides are the affine's column vectors, so rotated and sheared grids
    measure their true pixel size. Geographic CRSs: geodesic lengths of the pixel at the scene
    centre on the CRS's ellipsoid (a degree of longitude shrinks with latitude)."""
    if crs is None:
        return None
    crs = ProjCRS.from_user_input(crs)
    a, b, c, d, e, f = transform[:6]
    if not crs.is_geographic:
        axis = crs.axis_info
        metres_per_unit = float(axis[0].unit_conversion_factor) if axis and axis[0].unit_conversion_factor else 1.0
        return math.hypot(a, d) * metres_per_unit, math.hypot(b, e) * metres_per_unit
    geod = crs.get_geod() or Geod(ellps="WGS84")
    col, row = width / 2, height / 2
    lon, lat = a * col + b * row + c, d * col + e * row + f
    # Axis order: rasterio transforms give (lon, lat) for geographic CRSs (GDAL's traditional order).
    _, _, along_cols = geod.inv(lon, lat, lon + a, lat + d)
    _, _, along_rows = geod.inv(lon, lat, lon + b, lat + e)
    return abs(along_cols), abs(along_rows)


def choose_gsd(
    path: str | Path,
    sides_m: tuple[float, float] | None,
    setting: GsdSetting,
    model_range: tuple[float, float] | None,
) -> GsdChoice:
    """The read resolution for a scene whose pixels measure `sides_m` on the ground."""
    setting = parse_gsd(setting)
    mode = setting if isinstance(setting, str) else "metres"
    if sides_m is None:
        if mode == "metres":
            assert not isinstance(setting, str)  # metres: parse_gsd gave a number
            raise InputError(
                f"{path}: has no CRS, so --gsd {_fmt(setting)} (metres) cannot be applied; "
                "drop --gsd or georeference the file"
            )
        return GsdChoice(mode, None, None, model_range_m=model_range)
    native = math.sqrt(sides_m[0] * sides_m[1])
    if mode == "native":
        target, upsample = None, False
    elif mode == "metres":
        target, upsample = float(setting), True
    elif model_range is not None and native < model_range[0] * (1 - AUTO_TOLERANCE):
        target, upsample = float(model_range[0]), False
    else:
        target, upsample = None, False
    if target is None:
        return GsdChoice(mode, native, native, model_range_m=model_range)
    if native / target > MAX_UPSAMPLING:
        raise InputError(
            f"{path}: --gsd {_fmt(target)} is over {MAX_UPSAMPLING:g}x finer than its {_fmt(native)} m pixels "
            "and would invent detail; give a resolution near the file's own, or --gsd native"
        )
    scale = [target / side if upsample else max(1.0, target / side) for side in sides_m]
    scale = [1.0 if abs(s - 1.0) < 1e-9 else s for s in scale]  # float noise is not a resampling
    return GsdChoice(mode, native, target, (scale[0], scale[1]), model_range)


def _fmt(value: float | None) -> str:
    return "?" if value is None else f"{value:.3g}"


def _sig(value: float | None) -> float | None:
    """6 significant digits: 0.05 stays 0.05 in the record, not 0.050000000000000003."""
    return None if value is None else float(f"{value:.6g}")
