"""Blend overlapping tile probabilities into probability rasters on disk, in bounded memory.

Each tile's probabilities are weighted by a window that is 1 in its interior and falls off with a
raised cosine (Hann) across the overlap on sides that have a neighbour; sides on the scene edge
keep full weight, so edges are neither darkened nor skipped. The blender holds one float32 band of
`tile_size` rows across the scene width (per query) plus its weight sum: when the plan moves to the
next tile row, rows no later tile can touch are final, get divided by their weight and written.
Memory is O(queries x tile_size x width), never a full-scene canvas. The rows written can also go
to a RowFeed each, for polygons built while the rows below are still predicted.

Probabilities are stored as uint8 with scale 1/254 (0..254 -> 0..1, 255 = nodata), a quarter of
float32 on disk, more precision than any threshold needs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window

from geoseg.io.raster import Grid
from geoseg.options import BLEND_MODES  # declared with the --blend option
from geoseg.run.tiling import Tile
from geoseg.vectorize.rowfeed import RowFeed

PROB_SCALE = 254
PROB_NODATA = 255


def blend_window(tile: Tile, overlap: int, mode: str = "cosine") -> np.ndarray:
    """Per-pixel weight of a tile (h x w float32, > 0 everywhere)."""
    h, w = tile.height, tile.width
    if mode == "average" or overlap == 0:
        return np.ones((h, w), np.float32)
    top, bottom, left, right = tile.borders
    if mode == "none":
        # Centre crop: each pixel belongs to the tile whose core holds it (half the overlap each).
        wy = _crop_1d(h, overlap, top, bottom)
        wx = _crop_1d(w, overlap, left, right)
    else:
        wy = _ramp_1d(h, overlap, top, bottom)
        wx = _ramp_1d(w, overlap, left, right)
    return np.outer(wy, wx).astype(np.float32)


def _ramp_1d(n: int, overlap: int, at_start_edge: bool, at_end_edge: bool) -> np.ndarray:
    weights = np.ones(n, np.float64)
    ramp_len = min(overlap, n // 2)
    # sin^2 ramp; a neighbour's mirrored ramp sums to 1 over a regular overlap. The floor keeps
    # every pixel covered even where a shifted edge tile overlaps more than `overlap`.
    t = (np.arange(ramp_len) + 0.5) / ramp_len
    ramp = np.maximum(np.sin(0.5 * np.pi * t) ** 2, 1e-3)
    if not at_start_edge:
        weights[:ramp_len] = ramp
    if not at_end_edge:
        weights[n - ramp_len :] = np.minimum(weights[n - ramp_len :], ramp[::-1])
    return weights


def _crop_1d(n: int, overlap: int, at_start_edge: bool, at_end_edge: bool) -> np.ndarray:
    weights = np.ones(n, np.float64)
    margin = overlap // 2
    if not at_start_edge:
        weights[:margin] = 1e-6
    if not at_end_edge and margin:
        weights[n - margin :] = 1e-6
    return weights


@dataclass
class BlenderState:
    """A RollingBlender between two rows of tiles: the rows above `y0` are on disk, `acc`/`wsum`
    hold the partial sums of the rows from `y0` down (Q x n x width, n x width)."""

    y0: int
    acc: np.ndarray
    wsum: np.ndarray


class RollingBlender:
    """Weighted accumulation of tile probabilities for Q outputs, flushed row band by row band."""

    def __init__(
        self, grid: Grid, paths: list[Path], tile_size: int, overlap: int, mode: str = "cosine", *,
        state: BlenderState | None = None,
        on_rows_flushed: Callable[[RollingBlender, Tile], None] | None = None,
        feeds: Sequence[RowFeed] | None = None,
    ):
        """`state` continues an interrupted run on the rasters it left at `paths` (see `snapshot`);
        `on_rows_flushed(blender, tile)` is called whenever rows were written before adding `tile`;
        `feeds` (one per path) also get every row written, as written, and their end on close."""
        if mode not in BLEND_MODES:
            raise ValueError(f"blend mode must be one of {BLEND_MODES}")
        self.grid, self.overlap, self.mode = grid, overlap, mode
        self.rows = min(tile_size, grid.height)
        self.acc = np.zeros((len(paths), self.rows, grid.width), np.float32)
        self.wsum = np.zeros((self.rows, grid.width), np.float32)
        self.y0 = 0  # scene row of the buffer's first row
        self.paths = [Path(p) for p in paths]
        self.on_rows_flushed = on_rows_flushed
        self.feeds = list(feeds or ())
        if state is None:
            self.outputs = [_open_probability_raster(p, grid) for p in self.paths]
        else:
            self._restore(state)

    def add(self, tile: Tile, probabilities: np.ndarray | None, valid: np.ndarray | None) -> None:
        """Add a tile (Q x h x w, or None for a skipped all-nodata tile) to the accumulators."""
        flushed = tile.y > self.y0
        self.advance_to(tile.y)
        if flushed and self.on_rows_flushed is not None:
            self.on_rows_flushed(self, tile)
        if probabilities is None:
            return
        weight = blend_window(tile, self.overlap, self.mode) * valid
        ys = slice(tile.y - self.y0, tile.y - self.y0 + tile.height)
        xs = slice(tile.x, tile.x + tile.width)
        self.acc[:, ys, xs] += probabilities * weight
        self.wsum[ys, xs] += weight

    def advance_to(self, y: int) -> None:
        """Rows above `y` can no longer receive tiles: write them and slide the buffer down."""
        if y <= self.y0:
            return
        done = min(y - self.y0, self.rows)
        self._flush(done)
        self.acc[:, :-done] = self.acc[:, done:].copy()
        self.acc[:, -done:] = 0
        self.wsum[:-done] = self.wsum[done:].copy()
        self.wsum[-done:] = 0
        self.y0 += done

    def snapshot(self) -> BlenderState:
        """Make every written row durable on disk and copy the rows still accumulating."""
        for dst in self.outputs:
            dst.close()  # GDAL writes its cached blocks; reopened for update below
        self.outputs = [rasterio.open(p, "r+") for p in self.paths]
        live = np.flatnonzero(self.wsum.any(axis=1))
        n = int(live[-1]) + 1 if live.size else 0
        return BlenderState(self.y0, self.acc[:, :n].copy(), self.wsum[:n].copy())

    def _restore(self, state: BlenderState) -> None:
        missing = [p for p in self.paths if not p.exists()]
        if missing:
            raise FileNotFoundError(f"{missing[0]}: the probability raster to resume is gone")
        n = state.wsum.shape[0]
        if state.acc.shape != (len(self.paths), n, self.grid.width) or n > self.rows:
            raise ValueError("the saved blender state does not fit this scene and tile plan")
        self.y0 = state.y0
        self.acc[:, :n], self.wsum[:n] = state.acc, state.wsum
        self.outputs = [rasterio.open(p, "r+") for p in self.paths]

    def close(self) -> None:
        """Flush what remains and close the rasters."""
        try:
            remaining = self.grid.height - self.y0
            if remaining > 0:
                self._flush(remaining)
                self.y0 = self.grid.height
        finally:
            for dst in self.outputs:
                dst.close()
            for feed in self.feeds:
                feed.end()

    def _flush(self, n: int) -> None:
        n = min(n, self.grid.height - self.y0)
        if n <= 0:
            return
        wsum = self.wsum[:n]
        covered = wsum > 0
        window = Window(0, self.y0, self.grid.width, n)
        for q, dst in enumerate(self.outputs):
            prob = np.divide(self.acc[q, :n], wsum, out=np.zeros_like(wsum), where=covered)
            codes = quantise(prob, covered)
            dst.write(codes, 1, window=window)
            if self.feeds:
                self.feeds[q].put(self.y0, codes)


def quantise(prob: np.ndarray, valid: np.ndarray) -> np.ndarray:
    out = np.rint(np.clip(prob, 0.0, 1.0) * PROB_SCALE).astype(np.uint8)
    out[~valid] = PROB_NODATA
    return out


def _open_probability_raster(path: Path, grid: Grid):
    dst = rasterio.open(
        path, "w", driver="GTiff", width=grid.width, height=grid.height, count=1, dtype="uint8",
        crs=grid.crs, transform=grid.transform, nodata=PROB_NODATA, tiled=True,
        blockxsize=256, blockysize=256, BIGTIFF="IF_SAFER",
    )
    dst.scales = (1.0 / PROB_SCALE,)
    dst.offsets = (0.0,)
    dst.update_tags(1, geoseg_encoding=f"probability = value / {PROB_SCALE}; {PROB_NODATA} = nodata")
    return dst
