"""Building candidates as columns of numbers, so hundreds are drawn, tested and placed at once.

A batch is a dict of equal-length arrays: centre (cx, cy), angle, size (a along the street, b
deep), L-shape wing (lshape, wing_len, wing_depth, mirror), large, and the attributes drawn with
the shape (roof colour index, flat roof, height, shade). Local coordinates have the footprint's
bounding box centred on the origin; pixel units throughout.
"""

from __future__ import annotations

from typing import cast

import numpy as np
import shapely

from .geometry import box_corners, place_many

ROOF_COLOURS = ("red", "grey", "dark_grey", "brown", "white", "green", "blue")
SMALL_ROOF_CUM = np.cumsum((0.42, 0.16, 0.14, 0.12, 0.08, 0.04, 0.04))[:-1]  # probabilities per colour
LARGE_ROOF_CUM = np.cumsum((0.08, 0.34, 0.14, 0.04, 0.26, 0.06, 0.08))[:-1]

Batch = dict[str, np.ndarray]


def draw_shapes(rng: np.random.Generator, large: np.ndarray, px_per_m: float) -> Batch:
    """Footprint sizes for each candidate (metres drawn, pixels returned)."""
    n = large.size
    u = rng.random((7, n))
    a = np.where(large, 24 + 36 * u[0], 8 + 9 * u[0]) * px_per_m
    b = np.where(large, 16 + 18 * u[1], 7 + 5 * u[1]) * px_per_m
    lshape = ~large & (u[2] < 0.3)
    wing_len = np.where(lshape, a * (0.3 + 0.2 * u[3]), 0.0)
    wing_depth = np.where(lshape, b * (0.5 + 0.4 * u[4]), 0.0)
    return {"a": a, "b": b, "lshape": lshape, "wing_len": wing_len, "wing_depth": wing_depth,
            "mirror": u[5] < 0.5, "large": large.copy(), "depth": b + wing_depth}


def draw_attributes(rng: np.random.Generator, large: np.ndarray) -> Batch:
    n = large.size
    u = rng.random((4, n))
    roof = np.where(large, np.searchsorted(LARGE_ROOF_CUM, u[0], side="right"),
                    np.searchsorted(SMALL_ROOF_CUM, u[0], side="right"))
    return {"roof": roof, "flat": large | (u[1] < 0.15), "height": np.where(large, 6 + 9 * u[2], 3.5 + 5.5 * u[2]),
            "shade": 2 * u[3] - 1}


def make_batch(rng: np.random.Generator, cx, cy, angle, shapes: Batch) -> Batch:
    """Candidates at the given places with the given shapes; attributes are drawn here."""
    batch = {k: np.asarray(v) for k, v in shapes.items()}
    batch.update(cx=np.asarray(cx, float), cy=np.asarray(cy, float), angle=np.asarray(angle, float))
    batch.update(draw_attributes(rng, batch["large"]))
    return batch


def select(batch: Batch, keep: np.ndarray) -> Batch:
    return {k: v[keep] for k, v in batch.items()}


def concat(batches: list[Batch]) -> Batch:
    batches = [b for b in batches if b and len(b["cx"])]
    if not batches:
        return {}
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def boxes(batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    """Convex parts as local boxes (x0, y0, x1, y1) and the candidate each belongs to."""
    a2, b2 = batch["a"] / 2, batch["b"] / 2
    shift = batch["wing_depth"] / 2
    main = np.stack([-a2, -b2 - shift, a2, b2 - shift], axis=1)
    idx = np.flatnonzero(batch["lshape"])
    wl, wd, mir = batch["wing_len"][idx], batch["wing_depth"][idx], batch["mirror"][idx]
    x0 = np.where(mir, -a2[idx], a2[idx] - wl)
    wing = np.stack([x0, b2[idx] - shift[idx], x0 + wl, b2[idx] + wd - shift[idx]], axis=1)
    owner = np.r_[np.arange(len(main)), idx]
    order = np.argsort(owner, kind="stable")
    return np.vstack([main, wing])[order], owner[order]


def outlines(batch: Batch) -> np.ndarray:
    """Footprint polygons (pixel space): rectangles, or six-cornered L-shapes."""
    n = len(batch["cx"])
    a2, b2, wl, wd = batch["a"] / 2, batch["b"] / 2, batch["wing_len"], batch["wing_depth"]
    x0, y1 = a2 - wl, b2 + wd
    pts = np.stack([np.c_[-a2, -b2], np.c_[a2, -b2], np.c_[a2, y1], np.c_[x0, y1], np.c_[x0, b2], np.c_[-a2, b2]], axis=1)
    pts[..., 0] *= np.where(batch["mirror"], -1.0, 1.0)[:, None]
    pts[..., 1] -= (wd / 2)[:, None]
    counts = np.where(batch["lshape"], 6, 4)
    keep = np.arange(6)[None, :] < counts[:, None]  # a rectangle uses the L's corners 0, 1, 2 and 5
    pts[~batch["lshape"], 3] = pts[~batch["lshape"], 5]
    local = pts[keep]
    rep = np.repeat(np.arange(n), counts)
    world = place_many(local, batch["cx"][rep], batch["cy"][rep], batch["angle"][rep])
    return cast(np.ndarray, shapely.polygons(shapely.linearrings(world, indices=rep)))  # arrays in, arrays out


def placed_boxes(batch: Batch, local_boxes: np.ndarray, owner: np.ndarray, pad: float) -> np.ndarray:
    """(P, 4, 2) corners of the parts grown by `pad`, in pixel space."""
    corners = box_corners(local_boxes, pad).reshape(-1, 2)
    rep = np.repeat(owner, 4)
    return place_many(corners, batch["cx"][rep], batch["cy"][rep], batch["angle"][rep]).reshape(-1, 4, 2)
