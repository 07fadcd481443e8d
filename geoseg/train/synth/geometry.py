"""Small geometry helpers for the scene generator: shapes in pixel space and an occupancy index.

Pixel space: x grows to the right (columns), y grows downwards (rows); pixel (row r, col c) is the
unit square [c, c+1] x [r, r+1], so its centre is (c + 0.5, r + 0.5). Shapes are sized in metres by
the caller and converted with the scene's ground sample distance.
"""

from __future__ import annotations

import math

import numpy as np
import shapely
from shapely.geometry import GeometryCollection, LineString, MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from .scanline import covers_any, rasterize


def rotated_rect(cx: float, cy: float, length: float, depth: float, angle: float) -> np.ndarray:
    """Corners (4 x 2) of a rectangle centred at (cx, cy), `length` along `angle` (radians)."""
    local = np.array(
        [[-length / 2, -depth / 2], [length / 2, -depth / 2], [length / 2, depth / 2], [-length / 2, depth / 2]]
    )
    return place(local, cx, cy, angle)


def place(local: np.ndarray, cx: float, cy: float, angle: float) -> np.ndarray:
    """Rotate local coordinates by `angle` and move their origin to (cx, cy)."""
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, s], [-s, c]])  # row-vector form of the rotation
    return local @ rot + np.array([cx, cy])


def blob(cx: float, cy: float, radius: float, rng: np.random.Generator, roughness: float = 0.25, n: int = 24) -> Polygon:
    """An irregular round shape: a circle whose radius wobbles smoothly with the angle."""
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    wobble = np.zeros(n)
    for k in (2, 3, 5):
        wobble += rng.normal(0, roughness / k) * np.cos(k * t + rng.uniform(0, 2 * math.pi))
    r = radius * np.clip(1 + wobble, 0.45, 1.6)
    return Polygon(np.c_[cx + r * np.cos(t), cy + r * np.sin(t)])


def meander(p0: np.ndarray, p1: np.ndarray, rng: np.random.Generator, amplitude: float, wavelength: float, n: int = 80) -> LineString:
    """A gently meandering line from p0 to p1 (sum of two sines across the straight course)."""
    d = p1 - p0
    length = float(np.hypot(*d))
    normal = np.array([-d[1], d[0]]) / max(length, 1e-9)
    t = np.linspace(0, 1, n)
    s = t * length
    off = amplitude * np.sin(2 * math.pi * s / wavelength + rng.uniform(0, 2 * math.pi))
    off += 0.4 * amplitude * np.sin(2 * math.pi * s / (wavelength * 0.43) + rng.uniform(0, 2 * math.pi))
    pts = p0 + np.outer(t, d) + np.outer(off, normal)
    return LineString(pts)


def line_across(cx: float, cy: float, angle: float, half_length: float, rng: np.random.Generator, bend: float) -> LineString:
    """A long, slightly bent line through (cx, cy) in direction `angle`."""
    direction = np.array([math.cos(angle), math.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    t = np.linspace(-1, 1, 33)
    phase = rng.uniform(0, 2 * math.pi)
    off = bend * half_length * np.sin(math.pi * t + phase) * 0.15
    pts = np.array([cx, cy]) + np.outer(t * half_length, direction) + np.outer(off, normal)
    return LineString(pts)


# a 16-gon approximates a crown of a few metres well enough
UNIT_CIRCLE = np.c_[np.cos(np.linspace(0, 2 * math.pi, 16, endpoint=False)),
                    np.sin(np.linspace(0, 2 * math.pi, 16, endpoint=False))]


def parts_of(geom: BaseGeometry) -> list[Polygon]:
    """Polygon parts of any (multi)polygon or collection, dropping lines and points."""
    if geom.is_empty:
        return []
    if isinstance(geom, Polygon):
        return [geom]
    if isinstance(geom, MultiPolygon | GeometryCollection):
        out: list[Polygon] = []
        for g in geom.geoms:
            out.extend(parts_of(g))
        return out
    return []


def clean(geom: BaseGeometry) -> BaseGeometry:
    """Polygonal part of `geom`, valid; empty polygon when nothing polygonal is left."""
    polys = parts_of(shapely.make_valid(geom) if not geom.is_valid else geom)
    if not polys:
        return Polygon()
    return polys[0] if len(polys) == 1 else shapely.MultiPolygon(polys)


class Occupancy:
    """What is already placed, for rejecting candidates that would overlap it.

    Two views of the same shapes: a bitmap of every pixel a shape touches, and the vector shapes.
    The bitmap answers "is this candidate free?" for hundreds of candidates in one vectorised
    pass: a candidate grown by at least 0.71 px (half a pixel diagonal) whose covered pixels meet
    no marked pixel cannot overlap anything (near misses within a pixel are rejected too). The
    vectors are for cutting fields and woods around what is there. New shapes are rasterised
    lazily, in one batch, when the bitmap is next read.
    """

    def __init__(self, height: int, width: int):
        self.h, self.w = height, width
        self.blocked = np.zeros((height, width), dtype=bool)
        self.geoms: list[BaseGeometry] = []
        self._pending: list[BaseGeometry] = []
        self._tree: shapely.STRtree | None = None

    def add(self, geom: BaseGeometry) -> None:
        if geom.is_empty:
            return
        self.geoms.append(geom)
        self._pending.append(geom)
        self._tree = None

    def replace(self, old: BaseGeometry, new: BaseGeometry) -> None:
        """Swap a shape that was cut (a river under a bridge); the bitmap only ever grows."""
        self.geoms = [new if g is old else g for g in self.geoms if not (g is old and new.is_empty)]
        self._tree = None

    def _flush(self) -> None:
        if self._pending:
            # grown by half a pixel diagonal, the centre rule marks every pixel a shape touches
            grown = shapely.buffer(np.asarray(self._pending, dtype=object), 0.71, quad_segs=2)
            self.blocked |= rasterize(grown, 1, self.h, self.w, dtype="uint8").astype(bool)
            self._pending = []

    def free(self, probes: np.ndarray) -> np.ndarray:
        """Per probe (already grown by the wanted clearance, >= 0.71 px): touches nothing placed."""
        self._flush()
        return ~covers_any(probes, self.blocked)

    def near(self, geom: BaseGeometry) -> list[BaseGeometry]:
        """Placed shapes that intersect `geom` (exact vector test)."""
        if not self.geoms:
            return []
        if self._tree is None:
            self._tree = shapely.STRtree(self.geoms)
        return [self.geoms[i] for i in self._tree.query(geom, predicate="intersects")]

    def hits(self, geom: BaseGeometry) -> bool:
        return bool(self.near(geom))

    def subtract_from(self, geom: BaseGeometry, margin: float = 0.0) -> BaseGeometry:
        """`geom` minus every placed shape near it (grown by `margin`)."""
        if not self.geoms:
            return geom
        if self._tree is None:
            self._tree = shapely.STRtree(self.geoms)
        hit = self._tree.query(geom, predicate="dwithin", distance=margin) if margin else self._tree.query(geom, predicate="intersects")
        cands = [self.geoms[i] for i in hit]
        if not cands:
            return geom
        # only the part of each (possibly long) road or river near `geom` matters
        x0, y0, x1, y1 = geom.bounds
        rect = (x0 - margin - 1, y0 - margin - 1, x1 + margin + 1, y1 + margin + 1)
        try:
            pieces = shapely.clip_by_rect(np.asarray(cands, dtype=object), *rect)
        except shapely.errors.GEOSException:  # GEOS' fast clip can trip on degenerate rings
            pieces = shapely.intersection(np.asarray(cands, dtype=object), shapely.box(*rect))
        blocker = safe_union(pieces)
        if margin:
            blocker = blocker.buffer(margin, quad_segs=2)
        return safe_difference(geom, blocker)


def first_come(candidates: np.ndarray, probes: np.ndarray, probe_owner: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Resolve conflicts inside a batch: a candidate whose probe meets an earlier accepted
    candidate's shape (or whose shape meets an earlier one's probe) is dropped."""
    idx = np.flatnonzero(ok)
    accepted = ok.copy()
    if idx.size < 2:
        return accepted
    sel = np.flatnonzero(ok[probe_owner])
    tree = shapely.STRtree(candidates[idx])
    pi, ci = tree.query(probes[sel], predicate="intersects")
    a, b = probe_owner[sel[pi]], idx[ci]
    earlier: dict[int, list[int]] = {}
    for x, y in zip(a.tolist(), b.tolist(), strict=True):
        if x != y:
            earlier.setdefault(max(x, y), []).append(min(x, y))
    for k in idx.tolist():
        if any(accepted[j] for j in earlier.get(k, ())):
            accepted[k] = False
    return accepted


def box_corners(boxes: np.ndarray, pad: float) -> np.ndarray:
    """(N, 4) local boxes (x0, y0, x1, y1) grown by pad -> (N, 4, 2) corners."""
    x0, y0, x1, y1 = (boxes[:, i] for i in range(4))
    return np.stack([np.c_[x0 - pad, y0 - pad], np.c_[x1 + pad, y0 - pad], np.c_[x1 + pad, y1 + pad],
                     np.c_[x0 - pad, y1 + pad]], axis=1)


def place_many(local: np.ndarray, cx: np.ndarray, cy: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """(M, 2) local points, each rotated by its own angle and moved to its own (cx, cy)."""
    c, s = np.cos(angle), np.sin(angle)
    x, y = local[:, 0], local[:, 1]
    return np.stack([x * c - y * s + cx, x * s + y * c + cy], axis=-1)


def safe_union(geoms: np.ndarray) -> BaseGeometry:
    """The union of `geoms`; when GEOS trips on clipped, nearly degenerate rings (a rare
    TopologyException in training), union them made valid, on a 1/1000-pixel grid."""
    try:
        return shapely.union_all(geoms)
    except shapely.errors.GEOSException:
        return shapely.union_all(shapely.make_valid(geoms), grid_size=1e-3)


def safe_difference(a: BaseGeometry, b: BaseGeometry) -> BaseGeometry:
    """a - b; when GEOS trips on nearly coincident edges, retry on a 1/1000-pixel grid."""
    try:
        return a.difference(b)
    except shapely.errors.GEOSException:
        grid = 1e-3
        return shapely.set_precision(shapely.make_valid(a), grid).difference(shapely.set_precision(shapely.make_valid(b), grid))
