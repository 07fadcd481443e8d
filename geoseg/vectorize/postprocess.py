"""After the components are found: holes filled, boundaries simplified, areas and perimeters
measured in metres."""


from __future__ import annotations

import math
from collections.abc import Iterable

import geopandas as gpd
import numpy as np
import shapely
from affine import Affine
from pyproj import CRS as ProjCRS

from geoseg.vectorize.seams import Components, polygonal, to_world


def fill_holes(comps: Components, limit_m2: float, transform: Affine, crs) -> Components:
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
                area, _ = polygon_metrics(to_world(np.array(holes), transform), crs)
                fill = area < limit_m2
            keep = [poly.interiors[k] for k in range(len(holes)) if not fill[k]]
            filled_holes.extend((int(i), holes[k]) for k in range(len(holes)) if fill[k])
            new_polys.append(shapely.Polygon(poly.exterior, keep))
        geoms[i] = shapely.union_all(new_polys)
    comps = Components(geoms, comps.pixel_count.copy(), comps.value_sum.copy(), comps.first)
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


def simplify(geoms: np.ndarray, tolerance: float) -> np.ndarray:
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
        simplified[i] = polygonal(simplified[i])
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
