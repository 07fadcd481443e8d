"""How a probability raster becomes polygons: the vectoriser's options, checked once."""

from __future__ import annotations

import math
from dataclasses import dataclass

from geoseg.errors import InputError


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
