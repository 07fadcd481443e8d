"""Connected components block by block, joined across block seams (see geoseg.vectorize).

All work is in pixel coordinates (integers, exact in float64) and per-block arrays; a component
that reaches an interior block edge is pending until the block row below has been read."""


from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from typing import cast

import numpy as np
import shapely
from affine import Affine
from rasterio.features import shapes
from rasterio.windows import Window
from shapely.geometry.base import BaseGeometry
from tqdm import tqdm

from geoseg.vectorize.options import VectorizeOptions
from geoseg.vectorize.pixels import BlockReader, Coding


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


def to_world(geoms: np.ndarray, transform: Affine) -> np.ndarray:
    a, b, c, d, e, f = transform[:6]

    def apply(xy: np.ndarray) -> np.ndarray:
        x, y = xy[:, 0], xy[:, 1]
        return np.column_stack([a * x + b * y + c, d * x + e * y + f])

    return shapely.transform(geoms, apply)


def polygonal(geom: BaseGeometry) -> BaseGeometry | None:
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
class Components:
    """Connected components as parallel arrays, one row per component."""

    geoms: np.ndarray  # object: (Multi)Polygon with its final vertices, pixel coordinates
    pixel_count: np.ndarray  # int64: foreground pixels
    value_sum: np.ndarray  # float64: stored values summed over them (unused for masks)
    first: np.ndarray  # int64: raster index (row * width + col) of the first pixel in raster order

    def __len__(self) -> int:
        return len(self.geoms)

    def take(self, index: np.ndarray) -> Components:
        return Components(self.geoms[index], self.pixel_count[index], self.value_sum[index], self.first[index])

    @staticmethod
    def concat(chunks: list[Components]) -> Components:
        if not chunks:  # a raster without rows
            return Components(np.empty(0, dtype=object), np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64))
        return Components(
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
    foreground: np.ndarray, values: np.ndarray, coding: Coding, connectivity: int, origin: tuple[int, int],
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


def _complete_components(block: _Block, inside: np.ndarray) -> Components:
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
    return Components(geoms, block.counts[labels], block.sums[labels], first)


def components(
    read: BlockReader, shape: tuple[int, int], options: VectorizeOptions, coding: Coding, progress: bool
) -> Iterator[Components]:
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


def _flush_complete(pending: dict[int, _Part], uf: _UnionFind, block_row: int, connectivity: int) -> Components:
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
    return Components(
        geoms,
        np.array([sum(p.pixel_count for p in parts) for parts in done], dtype=np.int64),
        np.array([math.fsum(p.value_sum for p in parts) for parts in done], dtype=np.float64),
        np.array([min(p.first for p in parts) for parts in done], dtype=np.int64),
    )
