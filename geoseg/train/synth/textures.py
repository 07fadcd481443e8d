"""Cheap noise fields for textures: smooth value noise built with two small matrix products."""

from __future__ import annotations

import numpy as np


def _interp_weights(n: int, cell: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """Lattice index and smoothstep weight of each of n pixels, and the lattice length."""
    pos = (np.arange(n, dtype=np.float32) + 0.5) / np.float32(cell) + np.float32(rng.random())
    i0 = pos.astype(np.int64)
    f = pos - i0
    f = f * f * (3 - 2 * f)  # smoothstep: no visible lattice creases
    return i0, f.astype(np.float32), int(i0[-1]) + 2


def value_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth noise with unit variance per pixel and features about `cell` pixels wide.

    Separable interpolation of a random lattice: rows first, then columns (O(h * w)).
    """
    if cell <= 1.0:
        return rng.standard_normal((h, w), dtype=np.float32)
    iy, fy, gh = _interp_weights(h, cell, rng)
    ix, fx, gw = _interp_weights(w, cell, rng)
    lattice = rng.standard_normal((gh, gw), dtype=np.float32)
    rows = lattice[iy] * (1 - fy)[:, None] + lattice[iy + 1] * fy[:, None]
    out = rows[:, ix] * (1 - fx)[None, :] + rows[:, ix + 1] * fx[None, :]
    # interpolation shrinks the variance unevenly; divide it back out so it is 1 everywhere
    out /= np.outer(np.sqrt((1 - fy) ** 2 + fy**2), np.sqrt((1 - fx) ** 2 + fx**2))
    return out
