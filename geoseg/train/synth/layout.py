"""Procedural scene layout: what is where, as polygons in pixel space, sized in metres.

A layout is the single source of truth of a synthetic scene: the image is painted from its
rasterised polygons and the ground truth is the same polygons, so pixels and truth cannot disagree.
Instances never overlap (each new object is rejected or cut where it would cover an earlier one),
which makes every pixel belong to at most one instance.

Generation order (later things avoid earlier ones): water -> roads -> buildings (+ damage) ->
trees -> fields -> bare ground; whatever is left is grass (no class).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import shapely
from shapely.geometry import LineString, MultiLineString, Point, Polygon, box
from shapely.geometry.base import BaseGeometry

from . import buildings as bld
from .geometry import (
    UNIT_CIRCLE,
    Occupancy,
    blob,
    clean,
    first_come,
    line_across,
    meander,
    parts_of,
    rotated_rect,
    safe_difference,
)

INSTANCE_CLASSES = ("building", "road", "water", "tree", "field", "bare")

CROPS = ("wheat", "maize", "meadow", "ploughed", "rapeseed")

# Relations are computed from geometry once per layout and stored as boolean attributes, so a
# query ("buildings next to the river") is an attribute filter and the truth is reproducible.
# name -> (classes it applies to, (other class, allowed subclasses or None), distance in metres)
RELATIONS: dict[str, tuple[tuple[str, ...], tuple[str, tuple[str, ...] | None], float]] = {
    "near_river": (("building", "field", "tree", "road"), ("water", ("river",)), 30.0),
    "near_water": (("building", "field", "tree"), ("water", None), 30.0),
    "along_road": (("building", "tree"), ("road", None), 12.0),
}
LARGE_BUILDING_M2 = 400.0


@dataclass
class Instance:
    """One object of the scene. `geometry` is in pixel space; `paint` only drives rendering."""

    cls: str
    subclass: str
    geometry: BaseGeometry
    attrs: dict[str, Any] = field(default_factory=dict)
    paint: dict[str, Any] = field(default_factory=dict)
    id: int = 0


@dataclass
class Layout:
    height: int
    width: int
    gsd: float
    instances: list[Instance]
    town: tuple[float, float, float]  # centre x, y and radius, in pixels (radius 0: no town)

    def by_class(self, cls: str) -> list[Instance]:
        return [i for i in self.instances if i.cls == cls]

    def renumber(self) -> None:
        for k, inst in enumerate(self.instances, start=1):
            inst.id = k


class _Builder:
    """Places the objects of one scene; every size is drawn in metres and converted with `m()`."""

    def __init__(self, rng: np.random.Generator, height: int, width: int, gsd: float):
        self.rng, self.h, self.w, self.gsd = rng, height, width, gsd
        self.domain = box(0, 0, width, height)
        self.extent_m = min(height, width) * gsd
        self.diag = math.hypot(width, height)
        self.occ = Occupancy(height, width)
        self.instances: list[Instance] = []
        self.road_lines: list[tuple[LineString, float, str]] = []  # centreline, width px, kind

    @classmethod
    def resume(cls, rng: np.random.Generator, layout: Layout) -> _Builder:
        """A builder holding copies of an existing layout's instances (to change it)."""
        b = cls(rng, layout.height, layout.width, layout.gsd)
        b.town = layout.town
        b.fields_from = layout.town[2]
        b.grid_angle = 0.0
        for inst in layout.instances:
            b.add(Instance(inst.cls, inst.subclass, inst.geometry, dict(inst.attrs), dict(inst.paint), inst.id))
            if inst.cls == "road" and "line" in inst.paint:
                b.road_lines.append((inst.paint["line"], inst.paint["width_px"], inst.attrs["kind"]))
        return b

    def m(self, metres: float) -> float:
        return metres / self.gsd

    def u(self, lo: float, hi: float) -> float:
        return float(self.rng.uniform(lo, hi))

    def add(self, inst: Instance) -> Instance:
        self.instances.append(inst)
        self.occ.add(inst.geometry)
        return inst

    # ---- zoning ---------------------------------------------------------------------------------
    def plan_town(self) -> None:
        r = self.rng.random()
        if r < 0.1:
            self.town = (self.w / 2, self.h / 2, 0.0)
            self.fields_from = 0.0
            return
        radius_m = self.u(0.3, 0.7) * self.extent_m if r < 0.85 else self.extent_m * self.u(0.9, 1.3)
        radius_m = float(np.clip(radius_m, 50.0, 450.0 if r < 0.85 else 900.0))
        cx, cy = self.u(0.2, 0.8) * self.w, self.u(0.2, 0.8) * self.h
        self.town = (cx, cy, self.m(radius_m))
        self.fields_from = 1.05 * self.town[2]  # no fields closer to the town centre than this

    def town_density(self, x: float, y: float) -> float:
        cx, cy, r = self.town
        if r <= 0:
            return 0.04
        d = math.hypot(x - cx, y - cy) / r
        return 0.92 if d < 0.8 else max(0.04, 0.92 - (d - 0.8) * 1.6)

    def rural_point(self, tries: int = 20) -> tuple[float, float]:
        cx, cy, r = self.town
        for _ in range(tries):
            x, y = self.u(0, self.w), self.u(0, self.h)
            if math.hypot(x - cx, y - cy) > r * 1.1:
                return x, y
        return x, y

    # ---- water ----------------------------------------------------------------------------------
    def place_water(self) -> None:
        rng = self.rng
        if rng.random() < 0.65:
            angle = self.u(0, math.pi)
            cx, cy = self.u(0.15, 0.85) * self.w, self.u(0.15, 0.85) * self.h
            d = np.array([math.cos(angle), math.sin(angle)]) * self.diag
            line = meander(np.array([cx, cy]) - d, np.array([cx, cy]) + d, rng,
                           amplitude=self.u(0.03, 0.12) * self.diag, wavelength=self.u(0.5, 1.4) * self.diag)
            width_m = min(self.u(8, 36), 0.22 * self.extent_m)
            poly = line.buffer(self.m(width_m) / 2, quad_segs=4)
            self.add(Instance("water", "river", poly, {"width_m": round(width_m, 1)}, {"tone": self.u(0, 1)}))
        if rng.random() < 0.3:
            radius_m = min(self.u(20, 90), 0.2 * self.extent_m)
            x, y = self.rural_point()
            poly = blob(x, y, self.m(radius_m), rng, roughness=0.3)
            if not self.occ.hits(poly.buffer(self.m(10))):
                self.add(Instance("water", "lake", poly, {}, {"tone": self.u(0, 1)}))

    # ---- roads ----------------------------------------------------------------------------------
    def _road(self, line: LineString, width_m: float, kind: str, paved: bool, bridge: bool) -> None:
        poly: BaseGeometry = line.buffer(self.m(width_m) / 2, cap_style="flat", quad_segs=3)
        roads = [i.geometry for i in self.instances if i.cls == "road" and i.geometry.intersects(poly)]
        if roads:  # junctions belong to the road that was there first
            poly = safe_difference(poly, shapely.union_all(roads))
        waters = [i for i in self.instances if i.cls == "water" and i.geometry.intersects(poly.buffer(self.m(1.0)))]
        if bridge:  # a bridge: the road stays whole and cuts the water under it
            for w in waters:
                cut = clean(safe_difference(w.geometry, poly))
                self.occ.replace(w.geometry, cut)
                w.geometry = cut
        elif waters:  # streets and tracks stop at the bank
            poly = safe_difference(poly, shapely.union_all([w.geometry for w in waters]).buffer(self.m(1.0), quad_segs=2))
        poly = clean(poly)
        if poly.is_empty or poly.area < self.m(width_m) ** 2:
            return
        attrs = {"paved": paved, "surface": "asphalt" if paved else "dirt", "kind": kind, "width_m": round(width_m, 1)}
        paint = {"tone": self.u(0, 1), "line": line, "width_px": self.m(width_m)}
        self.add(Instance("road", "paved" if paved else "dirt", poly, attrs, paint))
        self.road_lines.append((line, self.m(width_m), kind))

    def place_roads(self) -> None:
        cx, cy, r = self.town
        has_town = r > 0
        n_main = (1 + int(self.rng.random() < 0.55)) if has_town else int(self.rng.random() < 0.6)
        self.grid_angle = self.u(0, math.pi)
        for k in range(n_main):
            angle = self.grid_angle + (k * math.pi / 2) + self.u(-0.15, 0.15)
            jx, jy = (self.u(-0.2, 0.2) * r, self.u(-0.2, 0.2) * r) if has_town else (0.0, 0.0)
            px, py = (cx + jx, cy + jy) if has_town else (self.u(0.2, 0.8) * self.w, self.u(0.2, 0.8) * self.h)
            line = line_across(px, py, angle, self.diag, self.rng, bend=self.u(0, 1))
            self._road(line, self.u(7, 11), "main", True, bridge=True)
        if has_town:
            self._town_streets()
        for _ in range(int(self.rng.integers(0, 4))):
            x, y = self.rural_point()
            angle = self.u(0, math.pi)
            half = self.m(self.u(80, 300))
            line = line_across(x, y, angle, half, self.rng, bend=self.u(0, 2))
            self._road(line, self.u(3, 4.5), "track", False, bridge=False)

    def _town_streets(self) -> None:
        """Streets of the town: a grid (most towns), radial streets with rings, or none at all
        (a village strung along its main road)."""
        pattern = self.rng.random()
        paved_p = 0.9 if self.rng.random() < 0.75 else 0.35
        width_m = self.u(5, 7)
        if pattern < 0.6:
            self._grid_streets(paved_p, width_m)
        elif pattern < 0.85:
            self._radial_streets(paved_p, width_m)
        else:  # a street village: farmland comes up to the houses along the main road
            self.fields_from = 0.3 * self.town[2]

    def _radial_streets(self, paved_p: float, width_m: float) -> None:
        cx, cy, r = self.town
        for frac in sorted(self.rng.uniform(0.3, 0.9, size=int(self.rng.integers(1, 3)))):
            t = np.linspace(0, 2 * math.pi, 73)
            wobble = 1 + 0.06 * np.sin(3 * t + self.u(0, 2 * math.pi))
            ring = LineString(np.c_[cx + frac * r * wobble * np.cos(t), cy + frac * r * wobble * np.sin(t)])
            self._road(ring, width_m, "street", bool(self.rng.random() < paved_p), bridge=False)
        n = int(self.rng.integers(4, 9))
        for angle in self.grid_angle + np.arange(n) * 2 * math.pi / n + self.rng.uniform(-0.2, 0.2, size=n):
            start = self.m(self.u(5, 20))
            pts = [(cx + d * math.cos(angle), cy + d * math.sin(angle)) for d in (start, r * 0.55, r)]
            self._road(LineString(pts), width_m, "street", bool(self.rng.random() < paved_p), bridge=False)

    def _grid_streets(self, paved_p: float, width_m: float) -> None:
        cx, cy, r = self.town
        disk = Point(cx, cy).buffer(r * self.u(0.85, 1.0), quad_segs=8)
        spacing = self.m(self.u(38, 75))
        for turn in (0.0, math.pi / 2):
            angle = self.grid_angle + turn
            d = np.array([math.cos(angle), math.sin(angle)])
            n = np.array([-d[1], d[0]])
            k_max = int(r / spacing) + 1
            offset0 = self.u(0, spacing)
            for k in range(-k_max, k_max + 1):
                if self.rng.random() < 0.22:
                    continue
                c = np.array([cx, cy]) + n * (k * spacing + offset0)
                line = LineString([c - d * r * 1.2, c + d * r * 1.2]).intersection(disk)
                for seg in (line.geoms if isinstance(line, MultiLineString) else [line]):
                    if seg.is_empty or seg.length < spacing:
                        continue
                    # a disk cuts a line into lines; what is empty or a point has no length
                    self._road(cast(LineString, seg), width_m, "street", bool(self.rng.random() < paved_p), bridge=False)

    # ---- buildings ------------------------------------------------------------------------------
    def shapes(self, large: np.ndarray) -> bld.Batch:
        return bld.draw_shapes(self.rng, np.asarray(large, bool), 1.0 / self.gsd)

    def building_batch(self, cx, cy, angle, large) -> bld.Batch:
        """Candidates at given places, with shapes and attributes drawn here."""
        return bld.make_batch(self.rng, cx, cy, angle, self.shapes(large))

    def commit_buildings(self, batch: bld.Batch, clearance_m: float = 1.5, limit: int | None = None) -> list[Instance]:
        """Place the candidates that touch nothing already there (first come, first served)."""
        if not batch or len(batch["cx"]) == 0:
            return []
        n = len(batch["cx"])
        local_boxes, owner = bld.boxes(batch)
        pad = max(self.m(clearance_m), 0.75)
        probes = cast(np.ndarray, shapely.polygons(bld.placed_boxes(batch, local_boxes, owner, pad)))  # arrays in, arrays out
        outlines = bld.outlines(batch)
        free = self.occ.free(probes)
        ok = (np.bincount(owner, weights=~free, minlength=n) == 0) & shapely.intersects(outlines, self.domain)
        accepted = first_come(outlines, probes, owner, ok)
        if limit is not None:
            accepted[np.flatnonzero(accepted)[limit:]] = False
        parts = np.split(bld.placed_boxes(batch, local_boxes, owner, 0.0), np.cumsum(np.bincount(owner, minlength=n))[:-1])
        placed = []
        for k in np.flatnonzero(accepted).tolist():
            attrs = {"roof_colour": bld.ROOF_COLOURS[int(batch["roof"][k])],
                     "roof_type": "flat" if batch["flat"][k] else "gable",
                     "shape": "L" if batch["lshape"][k] else "rectangle",
                     "height_m": round(float(batch["height"][k]), 1), "damage": "intact", "damaged": False}
            paint = {"parts": list(parts[k]), "angle": float(batch["angle"][k]), "cx": float(batch["cx"][k]),
                     "cy": float(batch["cy"][k]), "shade": float(batch["shade"][k])}
            placed.append(self.add(Instance("building", "intact", outlines[k], attrs, paint)))
        return placed

    def place_buildings(self) -> None:
        batches = [self.lots_along(line, width) for line, width, kind in list(self.road_lines) if kind != "track"]
        batches += [self.farmstead(*self.rural_point()) for _ in range(int(self.rng.integers(0, 4)))]
        self.commit_buildings(bld.concat(batches))

    def lots_along(self, line: LineString, width: float, density: float | None = None) -> bld.Batch:
        """Candidate houses on both sides of a road, facing it."""
        length = line.length
        k = int(length / self.m(10)) + 2  # enough lots for the shortest lot + gap
        large = self.rng.random(k) < 0.08
        shapes = self.shapes(large)
        gap = self.m(2) + self.m(7) * self.rng.random(k)
        start = self.u(0, self.m(8)) + np.r_[0.0, np.cumsum(shapes["a"] + gap)[:-1]]
        lots = start < length
        shapes = bld.select(shapes, lots)
        if not lots.any():
            return {}
        t = np.minimum(start[lots] + shapes["a"] / 2, length)
        p = shapely.get_coordinates(shapely.line_interpolate_point(line, t))
        p0 = shapely.get_coordinates(shapely.line_interpolate_point(line, np.maximum(t - 1, 0)))
        p1 = shapely.get_coordinates(shapely.line_interpolate_point(line, np.minimum(t + 1, length)))
        tangent = np.arctan2(p1[:, 1] - p0[:, 1], p1[:, 0] - p0[:, 0])
        out = []
        for side in (-1.0, 1.0):  # both sides share the lot sizes (a street of similar houses)
            n = len(t)
            u = self.rng.random((4, n))
            keep_p = np.array([self.town_density(x, y) for x, y in p]) if density is None else np.full(n, density)
            setback = self.m(2) + self.m(6) * u[0] + width / 2 + shapes["depth"] / 2
            nx, ny = -np.sin(tangent) * side, np.cos(tangent) * side
            jitter = np.where(u[2] < 0.9, (u[3] - 0.5) * 0.1, (u[3] - 0.5) * 2 * math.pi)
            batch = bld.make_batch(self.rng, p[:, 0] + nx * setback, p[:, 1] + ny * setback, tangent + jitter, shapes)
            out.append(bld.select(batch, u[1] <= keep_p))
        return bld.concat(out)

    def farmstead(self, x: float, y: float) -> bld.Batch:
        """A few buildings (often large barns) around a yard, at right angles to each other."""
        n = int(self.rng.integers(2, 5))
        u = self.rng.random((4, n))
        angle = self.u(0, math.pi) + (u[2] - 0.5) * 0.1 + (math.pi / 2) * (u[3] < 0.5)
        return self.building_batch(x + self.m(60) * (u[0] - 0.5), y + self.m(60) * (u[1] - 0.5), angle,
                                   self.rng.random(n) < 0.4)

    def apply_damage(self) -> None:
        cx, cy, r = self.town
        event = self.rng.random() < 0.45
        ex, ey = (cx + self.u(-1, 1) * r * 0.5, cy + self.u(-1, 1) * r * 0.5) if r > 0 else (self.w / 2, self.h / 2)
        er = max(self.m(40), (r if r > 0 else self.diag / 3) * self.u(0.3, 0.8))
        for inst in self.by_class("building"):
            d = math.hypot(inst.paint["cx"] - ex, inst.paint["cy"] - ey) / er
            if event and d < 1:
                p_destroyed, p_damaged = 0.25 * (1 - d), 0.45 * (1 - 0.5 * d)
            else:
                p_destroyed, p_damaged = 0.01, 0.03
            roll = self.rng.random()
            if roll < p_destroyed:
                destroy(inst, self.rng, self.gsd)
                self.occ.add(inst.geometry)  # rubble may spill past the old footprint
            elif roll < p_destroyed + p_damaged:
                damage(inst, self.rng)

    def by_class(self, cls: str) -> list[Instance]:
        return [i for i in self.instances if i.cls == cls]

    # ---- trees ----------------------------------------------------------------------------------
    def commit_trees(self, cands: list[tuple[float, float, float]]) -> None:
        """Single crowns (x, y, radius in metres) that touch neither each other nor anything else."""
        if not cands:
            return
        arr = np.asarray(cands, dtype=np.float64)
        xy, r = arr[:, :2], arr[:, 2] / self.gsd
        heights = arr[:, 2] * self.rng.uniform(1.8, 3.2, size=len(arr))
        tones = self.rng.uniform(-1, 1, size=len(arr))
        pad = max(self.m(0.3), 0.75) + 0.02 * r  # + the 16-gon's inset from the true circle
        crowns = shapely.polygons(UNIT_CIRCLE[None] * r[:, None, None] + xy[:, None, :])
        probes = shapely.polygons(UNIT_CIRCLE[None] * (r + pad)[:, None, None] + xy[:, None, :])
        in_view = (xy[:, 0] > -r) & (xy[:, 0] < self.w + r) & (xy[:, 1] > -r) & (xy[:, 1] < self.h + r)
        ok = in_view & self.occ.free(probes)
        accepted = first_come(crowns, probes, np.arange(len(arr)), ok)
        for k in np.flatnonzero(accepted).tolist():
            attrs = {"crown_radius_m": round(float(arr[k, 2]), 1), "height_m": round(float(heights[k]), 1)}
            paint = {"cx": float(xy[k, 0]), "cy": float(xy[k, 1]), "r": float(r[k]), "tone": float(tones[k])}
            self.add(Instance("tree", "single", crowns[k], attrs, paint))

    def place_trees(self) -> None:
        n_woods = int(self.rng.integers(0, 3 + int(self.h * self.w * self.gsd**2 > 2e5)))
        for _ in range(n_woods):
            self._woodland(*self.rural_point())
        cands: list[tuple[float, float, float]] = []
        for line, width, kind in self.road_lines:
            if kind != "street" or self.rng.random() > 0.35:
                continue
            spacing = self.m(self.u(8, 14))
            ts = np.arange(self.u(0, spacing), line.length, spacing)
            if ts.size == 0:
                continue
            p = shapely.get_coordinates(shapely.line_interpolate_point(line, ts))
            p0 = shapely.get_coordinates(shapely.line_interpolate_point(line, np.maximum(ts - 1, 0)))
            p1 = shapely.get_coordinates(shapely.line_interpolate_point(line, np.minimum(ts + 1, line.length)))
            ang = np.arctan2(p1[:, 1] - p0[:, 1], p1[:, 0] - p0[:, 0])
            for side in (-1.0, 1.0):
                rr = self.rng.uniform(2, 3.5, size=ts.size)
                off = width / 2 + self.m(self.u(1.5, 3)) + rr / self.gsd
                cands += list(zip((p[:, 0] - np.sin(ang) * side * off).tolist(),
                                  (p[:, 1] + np.cos(ang) * side * off).tolist(), rr.tolist(), strict=True))
        for b in self.by_class("building"):
            if self.rng.random() < 0.35:
                radius = self.u(2, 4.5)
                minx, miny, maxx, maxy = b.geometry.bounds
                heading = self.u(0, 2 * math.pi)
                dist = max(maxx - minx, maxy - miny) / 2 + self.m(radius + self.u(1, 5))
                cands.append((b.paint["cx"] + math.cos(heading) * dist, b.paint["cy"] + math.sin(heading) * dist, radius))
        self.commit_trees(cands)

    def place_scattered_trees(self) -> None:
        """Lone trees in the grass between fields."""
        n = int(self.rng.integers(0, 8) * max(1.0, self.h * self.w * self.gsd**2 / 1e5))
        self.commit_trees([(*self.rural_point(), self.u(2, 5)) for _ in range(n)])

    def _woodland(self, x: float, y: float) -> None:
        """A patch of closed canopy: one tree instance whose texture shows many crowns."""
        rad = self.m(min(self.u(20, 110), 0.3 * self.extent_m))
        geom: BaseGeometry = blob(x, y, rad, self.rng, roughness=0.35)
        geom = clean(self.occ.subtract_from(geom, margin=self.m(1.5)))
        crown_m = self.u(2.2, 4.5)
        for part in parts_of(geom):
            if part.area < self.m(8) ** 2:
                continue
            attrs = {"crown_radius_m": round(crown_m, 1), "height_m": round(self.u(8, 16), 1)}
            self.add(Instance("tree", "woodland", part, attrs, {"crown_px": self.m(crown_m), "tone": self.u(-1, 1)}))

    # ---- fields and bare ground -----------------------------------------------------------------
    def place_fields(self) -> None:
        cx, cy, r = self.town
        angle = self.grid_angle + self.u(-0.3, 0.3)
        d = np.array([math.cos(angle), math.sin(angle)])
        n = np.array([-d[1], d[0]])
        half = self.diag / 2
        centre = np.array([self.w / 2, self.h / 2])
        gap = self.m(self.u(3, 7))
        v = -half
        while v < half:
            depth = self.m(self.u(40, 130))
            u_ = -half
            while u_ < half:
                length = self.m(self.u(60, 200))
                mid = centre + d * (u_ + length / 2) + n * (v + depth / 2)
                u_ += length
                if r > 0 and math.hypot(mid[0] - cx, mid[1] - cy) < self.fields_from:
                    continue
                if self.rng.random() < 0.15:
                    continue
                rect: BaseGeometry = Polygon(rotated_rect(mid[0], mid[1], length - gap, depth - gap, angle))
                rect = rect.intersection(self.domain.buffer(self.m(10)))
                if rect.is_empty:
                    continue
                rect = self.occ.subtract_from(rect, margin=self.m(2))
                self._add_field_parts(rect, angle)
            v += depth

    def _add_field_parts(self, geom: BaseGeometry, angle: float) -> None:
        min_area = self.m(18) ** 2
        crop = CROPS[int(self.rng.integers(0, len(CROPS)))]
        stripe_angle = angle + (math.pi / 2 if self.rng.random() < 0.5 else 0.0)
        for part in parts_of(geom):
            if part.area < min_area:
                continue
            attrs = {"crop": crop}
            paint = {"stripe_angle": stripe_angle, "period_m": self.u(1.5, 4.0), "tone": self.u(-1, 1)}
            self.add(Instance("field", crop, part, attrs, paint))

    def place_bare(self) -> None:
        for _ in range(int(self.rng.integers(0, 3))):
            x, y = self.u(0, self.w), self.u(0, self.h)
            geom: BaseGeometry = blob(x, y, self.m(min(self.u(10, 40), 0.15 * self.extent_m)), self.rng, roughness=0.35)
            geom = clean(self.occ.subtract_from(geom, margin=self.m(1)))
            kind = ("soil", "sand", "gravel")[int(self.rng.integers(0, 3))]
            for part in parts_of(geom):
                if part.area > self.m(6) ** 2:
                    self.add(Instance("bare", kind, part, {}, {"tone": self.u(-1, 1)}))

    def finish(self) -> Layout:
        layout = Layout(self.h, self.w, self.gsd, self.instances, self.town)
        finalise(layout)
        return layout


def damage(inst: Instance, rng: np.random.Generator) -> None:
    """A damaged roof: the footprint stays, part of the roof is broken (painted as holes/debris)."""
    inst.subclass = "damaged"
    inst.attrs.update(damage="damaged", damaged=True)
    inst.paint["damage_fraction"] = float(rng.uniform(0.25, 0.6))


def destroy(inst: Instance, rng: np.random.Generator, gsd: float) -> None:
    """A destroyed building: a heap of rubble with a ragged outline around the old footprint."""
    fp = inst.geometry
    ragged = shapely.segmentize(fp.buffer(0.4 / gsd, join_style="mitre"), 2.0 / gsd)
    coords = np.asarray(ragged.exterior.coords)[:-1]
    coords = coords + rng.normal(0, 0.5 / gsd, size=coords.shape)
    rubble = clean(Polygon(coords).buffer(0)).intersection(fp.buffer(0.7 / gsd, join_style="mitre"))
    rubble = clean(rubble)
    if not rubble.is_empty:
        inst.geometry = rubble
    inst.subclass = "destroyed"
    inst.attrs.update(damage="destroyed", damaged=True, height_m=1.0)


def finalise(layout: Layout) -> None:
    """Clip to the image, drop slivers, number the instances and compute derived attributes."""
    domain = box(0, 0, layout.width, layout.height)
    shapely.prepare(domain)
    geoms = np.asarray([i.geometry for i in layout.instances], dtype=object)
    inside = shapely.contains_properly(domain, geoms)
    geoms[~inside] = shapely.intersection(geoms[~inside], domain)
    kept = []
    for inst, g in zip(layout.instances, geoms, strict=True):
        g = clean(g)
        if not g.is_empty and g.area >= 2.0:
            inst.geometry = g
            kept.append(inst)
    layout.instances = kept
    layout.renumber()
    compute_attributes(layout)


def compute_attributes(layout: Layout) -> None:
    """Areas, size class and the geometric relations (distances measured in metres)."""
    gsd = layout.gsd
    for inst in layout.instances:
        inst.attrs["area_m2"] = round(inst.geometry.area * gsd * gsd, 1)
        if inst.cls == "building":
            inst.attrs["large"] = inst.attrs["area_m2"] >= LARGE_BUILDING_M2 and inst.attrs["damage"] != "destroyed"
    for name, (classes, (other_cls, other_sub), metres) in RELATIONS.items():
        others = [i.geometry for i in layout.instances if i.cls == other_cls and (other_sub is None or i.subclass in other_sub)]
        subjects = [i for i in layout.instances if i.cls in classes]
        if not subjects:
            continue
        if not others:
            for s in subjects:
                s.attrs[name] = False
            continue
        tree = shapely.STRtree(others)
        hit, _ = tree.query(np.asarray([s.geometry for s in subjects], dtype=object), predicate="dwithin", distance=metres / gsd)
        near = np.zeros(len(subjects), dtype=bool)
        near[hit] = True
        for s, ok in zip(subjects, near, strict=True):
            s.attrs[name] = bool(ok)


def generate_layout(rng: np.random.Generator, height: int, width: int, gsd: float) -> Layout:
    """A new random layout for an image of height x width pixels at `gsd` metres per pixel."""
    b = _Builder(rng, height, width, gsd)
    b.plan_town()
    b.place_water()
    b.place_roads()
    b.place_buildings()
    b.apply_damage()
    b.place_trees()
    b.place_fields()
    b.place_scattered_trees()
    b.place_bare()
    return b.finish()
