"""Bi-temporal pairs: the after date is the before layout with changes of known kinds applied.

Each change kind alters one target class, so its mask is exactly "after minus before" of that
class: new_buildings (building appears), demolished_buildings (building -> bare demolition site),
new_roads (road appears, cutting fields, woods and bare ground it crosses), flooding (part of a
field becomes flood water), damaged_buildings (an intact building gets a broken roof; not in the
default set). The after image is painted with its own season, sun and noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry import LineString
from shapely.geometry.base import BaseGeometry

from . import palette, scanline
from .buildings import concat
from .geometry import clean, parts_of, safe_difference
from .layout import Instance, Layout, _Builder, damage, finalise, generate_layout
from .render import DateParams, SceneArrays, compose, stream
from .vocab import CHANGE_KINDS, DEFAULT_CHANGE_KINDS, UnknownPhraseError, resolve

# change kind -> (class mask, sign): +1 appears in the after image, -1 disappears from it
CHANGE_CLASS = {
    "new_buildings": ("building", +1),
    "demolished_buildings": ("building", -1),
    "new_roads": ("road", +1),
    "flooding": ("water", +1),
    "damaged_buildings": ("damaged_building", +1),
}


@dataclass
class PairArrays:
    """Two dates of one place on the same pixel grid, and the truth of what changed."""

    before: SceneArrays
    after: SceneArrays
    kinds: tuple[str, ...]  # change kinds that were asked for
    change: dict[str, np.ndarray]  # kind -> H x W bool, for every kind in CHANGE_KINDS
    change_instances: list[Instance]  # pixel-space polygons; attrs["change"] names the kind

    @property
    def before_image(self) -> np.ndarray:
        return self.before.image

    @property
    def after_image(self) -> np.ndarray:
        return self.after.image

    @property
    def masks_before(self) -> dict[str, np.ndarray]:
        return self.before.masks

    @property
    def masks_after(self) -> dict[str, np.ndarray]:
        return self.after.masks

    @property
    def appeared(self) -> np.ndarray:
        """Pixels where something of a target class appeared (union of the + kinds)."""
        return np.logical_or.reduce([self.change[k] for k, (_, sign) in CHANGE_CLASS.items() if sign > 0])

    @property
    def disappeared(self) -> np.ndarray:
        return np.logical_or.reduce([self.change[k] for k, (_, sign) in CHANGE_CLASS.items() if sign < 0])

    def select(self, phrase: str) -> list[Instance]:
        """Change polygons of a change phrase ("new buildings", ...)."""
        concept = resolve(phrase)
        if concept.kind != "change":
            raise UnknownPhraseError(f"{phrase!r} is not a change query; ask pair.before or pair.after")
        return [i for i in self.change_instances if i.attrs["change"] == concept.change]

    def mask(self, phrase: str) -> np.ndarray:
        """Truth mask of a change phrase; a scene phrase gets the after date's mask."""
        concept = resolve(phrase)
        if concept.kind != "change":
            return self.after.mask(phrase)
        assert concept.change is not None  # set for every change concept
        return self.change[concept.change]


def apply_changes(before: Layout, rng: np.random.Generator, kinds: tuple[str, ...]) -> tuple[Layout, list[Instance]]:
    """The after layout and the change polygons, for the requested kinds."""
    unknown = set(kinds) - set(CHANGE_KINDS)
    if unknown:
        raise ValueError(f"unknown change kinds {sorted(unknown)}; use {', '.join(CHANGE_KINDS)}")
    b = _Builder.resume(rng, before)
    changes: list[Instance] = []
    standing = [i for i in b.instances if i.cls == "building" and i.attrs["damage"] != "destroyed"]
    order = rng.permutation(len(standing))
    n_demolish = min(len(standing) // 2, max(1, round(0.06 * len(standing)))) if "demolished_buildings" in kinds else 0
    n_damage = min(len(standing) // 2, max(1, round(0.1 * len(standing)))) if "damaged_buildings" in kinds else 0
    demolish = [standing[k] for k in order[:n_demolish]]
    to_damage = [standing[k] for k in order[n_demolish:n_demolish + n_damage] if standing[k].attrs["damage"] == "intact"]
    for inst in demolish:
        changes.append(_demolish(b, inst))
    if "new_roads" in kinds:
        changes += _new_roads(b)
    if "new_buildings" in kinds:
        changes += _new_buildings(b, n_before=len(standing))
    if "flooding" in kinds:
        changes += _flood(b)
    for inst in to_damage:
        damage(inst, rng)
        changes.append(Instance("building", "damaged", inst.geometry, {**inst.attrs, "change": "damaged_buildings"}))
    after = Layout(before.height, before.width, before.gsd, b.instances, before.town)
    finalise(after)
    return after, _finalise_changes(changes, before)


def _demolish(b: _Builder, inst: Instance) -> Instance:
    """The building is gone; a bare demolition site with its footprint is left."""
    b.instances.remove(inst)
    b.instances.append(Instance("bare", "demolition", inst.geometry, {}, {"tone": b.u(-1, 1)}))
    return Instance("building", inst.subclass, inst.geometry, {**inst.attrs, "change": "demolished_buildings"})


def _new_roads(b: _Builder) -> list[Instance]:
    """One or two new roads branching off existing ones (or crossing open land)."""
    out = []
    blockers = [i.geometry for i in b.instances if i.cls in ("building", "water")]
    blocker_tree = shapely.STRtree(blockers) if blockers else None
    for _ in range(int(b.rng.integers(1, 3))):
        for _attempt in range(20):
            branch = _branch_line(b)
            line: LineString | None = branch
            width_m = b.u(4, 7)
            if blocker_tree is not None:  # stop the road short of the first building or bank in its way
                hit = blocker_tree.query(branch, predicate="dwithin", distance=b.m(width_m / 2 + 2.0))
                if len(hit):
                    keep_out = shapely.union_all([blockers[i] for i in hit]).buffer(b.m(width_m / 2 + 2.0), quad_segs=2)
                    line = _first_piece(branch, keep_out)
            if line is None or line.length < b.m(40):
                continue
            poly: BaseGeometry = line.buffer(b.m(width_m) / 2, cap_style="flat", quad_segs=3)
            if blocker_tree is not None and len(blocker_tree.query(poly.buffer(b.m(1.5)), predicate="intersects")):
                continue
            roads = [i.geometry for i in b.instances if i.cls == "road" and i.geometry.intersects(poly)]
            if roads:
                poly = safe_difference(poly, shapely.union_all(roads))
            poly = clean(poly.intersection(b.domain))
            if poly.is_empty or poly.area < b.m(width_m) * b.m(20):
                continue
            _cut_open_land(b, poly)
            paved = bool(b.rng.random() < 0.6)
            attrs = {"paved": paved, "surface": "asphalt" if paved else "dirt", "kind": "street", "width_m": round(width_m, 1)}
            inst = Instance("road", "paved" if paved else "dirt", poly, attrs,
                            {"tone": b.u(0, 1), "line": line, "width_px": b.m(width_m)})
            b.add(inst)
            b.road_lines.append((line, b.m(width_m), "street"))
            out.append(Instance("road", inst.subclass, poly, {**attrs, "change": "new_roads"}))
            break
    return out


def _first_piece(line: LineString, keep_out: BaseGeometry) -> LineString | None:
    """The part of `line` from its start up to where it first enters `keep_out`."""
    start = shapely.Point(line.coords[0])
    if keep_out.contains(start):
        return None
    rest = line.difference(keep_out)
    for piece in getattr(rest, "geoms", [rest]):
        if piece.geom_type == "LineString" and not piece.is_empty and piece.distance(start) < 1e-6:
            return piece
    return None


def _branch_line(b: _Builder) -> LineString:
    """A new road: an existing street carried on past its end, or a branch off a road where the
    houses thin out; it starts well inside the image."""
    length = min(b.m(b.u(80, 300)), 0.7 * b.diag)
    inner = shapely.box(0.1 * b.w, 0.1 * b.h, 0.9 * b.w, 0.9 * b.h)
    streets = [ln for ln, _, kind in b.road_lines if kind == "street"]
    x = y = angle = None
    if streets and b.rng.random() < 0.6:  # extension
        line = streets[int(b.rng.integers(0, len(streets)))]
        coords = np.asarray(line.coords)
        end, prev = (coords[-1], coords[-2]) if b.rng.random() < 0.5 else (coords[0], coords[1])
        if inner.contains(shapely.Point(end)):
            x, y = float(end[0]), float(end[1])
            angle = math.atan2(end[1] - prev[1], end[0] - prev[0]) + b.u(-0.3, 0.3)
    if x is None and b.road_lines:  # branch where the houses thin out
        line, _, _ = b.road_lines[int(b.rng.integers(0, len(b.road_lines)))]
        ts = b.rng.uniform(0.05, 0.95, size=16) * line.length
        pts = shapely.get_coordinates(shapely.line_interpolate_point(line, ts))
        ok = [k for k, (px, py) in enumerate(pts) if inner.contains(shapely.Point(px, py)) and b.town_density(px, py) < 0.6]
        k = ok[0] if ok else 0
        t = float(ts[k])
        p, q = line.interpolate(t), line.interpolate(min(t + 1, line.length))
        angle = math.atan2(q.y - p.y, q.x - p.x) + (math.pi / 2) * (1 if b.rng.random() < 0.5 else -1) + b.u(-0.4, 0.4)
        x, y = p.x, p.y
    if x is None:
        x, y, angle = b.u(0.2, 0.8) * b.w, b.u(0.2, 0.8) * b.h, b.u(0, 2 * math.pi)
    assert y is not None and angle is not None  # set with x
    end = (x + math.cos(angle) * length, y + math.sin(angle) * length)
    return LineString([(x, y), end])


def _cut_open_land(b: _Builder, road: BaseGeometry) -> None:
    """A new road replaces the fields, woods, lone trees and bare ground in its way."""
    margin = road.buffer(b.m(1.0), quad_segs=2)
    for inst in list(b.instances):
        if inst.cls not in ("field", "tree", "bare") or not inst.geometry.intersects(margin):
            continue
        if inst.cls == "tree" and inst.subclass == "single":
            b.instances.remove(inst)
            continue
        rest = clean(safe_difference(inst.geometry, margin))
        parts = [p for p in parts_of(rest) if p.area > b.m(6) ** 2]
        b.instances.remove(inst)
        for p in parts:
            b.instances.append(Instance(inst.cls, inst.subclass, p, dict(inst.attrs), dict(inst.paint)))


def _new_buildings(b: _Builder, n_before: int) -> list[Instance]:
    """New houses on free land along the roads (the new road first, when there is one)."""
    limit = max(2, round(0.15 * max(n_before, 6)))
    batch = concat([b.lots_along(line, width, density=0.3) for line, width, kind in reversed(b.road_lines) if kind != "track"])
    placed = b.commit_buildings(batch, limit=limit)
    if len(placed) < limit:  # no room along the roads: scattered new houses on open land
        n = 80
        extra = b.building_batch(b.rng.uniform(0, b.w, n), b.rng.uniform(0, b.h, n), b.rng.uniform(0, math.pi, n), np.zeros(n, bool))
        placed += b.commit_buildings(extra, limit=limit - len(placed))
    return [Instance("building", "intact", i.geometry, {**i.attrs, "change": "new_buildings"}) for i in placed]


def _flood(b: _Builder) -> list[Instance]:
    """Fields near the river (or any fields) partly under flood water."""
    fields = [i for i in b.instances if i.cls == "field"]
    if not fields:
        return []
    rivers = [i.geometry for i in b.instances if i.cls == "water" and i.subclass == "river"]
    river = shapely.union_all(rivers) if rivers else None
    if river is not None:
        fields.sort(key=lambda f: f.geometry.distance(river))
    else:
        fields = [fields[k] for k in b.rng.permutation(len(fields))]
    out = []
    for f in fields[: int(b.rng.integers(1, 4))]:
        if river is not None and f.geometry.distance(river) < b.m(150):
            reach = river.buffer(f.geometry.distance(river) + b.m(b.u(30, 120)), quad_segs=4)
            flood = clean(f.geometry.intersection(reach))
        else:
            flood = f.geometry
        flood = clean(flood)
        if flood.is_empty or flood.area < b.m(10) ** 2:
            continue
        rest = [p for p in parts_of(clean(safe_difference(f.geometry, flood))) if p.area > b.m(10) ** 2]
        b.instances.remove(f)
        for p in rest:
            b.instances.append(Instance("field", f.subclass, p, dict(f.attrs), dict(f.paint)))
        flood = clean(safe_difference(f.geometry, shapely.union_all(rest))) if rest else f.geometry
        b.instances.append(Instance("water", "flood", flood, {}, {"tone": b.u(-1, 1)}))
        out.append(Instance("water", "flood", flood, {"change": "flooding", "flooded": f.attrs["crop"]}))
    return out


def _finalise_changes(changes: list[Instance], layout: Layout) -> list[Instance]:
    domain = shapely.box(0, 0, layout.width, layout.height)
    out = []
    for k, inst in enumerate(changes, start=1):
        g = clean(inst.geometry.intersection(domain))
        if not g.is_empty and g.area >= 2.0:
            inst.geometry, inst.id = g, k
            inst.attrs["area_m2"] = round(g.area * layout.gsd**2, 1)
            out.append(inst)
    return out


def change_masks(instances: list[Instance], height: int, width: int, valid: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """One mask per change kind. Kinds may overlap (a new road across a demolition site), so each
    kind is rasterised on its own."""
    out = {}
    for kind in CHANGE_KINDS:
        geoms = [i.geometry for i in instances if i.attrs["change"] == kind]
        mask = scanline.rasterize(geoms, 1, height, width, dtype="uint8").astype(bool)
        out[kind] = mask & valid if valid is not None else mask
    return out


def render_pair(seed: int, height: int, width: int, gsd: float = 0.5, *,
                change_kinds: tuple[str, ...] = DEFAULT_CHANGE_KINDS, bands: int = 3, dtype: str = "uint8",
                season_before: str = "summer", season_after: str | None = None) -> PairArrays:
    """A before/after pair on one grid with per-kind change masks and polygons.

    The before image equals `render_scene(seed, ...)` with the same season. `season_after=None`
    draws a season different from the before one.
    """
    before_layout = generate_layout(stream(seed, "layout"), height, width, gsd)
    after_layout, changes = apply_changes(before_layout, stream(seed, "change"), tuple(change_kinds))
    date_b = DateParams.draw(stream(seed, "date"), season_before)
    if season_after is None:
        others = [s for s in palette.SEASONS if s != season_before]
        season_after = others[int(stream(seed, "after_season").integers(0, len(others)))]
    date_a = DateParams.draw(stream(seed, "after_date"), season_after)
    before = compose(seed, before_layout, date_b, stream(seed, "paint"), bands=bands, dtype=dtype, footprint=None)
    after = compose(seed, after_layout, date_a, stream(seed, "after_paint"), bands=bands, dtype=dtype, footprint=None)
    masks = change_masks(changes, height, width)
    return PairArrays(before, after, tuple(change_kinds), masks, changes)
