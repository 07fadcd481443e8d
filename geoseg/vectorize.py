"""Probability raster -> polygons, block by block, in memory bounded by the block size.

The raster is read in square blocks. In each block the foreground is polygonised (GDAL's
polygoniser, 4-connectivity) and grouped into connected components: by labelling (scipy) when
scores are needed or with 8-connectivity, or, for a plain mask with 4-connectivity, by taking
each polygon as its own component, which skips the labelling. A component that does not reach an
interior block edge is complete and is emitted at once; one that does is *pending*: it is joined
to the parts it meets across the seam (union-find over pixel adjacency along the seam) and
emitted when its group can no longer grow, i.e. once the block row below has been read. Pending
state therefore only ever holds parts that touch a seam of the current block row, never the scene.

All polygon work happens in pixel coordinates (integers, exact in float64) and per-block arrays,
not per-component objects. Components dissolved across seams are cleaned of the collinear
vertices the seams left, so every component has the vertices of polygonising the whole raster as
one block; one `normalize` after the affine transform to the raster CRS (applied once, at the
end) then makes the result identical, ring starts and orientation included.

Input rasters (first band is read):

- integer raster with a scale tag (what the pipeline writes: uint8, v in 0..254, scale 1/254,
  nodata 255): probability = v * scale + offset;
- floating-point raster: probability = v * scale + offset (scale 1, offset 0 when untagged);
  NaN is nodata as well as the file's nodata value;
- integer raster without a scale tag: a mask. Every non-zero pixel is foreground (0/1 and 0/255
  masks both work), the threshold is not used and the score is 1.0.

Pixels that are nodata or masked in the file's GDAL mask are never foreground.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from itertools import chain
from pathlib import Path
from typing import cast

import geopandas as gpd
import numpy as np
import rasterio
import rasterio.shutil
import shapely
from affine import Affine
from pyproj import CRS as ProjCRS
from rasterio.features import shapes
from rasterio.windows import Window
from shapely.geometry.base import BaseGeometry
from tqdm import tqdm

from geoseg.errors import InputError
from geoseg.rowfeed import RowFeed

# p >= threshold - THRESHOLD_EPS is foreground, so that 127/254 counts as 0.5 whatever the
# rounding of the stored scale factor.
THRESHOLD_EPS = 1e-9
OUTPUT_COLUMNS = ["score", "pixel_count", "area_m2", "perimeter_m"]


@dataclass
class VectorizeOptions:
    """How a probability raster becomes polygons.

    threshold:    a pixel is foreground when its probability is >= threshold (masks: value > 0).
    min_area_px:  drop components with fewer foreground pixels than this.
    min_area_m2:  drop polygons whose final area_m2 is smaller than this.
    fill_holes:   fill interior holes whose area is below this many m2; True or math.inf fills
                  every hole, False or 0 none. Components lying inside a filled hole are absorbed
                  into the polygon that now covers them (their pixels count towards its score).
    simplify:     topology-preserving simplification tolerance in *pixels* (0: none); shared
                  boundaries stay shared (shapely.coverage_simplify).
    block_size:   rows and columns per block read; memory scales with block_size**2.
    connectivity: 4 or 8; with 8, diagonally touching pixels form one (Multi)Polygon.
    """

    threshold: float = 0.5
    min_area_px: int = 0
    min_area_m2: float = 0.0
    fill_holes: bool | float = False
    simplify: float = 0.0
    block_size: int = 2048
    connectivity: int = 4

    def validate(self) -> None:
        """Raise InputError naming the first option that cannot work."""
        if not 0.0 <= self.threshold <= 1.0:
            raise InputError(f"threshold {self.threshold} is outside [0, 1]; pass e.g. --threshold 0.5")
        if self.min_area_px < 0 or self.min_area_m2 < 0:
            raise InputError("minimum areas must be >= 0")
        if self.hole_area_limit_m2 < 0:
            raise InputError("fill_holes must be True/False or a hole area in m2 >= 0")
        if self.simplify < 0:
            raise InputError(f"simplify tolerance {self.simplify} must be >= 0 (pixels)")
        if self.block_size < 16:
            raise InputError(f"block_size {self.block_size} is too small; use at least 16")
        if self.connectivity not in (4, 8):
            raise InputError(f"connectivity must be 4 or 8, not {self.connectivity}")

    @property
    def hole_area_limit_m2(self) -> float:
        """fill_holes as a number: holes with area below it are filled."""
        if self.fill_holes is True:
            return math.inf
        if self.fill_holes is False or self.fill_holes is None:
            return 0.0
        return float(self.fill_holes)


# --------------------------------------------------------------------------------------------
# Reading: what a pixel value means


@dataclass(frozen=True)
class _Coding:
    """How stored values map to probabilities for one file."""

    is_mask: bool
    scale: float
    offset: float

    def mean_probability(self, value_sum: np.ndarray, count: np.ndarray) -> np.ndarray:
        """Mean probability of each component from the sum of its stored values."""
        if self.is_mask:
            return np.ones(len(count))
        return (value_sum * self.scale + count * self.offset) / count


def _coding_of(src: rasterio.DatasetReader) -> _Coding:
    dtype = np.dtype(src.dtypes[0])
    scale = float(src.scales[0]) if src.scales and src.scales[0] is not None else 1.0
    offset = float(src.offsets[0]) if src.offsets and src.offsets[0] is not None else 0.0
    tagged = scale != 1.0 or offset != 0.0
    if dtype.kind in "ui" and not tagged:
        return _Coding(True, 1.0, 0.0)
    if dtype.kind not in "uif":
        raise InputError(f"{src.name}: band type {dtype} is not a probability raster or a mask")
    return _Coding(False, scale, offset)


BlockReader = Callable[[Window], tuple[np.ndarray, np.ndarray, np.ndarray]]


def _read_block(
    src: rasterio.DatasetReader, window: Window, coding: _Coding, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Foreground, validity (both bool) and the stored values (summed for scores) of a window."""
    values = src.read(1, window=window)
    valid = src.read_masks(1, window=window) > 0
    if values.dtype.kind == "f":
        valid &= ~np.isnan(values)
    return _foreground(values, valid, coding, threshold), valid, values


def _feed_reader(feed: RowFeed, coding: _Coding, nodata: int, threshold: float) -> BlockReader:
    """Blocks of a raster whose rows arrive through `feed` (what the pipeline's blender writes:
    integer values, `nodata` where nothing was predicted), read a block row at a time."""
    band: dict[tuple[int, int], np.ndarray] = {}

    def read(window: Window) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = (window.row_off, window.row_off + window.height)
        if rows not in band:
            band.clear()
            band[rows] = feed.rows(*rows)
        values = band[rows][:, window.col_off: window.col_off + window.width]
        valid = values != nodata
        return _foreground(values, valid, coding, threshold), valid, values

    return read


def _foreground(values: np.ndarray, valid: np.ndarray, coding: _Coding, threshold: float) -> np.ndarray:
    """Which valid pixels are foreground: non-zero in a mask, probability >= threshold otherwise."""
    if coding.is_mask:
        foreground = valid & (values != 0)
    elif values.dtype in (np.uint8, np.uint16):
        # A lookup table keeps the comparison identical for every block and avoids a float copy.
        codes = np.arange(np.iinfo(values.dtype).max + 1, dtype=np.float64)
        lut = codes * coding.scale + coding.offset >= threshold - THRESHOLD_EPS
        foreground = valid & lut[values]
    else:
        probabilities = values.astype(np.float64) * coding.scale + coding.offset
        foreground = valid & (probabilities >= threshold - THRESHOLD_EPS)
    return foreground


# --------------------------------------------------------------------------------------------
# Geometry in pixel space


def _clean_polygons(polys: list[shapely.Polygon]) -> np.ndarray:
    """Remove the vertices in the middle of straight runs (all edges are axis-aligned here).

    All rings of all the polygons in one pass: a dissolved 8-connected component can be tens of
    thousands of polygons.
    """
    rings, polygon_of_ring = shapely.get_rings(np.asarray(polys, dtype=object), return_index=True)
    coords, ring = shapely.get_coordinates(rings, return_index=True)
    last = np.append(ring[1:] != ring[:-1], True)  # the closing repeat of each ring
    pts, ring = coords[~last], ring[~last]
    first = np.insert(ring[1:] != ring[:-1], 0, True)
    starts = np.flatnonzero(first)
    ends = np.append(starts[1:], len(pts)) - 1
    owner = np.cumsum(first) - 1  # ring number of every vertex, 0-based
    idx = np.arange(len(pts))
    prev = np.where(first, ends[owner], idx - 1)
    nxt = np.where(np.append(first[1:], True), starts[owner], idx + 1)
    x, y = pts[:, 0], pts[:, 1]
    straight = ((x[prev] == x) & (x == x[nxt])) | ((y[prev] == y) & (y == y[nxt]))
    keep = ~straight
    cleaned = shapely.linearrings(pts[keep], indices=ring[keep])
    return shapely.polygons(cleaned, indices=polygon_of_ring)


def _merge_parts(polys: list[shapely.Polygon], connectivity: int) -> list[shapely.Polygon]:
    """Dissolve the pieces of one component (cut by block seams) into its polygon(s).

    With 4-connectivity every hole of a piece lies inside the piece's own block, so no other
    piece can touch it: only the shells need the (costly) overlay union, and the holes are put
    back afterwards. With 8-connectivity a piece may sit inside another's hole (touching it at a
    corner), so the full polygons are unioned.
    """
    if len(polys) == 1:
        return polys
    if connectivity == 8:
        return list(shapely.get_parts(shapely.union_all(polys)))
    shells = shapely.polygons(shapely.get_exterior_ring(np.array(polys, dtype=object)))
    merged = shapely.union_all(shells)
    if not isinstance(merged, shapely.Polygon):  # cannot happen for a 4-connected group; keep it correct anyway
        return list(shapely.get_parts(shapely.union_all(polys)))
    holes = [*merged.interiors, *(ring for p in polys for ring in p.interiors)]
    return [shapely.Polygon(merged.exterior, holes)]


def _canonical(parts: list[shapely.Polygon], connectivity: int) -> shapely.Geometry:
    """One component's geometry with the vertices it would have had from one block: seams
    dissolved, collinear vertices removed (all edges are axis-aligned in pixel space). Ring start,
    orientation and hole order are normalised later, for all components in one call.

    GDAL's polygoniser puts vertices only where the boundary turns, so a component that came
    out of one block in one piece is already free of collinear vertices; only merged pieces
    need cleaning (test_blockwise_equals_whole_raster guards this).
    """
    if len(parts) == 1:
        return parts[0]
    polys = _clean_polygons(_merge_parts(parts, connectivity))
    return polys[0] if len(polys) == 1 else shapely.MultiPolygon(list(polys))


def _to_world(geoms: np.ndarray, transform: Affine) -> np.ndarray:
    a, b, c, d, e, f = transform[:6]

    def apply(xy: np.ndarray) -> np.ndarray:
        x, y = xy[:, 0], xy[:, 1]
        return np.column_stack([a * x + b * y + c, d * x + e * y + f])

    return shapely.transform(geoms, apply)


def _polygonal(geom: BaseGeometry) -> BaseGeometry | None:
    """Valid polygonal part of a geometry (None when nothing is left)."""
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    result: BaseGeometry | None = geom
    if geom.geom_type == "GeometryCollection":
        polys = [g for g in shapely.get_parts(geom) if g.geom_type in ("Polygon", "MultiPolygon")]
        result = shapely.union_all(polys) if polys else None
    if result is None or result.is_empty or result.geom_type not in ("Polygon", "MultiPolygon"):
        return None
    return result


# --------------------------------------------------------------------------------------------
# Block-wise component extraction with seam merging


@dataclass
class _Components:
    """Connected components as parallel arrays, one row per component."""

    geoms: np.ndarray  # object: (Multi)Polygon with its final vertices, pixel coordinates
    pixel_count: np.ndarray  # int64: foreground pixels
    value_sum: np.ndarray  # float64: stored values summed over them (unused for masks)
    first: np.ndarray  # int64: raster index (row * width + col) of the first pixel in raster order

    def __len__(self) -> int:
        return len(self.geoms)

    def take(self, index: np.ndarray) -> _Components:
        return _Components(self.geoms[index], self.pixel_count[index], self.value_sum[index], self.first[index])

    @staticmethod
    def concat(chunks: list[_Components]) -> _Components:
        if not chunks:  # a raster without rows
            return _Components(np.empty(0, dtype=object), np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64))
        return _Components(
            np.concatenate([c.geoms for c in chunks]),
            np.concatenate([c.pixel_count for c in chunks]),
            np.concatenate([c.value_sum for c in chunks]),
            np.concatenate([c.first for c in chunks]),
        )


@dataclass
class _Part:
    """The pieces of one block's component that touches a seam, waiting for its neighbours."""

    geoms: list[shapely.Polygon]
    pixel_count: int
    value_sum: float
    first: int
    block_row: int
    touches_bottom: bool


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def add(self, item: int) -> None:
        self.parent[item] = item

    def find(self, item: int) -> int:
        root = item
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[item] != root:  # path compression
            self.parent[item], item = root, self.parent[item]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def remove(self, items: Iterable[int]) -> None:
        for item in items:
            del self.parent[item]


def _seam_pairs(
    local: np.ndarray, neighbour: np.ndarray, neighbour_offset: int, connectivity: int
) -> np.ndarray:
    """(local label, neighbour gid) pairs of foreground pixels that touch across a seam.

    `local` is this block's edge line of labels, `neighbour` the gids on the other side of the
    seam, where neighbour[i + neighbour_offset] faces local[i].
    """
    shifts = (0,) if connectivity == 4 else (-1, 0, 1)
    pairs = []
    idx = np.arange(local.size)
    for shift in shifts:
        j = idx + neighbour_offset + shift
        ok = (j >= 0) & (j < neighbour.size)
        lab = local[idx[ok]]
        gid = neighbour[j[ok]]
        hit = (lab > 0) & (gid > 0)
        if hit.any():
            pairs.append(np.column_stack([lab[hit], gid[hit]]))
    if not pairs:
        return np.empty((0, 2), dtype=np.int64)
    return np.unique(np.concatenate(pairs).astype(np.int64), axis=0)


@dataclass
class _Polygonised:
    """4-connected polygons of a block's foreground and the vertices they were built from."""

    polygons: np.ndarray  # object, pixel coordinates of the whole raster
    first: np.ndarray  # (n, 2) int64: (row, col) of each polygon's first pixel in raster order
    xy: np.ndarray  # (points, 2): every ring's vertices, closed, polygon after polygon
    ring_of_point: np.ndarray
    polygon_of_point: np.ndarray


def _polygonise(foreground: np.ndarray, col0: int, row0: int) -> _Polygonised:
    """Polygonise a block's foreground (4-connectivity) in pixel coordinates of the whole raster.

    Built in one vectorised call: per-polygon construction dominates for noisy masks.
    """
    rings: list[list[tuple[float, float]]] = []
    rings_per_polygon: list[int] = []
    transform = Affine.translation(col0, row0)
    # GDAL's polygoniser is about twice as fast on the byte foreground as on int32 labels.
    for geojson, _ in shapes(foreground.view(np.uint8), mask=foreground, connectivity=4, transform=transform):
        rings.extend(geojson["coordinates"])
        rings_per_polygon.append(len(geojson["coordinates"]))
    ring_length = np.fromiter(map(len, rings), dtype=np.intp, count=len(rings))
    flat = chain.from_iterable(chain.from_iterable(rings))
    xy = np.fromiter(flat, dtype=np.float64, count=2 * int(ring_length.sum())).reshape(-1, 2)
    ring_of_point = np.repeat(np.arange(len(rings)), ring_length)
    polygon_of_ring = np.repeat(np.arange(len(rings_per_polygon)), rings_per_polygon)
    polygon_of_point = polygon_of_ring[ring_of_point]
    if rings:
        rings_array = cast(np.ndarray, shapely.linearrings(xy, indices=ring_of_point))  # arrays in, arrays out
        polygons = cast(np.ndarray, shapely.polygons(rings_array, indices=polygon_of_ring))
    else:
        polygons = np.empty(0, dtype=object)
    return _Polygonised(polygons, _first_pixels(xy, polygon_of_point), xy, ring_of_point, polygon_of_point)


def _first_pixels(xy: np.ndarray, polygon_of_point: np.ndarray) -> np.ndarray:
    """(row, col) of each polygon's first pixel in raster order.

    That pixel's top-left corner is the polygon's top-most, then left-most vertex: vertices on
    the top line y = row are the corners of the top edges of that row's pixels (holes lie lower).
    A polygon's points are contiguous, so per-polygon minima are `reduceat`s.
    """
    if not len(xy):
        return np.zeros((0, 2), dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, polygon_of_point[1:] != polygon_of_point[:-1]])
    x, y = xy[:, 0], xy[:, 1]
    top = np.minimum.reduceat(y, starts)
    left = np.minimum.reduceat(np.where(y == top[polygon_of_point], x, np.inf), starts)
    return np.column_stack([top, left]).astype(np.int64)


_EDGES = ("top", "bottom", "left", "right")


@dataclass
class _Block:
    """One block's pieces and its components, labelled 1..n (index 0 of the arrays is unused)."""

    pieces: np.ndarray  # 4-connected polygons, pixel coordinates of the whole raster
    first: np.ndarray  # raster index (row * width + col) of each piece's first pixel
    piece_label: np.ndarray  # the component each piece belongs to
    counts: np.ndarray  # foreground pixels per component
    sums: np.ndarray  # stored values summed per component (zeros for masks: not needed)
    edges: dict[str, np.ndarray]  # component labels along the block's edges (_EDGES)

    @property
    def n(self) -> int:
        return len(self.counts) - 1


def _labelled_block(
    foreground: np.ndarray, values: np.ndarray, coding: _Coding, connectivity: int, origin: tuple[int, int],
    width: int,
) -> _Block:
    """Components by connected-component labelling: needed for scores and for 8-connectivity.

    Each 4-connected polygon lies within one label (different labels are never 4-adjacent),
    the one at its first pixel.
    """
    from scipy import ndimage  # ~0.4 s to import; masks with 4-connectivity never need it

    row0, col0 = origin
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    labels, n = ndimage.label(foreground, structure=structure)
    # Background and nodata fall into bin 0, which is never used.
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    sums: np.ndarray
    if coding.is_mask:
        sums = np.zeros(n + 1)
    else:
        sums = np.bincount(labels.ravel(), weights=values.ravel(), minlength=n + 1)
    edges = dict(zip(_EDGES, (labels[0, :], labels[-1, :], labels[:, 0], labels[:, -1]), strict=True))
    found = _polygonise(foreground, col0, row0)
    rows, cols = found.first[:, 0], found.first[:, 1]
    piece_label = labels[rows - row0, cols - col0]
    return _Block(found.polygons, rows * width + cols, piece_label, counts, sums, edges)


def _mask_block(foreground: np.ndarray, origin: tuple[int, int], width: int) -> _Block:
    """Components of a mask with 4-connectivity: the polygons themselves, no labelling.

    A polygon's pixel count is its area in pixel units (exact: integer vertices), its score is
    1, and the pixels it covers along each block edge are read off its boundary segments that
    lie on that edge.
    """
    row0, col0 = origin
    found = _polygonise(foreground, col0, row0)
    n = len(found.polygons)
    counts = np.r_[0, np.rint(shapely.area(found.polygons))].astype(np.int64)
    rows, cols = found.first[:, 0], found.first[:, 1]
    h, w = foreground.shape
    edges = _edge_labels(found, (row0, row0 + h, col0, col0 + w))
    return _Block(found.polygons, rows * width + cols, np.arange(1, n + 1), counts, np.zeros(n + 1), edges)


def _edge_labels(found: _Polygonised, bounds: tuple[int, int, int, int]) -> dict[str, np.ndarray]:
    """Which polygon (1-based) covers each pixel along the block's four edges (0: none).

    A foreground pixel on an edge has its outer side on the polygon's exterior ring, and those
    boundary segments cover exactly the polygon's edge pixels (a hole never reaches the block
    edge). Edge pixels of different polygons never overlap, so a difference array filled with
    +label at each run's start and -label at its end sums to the labels.
    """
    row0, row1, col0, col1 = bounds
    x, y = found.xy[:, 0], found.xy[:, 1]
    same_ring = found.ring_of_point[1:] == found.ring_of_point[:-1]
    label = found.polygon_of_point[:-1] + 1
    lines = {}
    for name, along, across, at, start, size in (
        ("top", x, y, row0, col0, col1 - col0), ("bottom", x, y, row1, col0, col1 - col0),
        ("left", y, x, col0, row0, row1 - row0), ("right", y, x, col1, row0, row1 - row0),
    ):
        on_edge = same_ring & (across[1:] == at) & (across[:-1] == at)
        a, b = along[:-1][on_edge] - start, along[1:][on_edge] - start
        delta = np.zeros(size + 1, dtype=np.int64)
        np.add.at(delta, np.minimum(a, b).astype(np.intp), label[on_edge])
        np.add.at(delta, np.maximum(a, b).astype(np.intp), -label[on_edge])
        lines[name] = np.cumsum(delta[:-1])
    return lines


def _group_by_label(piece_label: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pieces ordered by label: the order, each group's label, and its [start, end) in the order."""
    order = np.argsort(piece_label, kind="stable")
    labels, starts = np.unique(piece_label[order], return_index=True)
    ends = np.append(starts[1:], len(order)) if len(order) else starts
    return order, labels, starts, ends


def _complete_components(block: _Block, inside: np.ndarray) -> _Components:
    """The block's components that do not reach a seam (`inside` selects their pieces).

    With 4-connectivity a label is exactly one polygon. With 8-connectivity it may be several
    4-connected polygons; they touch only at corners (pieces sharing an edge would be one
    polygon), so they already are the dissolved parts and become a MultiPolygon as they are:
    the overlay union `_canonical` does for pieces cut by seams returns the same polygons here
    (checked on 35,000 such groups) at about 40 times the cost. Ring start and orientation are
    normalised later, in one call.
    """
    pieces, first = block.pieces[inside], block.first[inside]
    order, labels, starts, ends = _group_by_label(block.piece_label[inside])
    geoms = pieces[order[starts]]
    multi = np.flatnonzero(ends - starts > 1)
    if multi.size:
        members = np.concatenate([order[starts[k]:ends[k]] for k in multi])
        group = np.repeat(np.arange(multi.size), ends[multi] - starts[multi])
        geoms[multi] = shapely.multipolygons(pieces[members], indices=group)
    first = np.minimum.reduceat(first[order], starts) if len(order) else first
    return _Components(geoms, block.counts[labels], block.sums[labels], first)


def _components(
    read: BlockReader, shape: tuple[int, int], options: VectorizeOptions, coding: _Coding, progress: bool
) -> Iterator[_Components]:
    """Every connected foreground component of the raster, each exactly once, in chunks.

    Blocks are read block row by block row, top to bottom (what a RowFeed relies on)."""
    (height, width), size = shape, options.block_size
    labelling = not (coding.is_mask and options.connectivity == 4)
    uf = _UnionFind()
    pending: dict[int, _Part] = {}
    next_gid = 1
    prev_bottom = np.zeros(width, dtype=np.int64)  # gids along the bottom seam of the row above
    n_rows, n_cols = math.ceil(height / size), math.ceil(width / size)
    bar = tqdm(total=n_rows * n_cols, disable=not progress, file=sys.stderr, desc="vectorise", unit="block")
    for bi in range(n_rows):
        row0, row1 = bi * size, min((bi + 1) * size, height)
        cur_bottom = np.zeros(width, dtype=np.int64)
        prev_right = np.zeros(row1 - row0, dtype=np.int64)
        for bj in range(n_cols):
            col0, col1 = bj * size, min((bj + 1) * size, width)
            window = Window(col0, row0, col1 - col0, row1 - row0)
            foreground, _, values = read(window)
            bar.update(1)
            if not foreground.any():
                prev_right[:] = 0
                continue
            if labelling:
                block = _labelled_block(foreground, values, coding, options.connectivity, (row0, col0), width)
            else:
                block = _mask_block(foreground, (row0, col0), width)
            del foreground, values

            seams = {"top": row0 > 0, "bottom": row1 < height, "left": col0 > 0, "right": col1 < width}
            edges = {name: line if seams[name] else None for name, line in block.edges.items()}
            on_seam = np.zeros(block.n + 1, dtype=bool)
            for line in edges.values():
                if line is not None:
                    on_seam[line] = True
            on_seam[0] = False
            on_bottom = np.zeros(block.n + 1, dtype=bool)
            if edges["bottom"] is not None:
                on_bottom[edges["bottom"]] = True

            gid_of = np.zeros(block.n + 1, dtype=np.int64)
            seam_labels = np.flatnonzero(on_seam)
            gid_of[seam_labels] = np.arange(next_gid, next_gid + seam_labels.size)
            next_gid += seam_labels.size

            inside = ~on_seam[block.piece_label]
            yield _complete_components(block, inside)
            order, seam_groups, starts, ends = _group_by_label(block.piece_label[~inside])
            seam_pieces, seam_first = block.pieces[~inside][order], block.first[~inside][order]
            for label, begin, end in zip(seam_groups, starts, ends, strict=True):
                gid = int(gid_of[label])
                uf.add(gid)
                pending[gid] = _Part(list(seam_pieces[begin:end]), int(block.counts[label]),
                                     float(block.sums[label]), int(seam_first[begin:end].min()), bi,
                                     bool(on_bottom[label]))

            if edges["top"] is not None:
                for lab, gid in _seam_pairs(edges["top"], prev_bottom, col0, options.connectivity):
                    uf.union(int(gid_of[lab]), int(gid))
            if edges["left"] is not None:
                for lab, gid in _seam_pairs(edges["left"], prev_right, 0, options.connectivity):
                    uf.union(int(gid_of[lab]), int(gid))
            if edges["bottom"] is not None:
                cur_bottom[col0:col1] = gid_of[edges["bottom"]]
            if edges["right"] is not None:
                prev_right = gid_of[edges["right"]]
        prev_bottom = cur_bottom
        yield _flush_complete(pending, uf, bi, options.connectivity)
    bar.close()


def _flush_complete(pending: dict[int, _Part], uf: _UnionFind, block_row: int, connectivity: int) -> _Components:
    """Emit pending groups that the next block row cannot extend; keep the others."""
    groups: dict[int, list[int]] = {}
    for gid in pending:
        groups.setdefault(uf.find(gid), []).append(gid)
    done: list[list[_Part]] = []
    for members in groups.values():
        if any(pending[g].block_row == block_row and pending[g].touches_bottom for g in members):
            continue
        done.append([pending.pop(g) for g in members])
        uf.remove(members)
    geoms = np.empty(len(done), dtype=object)
    geoms[:] = [_canonical([geom for part in parts for geom in part.geoms], connectivity) for parts in done]
    return _Components(
        geoms,
        np.array([sum(p.pixel_count for p in parts) for parts in done], dtype=np.int64),
        np.array([math.fsum(p.value_sum for p in parts) for parts in done], dtype=np.float64),
        np.array([min(p.first for p in parts) for parts in done], dtype=np.int64),
    )


# --------------------------------------------------------------------------------------------
# Post-processing


def _fill_holes(comps: _Components, limit_m2: float, transform: Affine, crs) -> _Components:
    """Fill holes smaller than limit_m2; absorb components lying inside a filled hole."""
    geoms = comps.geoms.copy()
    parts, owner_of_part = shapely.get_parts(geoms, return_index=True)
    filled_holes: list[tuple[int, shapely.Geometry]] = []
    for i in np.unique(owner_of_part[shapely.get_num_interior_rings(parts) > 0]):
        new_polys = []
        for poly in shapely.get_parts(geoms[i]):
            holes = [shapely.Polygon(ring) for ring in poly.interiors]
            if not holes:
                new_polys.append(poly)
                continue
            if math.isinf(limit_m2):
                fill = np.ones(len(holes), dtype=bool)
            else:
                area, _ = polygon_metrics(_to_world(np.array(holes), transform), crs)
                fill = area < limit_m2
            keep = [poly.interiors[k] for k in range(len(holes)) if not fill[k]]
            filled_holes.extend((int(i), holes[k]) for k in range(len(holes)) if fill[k])
            new_polys.append(shapely.Polygon(poly.exterior, keep))
        geoms[i] = shapely.union_all(new_polys)
    comps = _Components(geoms, comps.pixel_count.copy(), comps.value_sum.copy(), comps.first)
    if not filled_holes:
        return comps

    tree = shapely.STRtree(geoms)
    container_of: dict[int, int] = {}
    container_area = shapely.area(geoms)
    for owner, hole in filled_holes:
        for j in tree.query(hole, predicate="contains"):
            j = int(j)
            best = container_of.get(j)
            if best is None or container_area[owner] > container_area[best]:
                container_of[j] = owner
    for island, owner in container_of.items():
        comps.pixel_count[owner] += comps.pixel_count[island]
        comps.value_sum[owner] += comps.value_sum[island]
    return comps.take(np.setdiff1d(np.arange(len(comps)), list(container_of)))


def _simplify(geoms: np.ndarray, tolerance: float) -> np.ndarray:
    """Topology-preserving simplification; None where nothing polygonal is left.

    Rings are normalised first so that the result does not depend on where a ring starts (which
    differs between a component polygonised in one piece and one dissolved across seams).
    Polygonised and dissolved geometries are valid by construction; only simplified ones that
    are not valid polygons are repaired, one by one.
    """
    simplified = shapely.coverage_simplify(shapely.normalize(geoms), tolerance)
    fine = (shapely.is_valid(simplified) & ~shapely.is_empty(simplified)
            & np.isin(shapely.get_type_id(simplified), (3, 6)))
    for i in np.flatnonzero(~fine):
        simplified[i] = _polygonal(simplified[i])
    return simplified


def _unit_factor(crs) -> float:
    """Metres per CRS unit along the first axis (1.0 when unknown)."""
    axis = ProjCRS.from_user_input(crs).axis_info
    factor = axis[0].unit_conversion_factor if axis else None
    return float(factor) if factor else 1.0


def polygon_metrics(geoms: gpd.GeoSeries | Iterable[shapely.Geometry], crs) -> tuple[np.ndarray, np.ndarray]:
    """Area (m2) and perimeter (m) of each polygon.

    Geographic CRS: geodesic on the CRS's own ellipsoid (pyproj.Geod; WGS84 when it has none).
    Projected CRS: planar, scaled by the CRS's linear unit (e.g. US survey feet -> m); note that
    planar area in a non-equal-area projection (Web Mercator) carries its scale distortion.
    No CRS: pixel/CRS units as they are. The perimeter is the length of the whole boundary,
    holes included.
    """
    geoms = np.asarray(list(geoms), dtype=object)
    if geoms.size == 0:
        return np.zeros(0), np.zeros(0)
    if crs is None:
        return shapely.area(geoms).astype(float), shapely.length(geoms).astype(float)
    crs = ProjCRS.from_user_input(crs)
    if not crs.is_geographic:
        k = _unit_factor(crs)
        return shapely.area(geoms) * k * k, shapely.length(geoms) * k
    geod = crs.get_geod() or ProjCRS.from_epsg(4326).get_geod()
    assert geod is not None  # EPSG:4326 has an ellipsoid
    # One polygon_area_perimeter call per ring rather than pyproj's Geod.geometry_area_perimeter:
    # that one's perimeter leaves the holes out and it adds hole areas with their ring's sign
    # (orientation-dependent); with geometry_length(boundary) for the perimeter it is 1.1-1.6x
    # slower (benchmarks/bench_geodesic_metrics.py). tests/test_vectorize.py checks both agree.
    area = np.zeros(geoms.size)
    perimeter = np.zeros(geoms.size)
    for i, geom in enumerate(geoms):
        for poly in shapely.get_parts(geom):
            for k, ring in enumerate([poly.exterior, *poly.interiors]):
                lon, lat = ring.xy
                a, p = geod.polygon_area_perimeter(lon, lat)
                area[i] += abs(a) if k == 0 else -abs(a)
                perimeter[i] += p
    return area, perimeter


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
        coding = _coding_of(src)
        read = partial(_read_block, src, coding=coding, threshold=options.threshold)
        comps = _Components.concat(list(_components(read, src.shape, options, coding, progress)))
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
    coding = _Coding(False, scale, 0.0)
    read = _feed_reader(feed, coding, nodata, options.threshold)
    try:
        comps = _Components.concat(list(_components(read, (feed.height, feed.width), options, coding, False)))
    except BaseException:
        feed.end(abandoned=True)  # the writer must not wait on a reader that is gone
        raise
    return _frame(comps, coding, transform, crs, options)


def _frame(comps: _Components, coding: _Coding, transform: Affine, crs, options: VectorizeOptions) -> gpd.GeoDataFrame:
    """The components as the result's rows: sorted, holes filled, filtered, simplified, in map
    coordinates with their measures."""
    comps = comps.take(np.argsort(comps.first, kind="stable"))
    if options.hole_area_limit_m2 > 0:
        comps = _fill_holes(comps, options.hole_area_limit_m2, transform, crs)
    comps = comps.take(np.flatnonzero(comps.pixel_count >= options.min_area_px))
    geoms = _simplify(comps.geoms, options.simplify) if options.simplify > 0 else comps.geoms
    kept = np.flatnonzero(shapely.is_geometry(geoms))
    if kept.size == 0:
        return _empty_frame(crs)
    comps, geoms = comps.take(kept), geoms[kept]
    # One normal form per component whatever the block layout: ring start, orientation, hole order.
    world = shapely.normalize(_to_world(geoms, transform))
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
            coding = _coding_of(src)
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
                        foreground, valid, _ = _read_block(src, window, coding, threshold)
                        out = np.where(valid, foreground.astype(np.uint8), np.uint8(255))
                        dst.write(out, 1, window=window)
        if cog:
            rasterio.shutil.copy(tmp, destination, driver="COG", compress="DEFLATE", overview_resampling="nearest")
    finally:
        if cog and tmp.exists():
            tmp.unlink()
    return destination
