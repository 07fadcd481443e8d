"""What a pixel of a probability raster or mask means: its coding (scale, offset, or a plain
mask), and the foreground, validity and values of a block read from a file or from a row feed."""


from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window

from geoseg.errors import InputError
from geoseg.vectorize.rowfeed import RowFeed

# p >= threshold - THRESHOLD_EPS is foreground, so that 127/254 counts as 0.5 whatever the
# rounding of the stored scale factor.
THRESHOLD_EPS = 1e-9



@dataclass(frozen=True)
class Coding:
    """How stored values map to probabilities for one file."""

    is_mask: bool
    scale: float
    offset: float

    def mean_probability(self, value_sum: np.ndarray, count: np.ndarray) -> np.ndarray:
        """Mean probability of each component from the sum of its stored values."""
        if self.is_mask:
            return np.ones(len(count))
        return (value_sum * self.scale + count * self.offset) / count


def coding_of(src: rasterio.DatasetReader) -> Coding:
    dtype = np.dtype(src.dtypes[0])
    scale = float(src.scales[0]) if src.scales and src.scales[0] is not None else 1.0
    offset = float(src.offsets[0]) if src.offsets and src.offsets[0] is not None else 0.0
    tagged = scale != 1.0 or offset != 0.0
    if dtype.kind in "ui" and not tagged:
        return Coding(True, 1.0, 0.0)
    if dtype.kind not in "uif":
        raise InputError(f"{src.name}: band type {dtype} is not a probability raster or a mask")
    return Coding(False, scale, offset)


BlockReader = Callable[[Window], tuple[np.ndarray, np.ndarray, np.ndarray]]


def read_block(
    src: rasterio.DatasetReader, window: Window, coding: Coding, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Foreground, validity (both bool) and the stored values (summed for scores) of a window."""
    values = src.read(1, window=window)
    valid = src.read_masks(1, window=window) > 0
    if values.dtype.kind == "f":
        valid &= ~np.isnan(values)
    return _foreground(values, valid, coding, threshold), valid, values


def feed_reader(feed: RowFeed, coding: Coding, nodata: int, threshold: float) -> BlockReader:
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


def _foreground(values: np.ndarray, valid: np.ndarray, coding: Coding, threshold: float) -> np.ndarray:
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
