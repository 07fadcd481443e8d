"""Tile plan over a scene at native resolution, and a threaded prefetching tile reader.

Tiles have the model's native size and are never resized. Along each axis, tiles step by
`tile_size - overlap`; the last tile is shifted inward so it ends on the scene edge (full size,
no distortion, a little more overlap); a scene smaller than a tile gives one tile that is padded
before inference and un-padded after. The plan is row-major, which lets the stitcher flush
finished rows and keep only a window of tile rows in memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from rasterio.windows import Window

from geoseg.errors import InputError
from geoseg.io.raster import Scene


@dataclass(frozen=True)
class Tile:
    """One tile: its place in the scene and which of its sides lie on the scene border."""

    index: int
    row: int  # tile row in the plan
    col: int
    y: int  # scene pixel offsets
    x: int
    height: int  # read size (== tile size unless the scene is smaller than a tile)
    width: int
    borders: tuple[bool, bool, bool, bool]  # top, bottom, left, right on the scene edge

    @property
    def window(self) -> Window:
        return Window(self.x, self.y, self.width, self.height)


@dataclass(frozen=True)
class TilePlan:
    scene_height: int
    scene_width: int
    tile_size: int
    overlap: int
    tiles: tuple[Tile, ...]

    @property
    def rows(self) -> int:
        return self.tiles[-1].row + 1 if self.tiles else 0

    def summary(self) -> dict:
        return {
            "tile_size": self.tile_size,
            "overlap": self.overlap,
            "tiles": len(self.tiles),
            "tile_rows": self.rows,
            "tile_cols": (self.tiles[-1].col + 1) if self.tiles else 0,
        }


def axis_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile offsets along one axis: regular steps, the last one flush with the edge."""
    if length <= tile:
        return [0]
    step = tile - overlap
    n = math.ceil((length - tile) / step) + 1
    starts = [min(i * step, length - tile) for i in range(n)]
    return sorted(set(starts))


def plan_tiles(height: int, width: int, tile_size: int, overlap: int) -> TilePlan:
    if tile_size < 16:
        raise InputError(f"--tile-size {tile_size} is too small; use at least 16 pixels")
    if not 0 <= overlap < tile_size // 2 + 1:
        raise InputError(
            f"--overlap {overlap} must be between 0 and half the tile size ({tile_size // 2})"
        )
    ys = axis_starts(height, tile_size, overlap)
    xs = axis_starts(width, tile_size, overlap)
    tiles: list[Tile] = []
    for r, y in enumerate(ys):
        h = min(tile_size, height)
        for c, x in enumerate(xs):
            w = min(tile_size, width)
            borders = (y == 0, y + h == height, x == 0, x + w == width)
            tiles.append(Tile(len(tiles), r, c, y, x, h, w, borders))
    return TilePlan(height, width, tile_size, overlap, tuple(tiles))


@dataclass
class TileData:
    tile: Tile
    arrays: list[np.ndarray]  # one normalised (bands x h x w) array per date
    valid: np.ndarray  # h x w bool

    @property
    def empty(self) -> bool:
        return not self.valid.any()


def read_tiles(scene: Scene, plan: TilePlan, *, workers: int = 2, prefetch: int = 8) -> Iterator[TileData]:
    """Read tiles in plan order, `prefetch` ahead, on `workers` threads (GDAL releases the GIL)."""
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="geoseg-read") as pool:
        pending = []
        tiles = iter(plan.tiles)
        for tile in tiles:
            pending.append(pool.submit(_read_one, scene, tile))
            if len(pending) >= prefetch:
                break
        while pending:
            data = pending.pop(0).result()
            nxt = next(tiles, None)
            if nxt is not None:
                pending.append(pool.submit(_read_one, scene, nxt))
            yield data


def _read_one(scene: Scene, tile: Tile) -> TileData:
    arrays, valid = scene.read_tile(tile.window)
    return TileData(tile, arrays, valid)


def pad_to(array: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad the last two axes up to `size` (tiles of scenes smaller than the model input)."""
    h, w = array.shape[-2:]
    if h == size and w == size:
        return array
    pad = [(0, 0)] * (array.ndim - 2) + [(0, size - h), (0, size - w)]
    return np.pad(array, pad)
