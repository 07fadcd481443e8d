"""Painting a layout into pixels, and the in-memory scene the rest of geoseg uses (`SceneArrays`).

Every instance polygon is rasterised once into an instance-id map; colours, textures and masks
all come from that map, so a class mask and the pixels showing that class agree exactly. Shadows,
haze, blur and noise are applied afterwards and never change the truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import shapely
import shapely.ops
from scipy import ndimage, special
from shapely.geometry import Polygon, box

from . import palette, scanline
from .geometry import UNIT_CIRCLE
from .layout import Instance, Layout, generate_layout
from .textures import value_noise
from .vocab import CLASS_NAMES, Concept, UnknownPhraseError, matches, resolve

CLASS_CODE = {"building": 1, "road": 2, "water": 3, "tree": 4, "field": 5, "bare": 6}
# seed streams: one independent generator per purpose, so changing one part of the generator does
# not reshuffle the others (and a pair's "before" equals the single scene of the same seed)
_STREAMS = {"layout": 1, "date": 2, "paint": 3, "border": 4, "change": 5, "after_date": 6, "after_paint": 7, "grid": 8,
            "after_season": 9}
DTYPE_MAX = {"uint8": 255, "uint16": 2047}  # uint16 scenes hold 11-bit values like many sensors


def stream(seed: int, name: str) -> np.random.Generator:
    """The generator for one purpose of one seed (PCG64: identical on every platform)."""
    return np.random.default_rng(np.random.SeedSequence([_STREAMS[name], int(seed)]))


@dataclass(frozen=True)
class DateParams:
    """Acquisition conditions of one image: season, sun, lighting, atmosphere and sensor."""

    season: str = "summer"
    sun_azimuth: float = 160.0  # degrees clockwise from north
    sun_elevation: float = 50.0  # degrees above the horizon
    gradient: tuple[float, float] = (0.0, 0.0)  # relative brightness change across x and y
    exposure: float = 1.0
    haze: float = 0.02
    noise: float = 0.01  # sensor noise, standard deviation in display units
    blur: float = 0.5  # point spread function, gaussian sigma in pixels
    tint: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)  # white balance gain per band
    cloud_shadow: float = 0.0  # share of the scene under soft cloud shadows (0: clear sky)

    @staticmethod
    def draw(rng: np.random.Generator, season: str = "summer") -> DateParams:
        palette.vegetation(season)  # validates the name
        return DateParams(
            season=season,
            sun_azimuth=float(rng.uniform(110, 250)),
            sun_elevation=float(rng.uniform(28, 68)),
            gradient=(float(rng.uniform(-0.18, 0.18)), float(rng.uniform(-0.18, 0.18))),
            exposure=float(rng.uniform(0.9, 1.1)),
            haze=float(rng.uniform(0.0, 0.08)),
            noise=float(rng.uniform(0.005, 0.018)),
            blur=float(rng.uniform(0.35, 0.7)),
            tint=(*_rgb(rng.uniform(0.94, 1.06, size=3)), 1.0),
            cloud_shadow=float(rng.uniform(0.05, 0.35)) if rng.random() < 0.15 else 0.0,
        )

    def sun_vector(self) -> tuple[float, float]:
        """Unit vector towards the sun in image coordinates (x east, y south)."""
        az = math.radians(self.sun_azimuth)
        return math.sin(az), -math.cos(az)

    def shadow_per_metre(self, gsd: float) -> np.ndarray:
        """Shadow displacement (pixels) per metre of object height."""
        sx, sy = self.sun_vector()
        return np.array([-sx, -sy]) / math.tan(math.radians(self.sun_elevation)) / gsd


@dataclass
class SceneArrays:
    """One rendered scene in memory: pixels, instance-id map, class masks and the instances."""

    image: np.ndarray  # H x W x bands, uint8 or uint16, bands in R, G, B(, NIR) order
    labels: np.ndarray  # H x W int32 instance id (0: none), 0 outside the valid footprint
    masks: dict[str, np.ndarray]  # CLASS_NAMES -> H x W bool
    instances: list[Instance]  # geometry in pixel space, clipped to the valid footprint
    valid: np.ndarray  # H x W bool, False in the nodata border
    gsd: float
    seed: int
    date: DateParams
    layout: Layout
    nodata: int | None = None
    footprint: Polygon | None = None  # valid area in pixel space (None: the whole image)
    reflectance: np.ndarray | None = field(default=None, repr=False)  # H x W x bands float32, before quantising

    @property
    def height(self) -> int:
        return self.image.shape[0]

    @property
    def width(self) -> int:
        return self.image.shape[1]

    @property
    def bands(self) -> int:
        return self.image.shape[2]

    @property
    def season(self) -> str:
        return self.date.season

    def concept(self, phrase: str) -> Concept:
        concept = resolve(phrase)
        if concept.kind == "change":
            raise UnknownPhraseError(f"{phrase!r} is a change query; ask a pair (render_pair) for it")
        return concept

    def select(self, phrase: str) -> list[Instance]:
        """Instances that a phrase refers to (empty list when the target is absent)."""
        concept = self.concept(phrase)
        return [i for i in self.instances if matches(i.cls, i.subclass, i.attrs, concept)]

    def mask(self, phrase: str) -> np.ndarray:
        """Boolean H x W truth mask of a phrase ("buildings", "red-roofed houses", ...)."""
        return ids_mask(self.labels, [i.id for i in self.select(phrase)])


def _rgb(values: np.ndarray) -> tuple[float, float, float]:
    r, g, b = (float(v) for v in values)
    return r, g, b


def ids_mask(labels: np.ndarray, ids: list[int]) -> np.ndarray:
    """Pixels whose instance id is one of `ids`."""
    if not ids:
        return np.zeros(labels.shape, dtype=bool)
    lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, dtype=bool)
    ids_arr = np.asarray([i for i in ids if i < lut.size], dtype=np.int64)
    lut[ids_arr] = True
    return lut[labels]


def rasterize_labels(instances: list[Instance], height: int, width: int) -> np.ndarray:
    """Instance-id map on the pixel grid (pixel centres inside a polygon take its id)."""
    if not instances:
        return np.zeros((height, width), dtype=np.int32)
    return scanline.rasterize([i.geometry for i in instances], [i.id for i in instances], height, width)


# ---- colours of instances -----------------------------------------------------------------------
def _instance_colour(inst: Instance, veg: dict) -> np.ndarray:
    tone = float(inst.paint.get("tone", inst.paint.get("shade", 0.0)))
    t01 = 0.5 + 0.5 * tone
    if inst.cls == "building":
        a, b = palette.ROOFS[inst.attrs["roof_colour"]]
        return palette.mix(a, b, t01) * (1 + 0.06 * tone)
    if inst.cls == "road":
        base = np.asarray(palette.ROAD["paved" if inst.attrs["paved"] else "dirt"], dtype=np.float32)
        return base * (1 + 0.08 * tone)
    if inst.cls == "water":
        return np.asarray(palette.WATER[inst.subclass], dtype=np.float32) * (1 + 0.1 * tone)
    if inst.cls == "tree":
        a, b = veg["tree"]
        return palette.mix(a, b, t01) * (1 + 0.05 * tone)
    if inst.cls == "field":
        return np.asarray(veg["crop"][inst.attrs["crop"]], dtype=np.float32) * (1 + 0.06 * tone)
    if inst.cls == "bare":
        return np.asarray(palette.BARE[inst.subclass], dtype=np.float32) * (1 + 0.07 * tone)
    raise ValueError(f"unknown instance class {inst.cls}")


# texture amplitudes (mid-scale noise, per-pixel noise) per class code
_AMP_MID = np.array([0.07, 0.03, 0.04, 0.03, 0.10, 0.05, 0.10], dtype=np.float32)
_AMP_PX = np.array([0.05, 0.03, 0.03, 0.01, 0.10, 0.04, 0.06], dtype=np.float32)


def paint(layout: Layout, labels: np.ndarray, date: DateParams, rng: np.random.Generator, bands: int = 4) -> np.ndarray:
    """The scene's colours (H x W x bands float32, display units) from the instance-id map."""
    h, w = labels.shape
    veg = palette.vegetation(date.season)
    n = len(layout.instances) + 1
    code = np.zeros(n, dtype=np.uint8)
    colour = np.zeros((n, bands), dtype=np.float32)
    for inst in layout.instances:
        code[inst.id] = CLASS_CODE[inst.cls]
        colour[inst.id] = _instance_colour(inst, veg)[:bands]
    cls = code[labels]
    img = colour[labels]
    flat_cls, flat_img, flat_lbl = cls.ravel(), img.reshape(-1, bands), labels.ravel()
    m = 1.0 / layout.gsd  # pixels per metre

    n_lo = value_noise(rng, h, w, 30 * m)
    n_mid = value_noise(rng, h, w, max(3 * m, 1.5))
    n_px = rng.standard_normal((h, w), dtype=np.float32)

    bg = np.flatnonzero(flat_cls == 0)
    mix_t = np.clip(0.5 + 0.4 * n_lo.ravel()[bg], 0, 1)[:, None]
    ga, gb = (_c(c, bands) for c in veg["grass"])
    flat_img[bg] = ga * (1 - mix_t) + gb * mix_t

    _paint_fields(layout, flat_img, flat_lbl, flat_cls, w, m)
    _paint_roofs(layout, flat_img, flat_lbl, flat_cls, cls, w, date, rng, m)
    _paint_trees(layout, flat_img, flat_lbl, flat_cls, w, date, rng, m)
    _paint_water(flat_img, cls, m)
    _paint_markings(layout, img, cls, m)
    _paint_cars(layout, img, cls, m, np.random.default_rng(rng.integers(2**63)))

    tex = 1 + _AMP_MID[cls] * n_mid + _AMP_PX[cls] * n_px
    tex += (cls == 6) * 0.06 * n_lo  # bare ground: patchy
    img *= tex[..., None]

    _apply_shadows(layout, img, cls, labels, date)
    _apply_atmosphere_and_sensor(img, date, rng)
    return img


def _xy(idx: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates of flat indices."""
    return (idx % w).astype(np.float32) + 0.5, (idx // w).astype(np.float32) + 0.5


def _lut(layout: Layout, cls: str, key: str, default: float = 0.0) -> np.ndarray:
    out = np.full(len(layout.instances) + 1, default, dtype=np.float32)
    for inst in layout.instances:
        if inst.cls == cls and key in inst.paint:
            out[inst.id] = inst.paint[key]
    return out


def _paint_fields(layout: Layout, flat_img, flat_lbl, flat_cls, w: int, m: float) -> None:
    idx = np.flatnonzero(flat_cls == CLASS_CODE["field"])
    if idx.size == 0:
        return
    angle = _lut(layout, "field", "stripe_angle")
    period = np.maximum(_lut(layout, "field", "period_m", 2.0) * m, 3.0)  # below 3 px stripes alias
    amp = np.zeros(len(layout.instances) + 1, dtype=np.float32)
    for inst in layout.by_class("field"):
        amp[inst.id] = {"ploughed": 0.16, "meadow": 0.03}.get(inst.attrs["crop"], 0.09)
    lbl = flat_lbl[idx]
    x, y = _xy(idx, w)
    phase = (x * np.cos(angle[lbl]) + y * np.sin(angle[lbl])) / period[lbl]
    flat_img[idx] *= (1 + amp[lbl] * np.sin(2 * np.pi * phase))[:, None]


def _paint_roofs(layout: Layout, flat_img, flat_lbl, flat_cls, cls, w: int, date: DateParams, rng, m: float) -> None:
    idx = np.flatnonzero(flat_cls == CLASS_CODE["building"])
    if idx.size == 0:
        return
    n = len(layout.instances) + 1
    gable, state, frac = np.zeros(n, bool), np.zeros(n, np.uint8), np.zeros(n, np.float32)
    for inst in layout.by_class("building"):
        gable[inst.id] = inst.attrs["roof_type"] == "gable"
        state[inst.id] = {"intact": 0, "damaged": 1, "destroyed": 2}[inst.attrs["damage"]]
        frac[inst.id] = inst.paint.get("damage_fraction", 0.0)
    lbl = flat_lbl[idx]
    x, y = _xy(idx, w)
    cx, cy, ang = _lut(layout, "building", "cx")[lbl], _lut(layout, "building", "cy")[lbl], _lut(layout, "building", "angle")[lbl]
    nx, ny = -np.sin(ang), np.cos(ang)  # across the ridge
    side = np.sign((x - cx) * nx + (y - cy) * ny)
    sx, sy = date.sun_vector()
    slope_light = 1 + 0.14 * side * (nx * sx + ny * sy)
    flat_img[idx] *= np.where(gable[lbl], slope_light, 1.0)[:, None]

    # a thin darker rim: walls and eaves seen from above
    roof = cls == CLASS_CODE["building"]
    rim = (roof & ~ndimage.binary_erosion(roof)).ravel()[idx]
    flat_img[idx[rim]] *= 0.82

    st = state[lbl]
    if not (st > 0).any():
        return
    h = flat_lbl.size // w
    n_dmg = value_noise(rng, h, w, max(1.6 * m, 1.2)).ravel()[idx] + 0.35 * rng.standard_normal(idx.size, dtype=np.float32)
    speck = rng.standard_normal(idx.size, dtype=np.float32)
    nb = flat_img.shape[1]
    rubble = _c(palette.RUBBLE, nb) * (1 + 0.22 * speck)[:, None]
    hole = _c(palette.HOLE, nb)
    thr = special.ndtri(1 - np.clip(frac[lbl], 1e-3, 0.999)).astype(np.float32)
    broken = (st == 1) & (n_dmg > thr)
    sel = np.flatnonzero(broken)
    flat_img[idx[sel]] = np.where((speck[sel] > -0.3)[:, None], rubble[sel], hole)
    gone = np.flatnonzero(st == 2)
    remnant = n_dmg[gone] > 1.3  # a few pieces of roof still recognisable in the rubble
    flat_img[idx[gone]] = np.where(remnant[:, None], flat_img[idx[gone]] * 0.85,
                                   np.where((speck[gone] < -1.5)[:, None], hole, rubble[gone]))


def _paint_trees(layout: Layout, flat_img, flat_lbl, flat_cls, w: int, date: DateParams, rng, m: float) -> None:
    idx = np.flatnonzero(flat_cls == CLASS_CODE["tree"])
    if idx.size == 0:
        return
    lbl = flat_lbl[idx]
    n = len(layout.instances) + 1
    single = np.zeros(n, bool)
    for inst in layout.by_class("tree"):
        single[inst.id] = inst.subclass == "single"
    sx, sy = date.sun_vector()
    x, y = _xy(idx, w)
    one = single[lbl]
    shade = np.ones(idx.size, np.float32)
    if one.any():  # a lit dome: brighter towards the sun, darker at the rim
        r = _lut(layout, "tree", "r", 1.0)[lbl[one]]
        dx = (x[one] - _lut(layout, "tree", "cx")[lbl[one]]) / r
        dy = (y[one] - _lut(layout, "tree", "cy")[lbl[one]]) / r
        shade[one] = 0.7 + 0.3 * np.sqrt(np.clip(1 - dx * dx - dy * dy, 0, 1)) + 0.2 * (dx * sx + dy * sy)
    if (~one).any():  # closed canopy: crown-sized bumps lit from the sun side
        crowns = [i.paint["crown_px"] for i in layout.by_class("tree") if i.subclass == "woodland"]
        cell = max(float(np.mean(crowns)) * 1.2, 1.5)
        h = flat_lbl.size // w
        bumps = value_noise(rng, h, w, cell)
        k = max(1, round(cell / 3))
        lit = bumps - np.roll(bumps, (round(k * sy), round(k * sx)), axis=(0, 1))
        sel = idx[~one]
        shade[~one] = 0.85 + 0.10 * bumps.ravel()[sel] + 0.22 * np.clip(lit.ravel()[sel], -1.5, 1.5)
    flat_img[idx] *= shade[:, None]


def _paint_water(flat_img, cls, m: float) -> None:
    water = cls == CLASS_CODE["water"]
    if not water.any():
        return
    size = max(3, round(4 * m))
    inner = ndimage.uniform_filter(water.astype(np.float32), size=size)
    idx = np.flatnonzero(water.ravel())
    t = np.clip((1 - inner.ravel()[idx]) * 1.6, 0, 1)[:, None] * 0.6  # shallow, lighter near shores
    flat_img[idx] = flat_img[idx] * (1 - t) + _c(palette.WATER_SHALLOW, flat_img.shape[1]) * t


def _paint_markings(layout: Layout, img: np.ndarray, cls: np.ndarray, m: float) -> None:
    """White lane markings on paved main roads: a dashed centre line and solid edge lines.

    Only where they are at least a third of a pixel wide (gsd <= 0.45 m); they stay inside the
    road, so the truth does not change.
    """
    if m < 1 / 0.45:
        return
    width = max(0.15 * m, 0.34)
    shapes = []
    for inst in layout.by_class("road"):
        line = inst.paint.get("line")
        if line is None or inst.attrs["kind"] != "main" or not inst.attrs["paved"]:
            continue
        dash, period = 3 * m, 9 * m
        starts = np.arange(0.0, line.length - dash, period)
        shapes += [shapely.ops.substring(line, a, a + dash) for a in starts]
        half = inst.paint["width_px"] / 2 - 0.4 * m
        shapes += [line.offset_curve(side * half) for side in (-1, 1)]
    if not shapes:
        return
    h, w = cls.shape
    marks = scanline.rasterize(shapely.buffer(np.asarray(shapes, dtype=object), width / 2, cap_style="flat"), 1,
                               h, w, dtype="uint8").astype(bool)
    marks &= cls == CLASS_CODE["road"]
    img[marks] = img[marks] * 0.25 + _c((0.85, 0.85, 0.82, 0.6), img.shape[2]) * 0.75


CAR_COLOURS = np.array([(0.88, 0.88, 0.87, 0.7), (0.12, 0.12, 0.13, 0.1), (0.55, 0.56, 0.58, 0.45),
                        (0.62, 0.12, 0.10, 0.4), (0.15, 0.25, 0.50, 0.3), (0.72, 0.72, 0.70, 0.6)], dtype=np.float32)


def _paint_cars(layout: Layout, img: np.ndarray, cls: np.ndarray, m: float, rng: np.random.Generator) -> None:
    """Parked and moving cars on streets and main roads (paint only: a car is part of the road)."""
    if m < 1.0:  # at coarser than 1 m a car is a pixel or two of noise
        return
    rects, colours = [], []
    for inst in layout.by_class("road"):
        line = inst.paint.get("line")
        if line is None or inst.attrs["kind"] == "track":
            continue
        n = rng.poisson(line.length / (35 * m))
        if n == 0:
            continue
        t = rng.uniform(0, line.length, size=n)
        p = shapely.get_coordinates(shapely.line_interpolate_point(line, t))
        q = shapely.get_coordinates(shapely.line_interpolate_point(line, np.minimum(t + 1, line.length)))
        ang = np.arctan2(q[:, 1] - p[:, 1], q[:, 0] - p[:, 0])
        lane = rng.choice([-1.0, 1.0], size=n) * inst.paint["width_px"] * rng.uniform(0.2, 0.32, size=n)
        cx, cy = p[:, 0] - np.sin(ang) * lane, p[:, 1] + np.cos(ang) * lane
        length, width = rng.uniform(3.8, 4.9, size=n) * m, rng.uniform(1.7, 1.9, size=n) * m
        local = np.stack([np.c_[-length, -width], np.c_[length, -width], np.c_[length, width], np.c_[-length, width]], 1) / 2
        c, s_ = np.cos(ang)[:, None], np.sin(ang)[:, None]
        xy = np.stack([local[..., 0] * c - local[..., 1] * s_ + cx[:, None], local[..., 0] * s_ + local[..., 1] * c + cy[:, None]], -1)
        rects.append(cast(np.ndarray, shapely.polygons(xy)))  # arrays in, arrays out
        colours.append(rng.integers(0, len(CAR_COLOURS), size=n))
    if not rects:
        return
    ids = scanline.rasterize(np.concatenate(rects), np.arange(1, sum(len(r) for r in rects) + 1), *cls.shape)
    ids[cls != CLASS_CODE["road"]] = 0
    on = ids > 0
    palette_idx = np.concatenate(colours)[ids[on] - 1]
    img[on] = CAR_COLOURS[palette_idx, : img.shape[2]]


def shadow_shapes(layout: Layout, date: DateParams) -> list:
    """Polygons of cast shadows (pixel space) for standing buildings and trees.

    A convex part (a building block, a crown) swept along the shadow vector is the convex hull of
    its corners and their shifted copies, computed for all parts at once.
    """
    per_m = date.shadow_per_metre(layout.gsd)
    parts, lifts, crowns, crown_lifts, shapes = [], [], [], [], []
    for inst in layout.instances:
        if inst.cls == "building" and inst.attrs["damage"] != "destroyed":
            parts += inst.paint["parts"]
            lifts += [inst.attrs["height_m"]] * len(inst.paint["parts"])
        elif inst.cls == "tree" and inst.subclass == "single":
            crowns.append((inst.paint["cx"], inst.paint["cy"], inst.paint["r"]))
            crown_lifts.append(inst.attrs["height_m"] * 0.8)
        elif inst.cls == "tree":
            v = per_m * inst.attrs["height_m"]
            shapes += [shapely.affinity.translate(inst.geometry, *(v * f)) for f in (0.2, 0.4, 0.6, 0.8, 1.0)]
    swept = []
    if parts:
        swept.append((np.stack(parts), np.asarray(lifts)))
    if crowns:
        c = np.asarray(crowns)
        swept.append((UNIT_CIRCLE[None] * c[:, 2, None, None] + c[:, None, :2], np.asarray(crown_lifts)))
    for corners, lift in swept:
        moved = corners + (lift[:, None] * per_m)[:, None, :]
        shapes += list(cast(np.ndarray, shapely.convex_hull(shapely.multipoints(np.concatenate([corners, moved], axis=1)))))
    return shapes


def _apply_shadows(layout: Layout, img: np.ndarray, cls: np.ndarray, labels: np.ndarray, date: DateParams) -> None:
    shapes = shadow_shapes(layout, date)
    if not shapes:
        return
    h, w = labels.shape
    shadow = scanline.rasterize(shapes, 1, h, w, dtype="uint8").astype(bool)
    casters = (cls == CLASS_CODE["tree"]) | (cls == CLASS_CODE["building"])
    shadow &= ~casters
    img[shadow] *= _c(palette.SHADOW, img.shape[2])


def _apply_atmosphere_and_sensor(img: np.ndarray, date: DateParams, rng: np.random.Generator) -> None:
    h, w, nb = img.shape
    gx, gy = date.gradient
    light = (date.exposure * (1 - date.haze)) * (1 + gx * (np.arange(w, dtype=np.float32) / w - 0.5)[None, :]
                                                 + gy * (np.arange(h, dtype=np.float32) / h - 0.5)[:, None])
    if date.cloud_shadow > 0:  # soft-edged shadows of clouds drifting over the scene
        clouds = value_noise(rng, h, w, max(h, w) / 3)
        cut = float(special.ndtri(1 - date.cloud_shadow))
        light = light * (1 - 0.4 * np.clip((clouds - cut) / 0.5, 0, 1))
    haze = date.haze * _c(palette.HAZE, nb)
    tint = _c(date.tint, nb)
    for b in range(nb):  # band by band: light, white balance, haze, optics blur, sensor noise
        band = img[..., b] * (light * tint[b]) + haze[b]
        if date.blur > 0:
            band = ndimage.gaussian_filter(band, date.blur, truncate=3.0)
        band += date.noise * rng.standard_normal((h, w), dtype=np.float32)
        img[..., b] = band
    np.clip(img, 0.0, 1.0, out=img)


def _c(values, bands: int) -> np.ndarray:
    """A palette colour as float32, cut to the number of bands painted."""
    return np.asarray(values, dtype=np.float32)[:bands]


# ---- the scene ----------------------------------------------------------------------------------
def quantise(img: np.ndarray, bands: int, dtype: str, valid: np.ndarray | None) -> np.ndarray:
    """Display values -> integers; valid pixels never equal the nodata value 0."""
    if dtype not in DTYPE_MAX:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_MAX)}, not {dtype!r}")
    if bands not in (3, 4):
        raise ValueError(f"bands must be 3 (RGB) or 4 (RGB+NIR), not {bands}")
    top = DTYPE_MAX[dtype]
    out = np.rint(img[..., :bands] * top)
    lo = 1 if valid is not None else 0
    out = np.clip(out, lo, top).astype(dtype)
    if valid is not None:
        out[~valid] = 0
    return out


def scene_footprint(rng: np.random.Generator, height: int, width: int) -> Polygon:
    """A ragged, tilted valid-data footprint like the edge of a real scene (pixel space)."""
    inset = lambda size: float(rng.uniform(0.03, 0.14)) * size  # noqa: E731
    corners = np.array([
        [inset(width), inset(height) * 0.3], [width - inset(width) * 0.3, inset(height)],
        [width - inset(width), height - inset(height) * 0.3], [inset(width) * 0.3, height - inset(height)],
    ])
    ring = shapely.segmentize(Polygon(corners).exterior, max(height, width) / 40)
    coords = np.asarray(ring.coords)[:-1]
    coords = coords + rng.normal(0, max(height, width) / 400, size=coords.shape)
    poly = shapely.make_valid(Polygon(coords)).intersection(box(0, 0, width, height))
    return max((g for g in getattr(poly, "geoms", [poly]) if g.geom_type == "Polygon"), key=lambda g: g.area)


def clip_instances(instances: list[Instance], footprint: Polygon, min_area: float = 1.0) -> list[Instance]:
    """Copies of the instances cut to the valid footprint (instances outside it are dropped)."""
    from .geometry import clean

    out = []
    for inst in instances:
        g = inst.geometry if footprint.contains(inst.geometry) else clean(inst.geometry.intersection(footprint))
        if not g.is_empty and g.area >= min_area:
            out.append(Instance(inst.cls, inst.subclass, g, dict(inst.attrs), inst.paint, inst.id))
    return out


def compose(seed: int, layout: Layout, date: DateParams, paint_rng: np.random.Generator, *, bands: int,
            dtype: str, footprint: Polygon | None) -> SceneArrays:
    """Rasterise, paint and quantise a layout; clip the truth to the footprint."""
    h, w = layout.height, layout.width
    labels = rasterize_labels(layout.instances, h, w)
    img = paint(layout, labels, date, paint_rng, bands)
    if footprint is not None:
        valid = scanline.rasterize([footprint], 1, h, w, dtype="uint8").astype(bool)
        instances = clip_instances(layout.instances, footprint)
        labels = np.where(valid, labels, 0)
        nodata: int | None = 0
    else:
        valid = np.ones((h, w), dtype=bool)
        instances = [Instance(i.cls, i.subclass, i.geometry, dict(i.attrs), i.paint, i.id) for i in layout.instances]
        nodata = None
    image = quantise(img, bands, dtype, valid if footprint is not None else None)
    scene = SceneArrays(image, labels, {}, instances, valid, layout.gsd, seed, date, layout, nodata, footprint, img)
    scene.masks = {name: scene.mask(name) for name in CLASS_NAMES}
    return scene


def render_scene(seed: int, height: int, width: int, gsd: float = 0.5, *, bands: int = 3, season: str = "summer",
                 dtype: str = "uint8", nodata_border: bool = False, date: DateParams | None = None) -> SceneArrays:
    """A synthetic scene in memory: image, class masks, instances and per-phrase masks.

    Deterministic for a seed. `gsd` is metres per pixel: object sizes are drawn in metres, so a
    coarser gsd shows more, smaller objects. `date` overrides the randomly drawn sun and lighting.
    """
    if height < 16 or width < 16:
        raise ValueError(f"scene must be at least 16 x 16 pixels, not {height} x {width}")
    if gsd <= 0:
        raise ValueError(f"gsd must be positive, not {gsd}")
    layout = generate_layout(stream(seed, "layout"), height, width, gsd)
    date = date or DateParams.draw(stream(seed, "date"), season)
    footprint = scene_footprint(stream(seed, "border"), height, width) if nodata_border else None
    return compose(seed, layout, date, stream(seed, "paint"), bands=bands, dtype=dtype, footprint=footprint)
