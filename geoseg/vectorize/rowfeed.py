"""Rows of a raster handed over, in order, from the thread that makes them to one that reads them.

The tile engine's blender finishes each probability raster row band by row band, top to bottom;
the vectoriser reads a raster in block rows, top to bottom. A RowFeed carries the finished rows
across in memory, so a scene's polygons are built while its lower tiles are still predicted
instead of after the last one, from the file.

Memory stays bounded: the writer waits while `max_rows` rows are buffered and the reader is not
short of rows, and the reader lets go of the rows above the block row it asks for.
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np


class FeedAbandoned(Exception):
    """The writer gave up on the feed (its rows come from elsewhere, or the run failed)."""


class RowFeed:
    """A bounded, in-order hand-over of a height x width raster's rows between two threads."""

    def __init__(self, height: int, width: int, max_rows: int) -> None:
        self.height, self.width, self.max_rows = height, width, max_rows
        self._strips: deque[np.ndarray] = deque()  # received and not yet released, in order
        self._top = 0  # raster row of the first buffered row
        self._received = 0  # rows received in all (the next put starts here)
        self._wanted = 0  # the row the reader is waiting to reach (0: not waiting)
        self._ended = self._abandoned = False
        self._cond = threading.Condition()

    # ---------------------------------------------------------------- writer's side

    def put(self, y0: int, rows: np.ndarray) -> None:
        """Hand over rows y0 .. y0 + len(rows) (copied); they must follow the rows before."""
        with self._cond:
            if self._ended:
                return
            if y0 != self._received or rows.shape[1:] != (self.width,):
                raise ValueError(f"rows from {y0} do not follow the {self._received} rows handed over")
            self._cond.wait_for(lambda: self._ended or self._received - self._top < self.max_rows
                                or self._received < self._wanted)
            if not self._ended:
                self._strips.append(rows.copy())
                self._received += len(rows)
                self._cond.notify_all()

    def end(self, *, abandoned: bool = False) -> None:
        """No more rows. `abandoned`: the reader is to stop (FeedAbandoned) and read them elsewhere.
        Only the first call counts."""
        with self._cond:
            if not self._ended:
                self._ended, self._abandoned = True, abandoned
                self._cond.notify_all()

    # ---------------------------------------------------------------- reader's side

    def rows(self, row0: int, row1: int) -> np.ndarray:
        """Rows row0 .. row1, waiting for them; rows above row0 are let go (never asked again)."""
        with self._cond:
            while self._strips and self._top + len(self._strips[0]) <= row0:
                self._top += len(self._strips.popleft())
            self._wanted = row1
            self._cond.notify_all()  # a writer held back by max_rows may go on
            self._cond.wait_for(lambda: self._ended or self._received >= row1)
            self._wanted = 0
            if self._abandoned:
                raise FeedAbandoned
            if self._received < row1:
                raise RuntimeError(f"the rows ended at {self._received} of {self.height}")
            needed, end = [], self._top
            for strip in self._strips:  # only the strips that hold rows before row1
                if end >= row1:
                    break
                needed.append(strip)
                end += len(strip)
            return np.concatenate(needed)[row0 - self._top: row1 - self._top]
