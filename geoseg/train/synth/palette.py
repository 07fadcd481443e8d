"""Surface colours as display values in [0, 1]: red, green, blue, near-infrared.

Values are "stretched display" brightness rather than physical reflectance, chosen so an 8-bit
image looks like an ordinary orthophoto; NIR follows the usual pattern (vegetation bright,
water dark). Vegetation changes with the season, built surfaces do not.
"""

from __future__ import annotations

import numpy as np

SEASONS = ("spring", "summer", "autumn", "winter")

ROOFS = {
    "red": [(0.62, 0.24, 0.17, 0.42), (0.72, 0.38, 0.25, 0.48)],  # red tiles, terracotta
    "grey": [(0.56, 0.56, 0.56, 0.40), (0.62, 0.61, 0.58, 0.45)],
    "dark_grey": [(0.27, 0.27, 0.29, 0.22), (0.33, 0.31, 0.31, 0.25)],
    "brown": [(0.44, 0.31, 0.23, 0.36), (0.50, 0.38, 0.28, 0.40)],
    "white": [(0.86, 0.86, 0.84, 0.72), (0.80, 0.81, 0.80, 0.66)],
    "green": [(0.30, 0.45, 0.38, 0.30), (0.35, 0.50, 0.42, 0.33)],
    "blue": [(0.30, 0.40, 0.56, 0.30), (0.36, 0.46, 0.60, 0.33)],
}
RUBBLE = (0.55, 0.51, 0.46, 0.42)
HOLE = (0.12, 0.11, 0.10, 0.10)
ROAD = {"paved": (0.34, 0.34, 0.35, 0.28), "dirt": (0.58, 0.49, 0.37, 0.42)}
WATER = {"river": (0.13, 0.22, 0.23, 0.04), "lake": (0.08, 0.16, 0.22, 0.03), "flood": (0.27, 0.26, 0.19, 0.07)}
WATER_SHALLOW = (0.24, 0.30, 0.26, 0.08)
BARE = {"soil": (0.56, 0.47, 0.36, 0.42), "sand": (0.76, 0.69, 0.53, 0.56), "gravel": (0.62, 0.60, 0.56, 0.48),
        "demolition": (0.60, 0.56, 0.50, 0.45), "construction": (0.62, 0.54, 0.43, 0.45)}
SHADOW = (0.46, 0.49, 0.60, 0.40)  # multiplicative: shadows are darker and bluer (skylight)
HAZE = (0.70, 0.74, 0.80, 0.55)

_VEG = {
    "spring": {
        "grass": [(0.35, 0.47, 0.22, 0.62), (0.42, 0.50, 0.26, 0.56)],
        "tree": [(0.20, 0.34, 0.14, 0.60), (0.28, 0.38, 0.16, 0.58)],
        "crop": {"wheat": (0.36, 0.50, 0.22, 0.62), "maize": (0.48, 0.40, 0.30, 0.30), "meadow": (0.38, 0.52, 0.24, 0.62),
                 "ploughed": (0.44, 0.35, 0.27, 0.27), "rapeseed": (0.86, 0.80, 0.22, 0.58)},
    },
    "summer": {
        "grass": [(0.33, 0.42, 0.22, 0.60), (0.43, 0.46, 0.27, 0.52)],
        "tree": [(0.14, 0.25, 0.11, 0.55), (0.19, 0.29, 0.13, 0.52)],
        "crop": {"wheat": (0.74, 0.65, 0.40, 0.45), "maize": (0.27, 0.42, 0.17, 0.66), "meadow": (0.42, 0.52, 0.26, 0.60),
                 "ploughed": (0.46, 0.37, 0.28, 0.28), "rapeseed": (0.50, 0.52, 0.24, 0.55)},
    },
    "autumn": {
        "grass": [(0.45, 0.45, 0.28, 0.45), (0.52, 0.47, 0.32, 0.40)],
        "tree": [(0.40, 0.30, 0.13, 0.42), (0.28, 0.30, 0.14, 0.45)],
        "crop": {"wheat": (0.70, 0.63, 0.46, 0.40), "maize": (0.58, 0.50, 0.33, 0.38), "meadow": (0.47, 0.50, 0.30, 0.48),
                 "ploughed": (0.40, 0.31, 0.24, 0.24), "rapeseed": (0.42, 0.50, 0.25, 0.52)},
    },
    "winter": {
        "grass": [(0.46, 0.45, 0.37, 0.33), (0.52, 0.50, 0.42, 0.30)],
        "tree": [(0.30, 0.27, 0.22, 0.30), (0.20, 0.24, 0.18, 0.32)],
        "crop": {"wheat": (0.42, 0.46, 0.33, 0.40), "maize": (0.50, 0.44, 0.34, 0.30), "meadow": (0.48, 0.48, 0.38, 0.32),
                 "ploughed": (0.38, 0.30, 0.24, 0.22), "rapeseed": (0.36, 0.44, 0.28, 0.42)},
    },
}


def vegetation(season: str) -> dict:
    if season not in _VEG:
        raise ValueError(f"unknown season {season!r}; use one of {', '.join(SEASONS)}")
    return _VEG[season]


def mix(a, b, t: float) -> np.ndarray:
    return (1 - t) * np.asarray(a, dtype=np.float32) + t * np.asarray(b, dtype=np.float32)
