"""geoseg's geodesic area_m2 / perimeter_m (vectorize.polygon_metrics: one Geod.polygon_area_perimeter
call per ring) against pyproj's whole-geometry helpers, on polygons in EPSG:4326 (a third with a
hole, a tenth with a second part). Best of 5 runs each.

    .venv/bin/python benchmarks/bench_geodesic_metrics.py --polygons 3000

- `geometry_area_perimeter`: same areas, but its perimeter is the exteriors' only (perimeter_m
  includes the holes' boundaries) and it adds hole areas with their ring's sign, so the polygons
  must be oriented first (shapely.orient_polygons).
- `+ geometry_length(boundary)`: the areas from the above and the full boundary's length; the
  same numbers as polygon_metrics.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import shapely
from pyproj import CRS

from geoseg.vectorize import polygon_metrics


def polygons(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x, y, s = rng.uniform(-170, 170), rng.uniform(-70, 70), rng.uniform(1e-4, 1e-2)
        poly = shapely.Point(x, y).buffer(s, quad_segs=int(rng.integers(2, 16)))
        if i % 3 == 0:
            poly = poly.difference(shapely.Point(x, y).buffer(s / 3, quad_segs=4))
        if i % 10 == 0:
            poly = shapely.MultiPolygon([poly, shapely.box(x + 2 * s, y, x + 3 * s, y + s)])
        out.append(poly)
    return shapely.normalize(np.array(out, dtype=object))  # as vectorize writes them


def best(f: Callable[[], tuple[np.ndarray, np.ndarray]], runs: int = 5) -> tuple[float, tuple]:
    times, result = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = f()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polygons", type=int, default=3000)
    n = parser.parse_args().polygons
    geoms = polygons(n)
    geod = CRS.from_epsg(4326).get_geod()

    def area_perimeter():
        out = np.array([geod.geometry_area_perimeter(g) for g in shapely.orient_polygons(geoms)])
        return out[:, 0], out[:, 1]

    def area_perimeter_and_boundary():
        area = np.array([geod.geometry_area_perimeter(g)[0] for g in shapely.orient_polygons(geoms)])
        return area, np.array([geod.geometry_length(b) for b in shapely.boundary(geoms)])

    t0, (area, perimeter) = best(lambda: polygon_metrics(geoms, "EPSG:4326"))
    print(f"{n} polygons; best of 5")
    print(f"  polygon_metrics (per ring)                    {t0 * 1e3:7.1f} ms")
    for name, f in (("geometry_area_perimeter", area_perimeter),
                    ("  + geometry_length(boundary)", area_perimeter_and_boundary)):
        t, (a, p) = best(f)
        print(f"  {name:<45} {t * 1e3:7.1f} ms  ({t / t0:.2f}x); max relative difference: "
              f"area {np.max(np.abs(a - area) / area):.1e}, perimeter {np.max(np.abs(p - perimeter) / perimeter):.1e}")


if __name__ == "__main__":
    main()
