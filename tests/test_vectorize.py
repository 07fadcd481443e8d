"""Block-wise polygonisation: exact shapes, seams, scores, filters, metrics, memory."""

from __future__ import annotations

import gc
import shutil
import subprocess
import tracemalloc
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from pyproj import Geod
from rasterio.transform import from_origin
from scipy import ndimage
from shapely.geometry import box

from geoseg.errors import InputError
from geoseg.vectorize import (
    VectorizeOptions,
    polygon_metrics,
    vectorize_probabilities,
    write_mask,
)

ORIGIN = (500000.0, 4000000.0)  # UTM 18N, 0.5 m pixels unless a test says otherwise
RES = 0.5


def write_probabilities(path: Path, prob: np.ndarray, *, nodata_mask=None, crs="EPSG:32618",
                        transform=None) -> Path:
    """The pipeline's encoding: uint8 v = round(p * 254), 255 nodata, scale 1/254."""
    codes = np.round(np.clip(prob, 0, 1) * 254).astype(np.uint8)
    if nodata_mask is not None:
        codes[nodata_mask] = 255
    return write_raw(path, codes, nodata=255, scale=1 / 254, crs=crs, transform=transform)


def write_raw(path: Path, values: np.ndarray, *, nodata=None, scale=None, crs="EPSG:32618",
              transform=None) -> Path:
    transform = transform or from_origin(*ORIGIN, RES, RES)
    with rasterio.open(path, "w", driver="GTiff", width=values.shape[1], height=values.shape[0],
                       count=1, dtype=values.dtype, nodata=nodata, crs=crs, transform=transform) as dst:
        dst.write(values, 1)
        if scale is not None:
            dst.scales = (scale,)
            dst.offsets = (0.0,)
    return path


def world_box(col0, row0, col1, row1):
    """Pixel rectangle [col0, col1) x [row0, row1) in world coordinates."""
    x0, y0 = ORIGIN
    return box(x0 + col0 * RES, y0 - row1 * RES, x0 + col1 * RES, y0 - row0 * RES)


def run(path, **kw):
    return vectorize_probabilities(path, VectorizeOptions(**kw))


def same_result(a, b) -> bool:
    return (
        len(a) == len(b)
        and all(x.equals_exact(y, 0) for x, y in zip(a.geometry, b.geometry, strict=True))
        and np.array_equal(a["score"].to_numpy(), b["score"].to_numpy())
        and np.array_equal(a["pixel_count"].to_numpy(), b["pixel_count"].to_numpy())
    )


# ---------------------------------------------------------------------------------- shapes


def test_square_exact_polygon_area_perimeter_score(tmp_path):
    prob = np.zeros((12, 12))
    prob[3:7, 2:5] = 0.8  # 4 rows x 3 cols
    prob[3, 2] = 1.0
    out = run(write_probabilities(tmp_path / "p.tif", prob))
    assert len(out) == 1
    row = out.iloc[0]
    assert row.geometry.equals(world_box(2, 3, 5, 7))
    assert len(shapely.get_coordinates(row.geometry)) == 5  # four corners, closed: no seam vertices
    assert row.pixel_count == 12
    assert row.area_m2 == pytest.approx(12 * RES * RES)
    assert row.perimeter_m == pytest.approx(2 * (3 + 4) * RES)
    expected = (11 * round(0.8 * 254) + 254) / 12 / 254
    assert row.score == pytest.approx(expected, abs=1e-12)
    assert out.crs.to_epsg() == 32618
    assert list(out.columns) == ["score", "pixel_count", "area_m2", "perimeter_m", "geometry"]


def test_l_shape(tmp_path):
    prob = np.zeros((10, 10))
    prob[1:7, 1:3] = 1  # vertical bar
    prob[5:7, 3:8] = 1  # foot
    out = run(write_probabilities(tmp_path / "p.tif", prob))
    assert len(out) == 1
    geom = out.geometry.iloc[0]
    assert geom.equals(world_box(1, 1, 3, 7).union(world_box(3, 5, 8, 7)))
    assert len(geom.exterior.coords) == 7  # six corners
    assert out.pixel_count.iloc[0] == 12 + 10


def test_ring_with_hole_and_fill_holes(tmp_path):
    prob = np.zeros((12, 12))
    prob[2:9, 2:9] = 1
    prob[4:7, 4:7] = 0  # 3x3 hole = 9 px = 2.25 m2
    path = write_probabilities(tmp_path / "p.tif", prob)
    out = run(path)
    geom = out.geometry.iloc[0]
    assert len(out) == 1 and len(geom.interiors) == 1
    assert geom.equals(world_box(2, 2, 9, 9).difference(world_box(4, 4, 7, 7)))
    assert out.area_m2.iloc[0] == pytest.approx((49 - 9) * 0.25)
    assert out.perimeter_m.iloc[0] == pytest.approx((28 + 12) * RES)  # holes count in perimeter

    filled = run(path, fill_holes=True)
    assert len(filled.geometry.iloc[0].interiors) == 0
    assert filled.area_m2.iloc[0] == pytest.approx(49 * 0.25)
    assert filled.pixel_count.iloc[0] == 40  # pixel_count stays the foreground count
    # an area limit fills only holes smaller than it
    assert len(run(path, fill_holes=2.0).geometry.iloc[0].interiors) == 1
    assert len(run(path, fill_holes=2.5).geometry.iloc[0].interiors) == 0


def test_fill_holes_absorbs_islands(tmp_path):
    prob = np.zeros((14, 14))
    prob[1:12, 1:12] = 0.6
    prob[3:10, 3:10] = 0
    prob[5:7, 5:7] = 1.0  # island in the hole
    path = write_probabilities(tmp_path / "p.tif", prob)
    assert len(run(path)) == 2
    out = run(path, fill_holes=True)
    assert len(out) == 1
    assert out.pixel_count.iloc[0] == (121 - 49) + 4
    expected = ((121 - 49) * round(0.6 * 254) + 4 * 254) / ((121 - 49) + 4) / 254
    assert out.score.iloc[0] == pytest.approx(expected, abs=1e-12)


def test_hole_touching_shell_at_a_corner_is_valid(tmp_path):
    prob = np.zeros((6, 6))
    prob[1:4, 1:4] = 1
    prob[2, 2] = 0
    prob[3, 3] = 0  # the hole at (2,2) touches the outside at one point
    out = run(write_probabilities(tmp_path / "p.tif", prob))
    assert len(out) == 1 and out.geometry.iloc[0].is_valid
    assert out.area_m2.iloc[0] == pytest.approx(7 * 0.25)


def test_diagonal_touching_pixels_and_connectivity(tmp_path):
    prob = np.zeros((8, 8))
    prob[1:3, 1:3] = 1
    prob[3:5, 3:5] = 1  # touches the first square at one corner
    path = write_probabilities(tmp_path / "p.tif", prob)
    four = run(path, connectivity=4)
    assert len(four) == 2 and set(four.geometry.geom_type) == {"Polygon"}
    eight = run(path, connectivity=8)
    assert len(eight) == 1
    geom = eight.geometry.iloc[0]
    assert geom.geom_type == "MultiPolygon" and len(geom.geoms) == 2 and geom.is_valid
    assert eight.pixel_count.iloc[0] == 8


def test_island_touching_its_hole_at_a_corner_with_8_connectivity(tmp_path):
    """An island inside a hole, touching the ring diagonally: one 8-connected component of two
    polygons, the same whether it lies in one block or is cut by seams (dissolved by union)."""
    prob = np.zeros((40, 40))
    prob[15:22, 15:22] = 1
    prob[16:21, 16:21] = 0  # 5x5 hole
    prob[16, 16] = 1  # a notch of the ring into the hole...
    prob[17, 17] = 1  # ...touched diagonally by a one-pixel island
    path = write_probabilities(tmp_path / "p.tif", prob)
    whole = run(path, connectivity=8)
    assert len(whole) == 1 and whole.pixel_count.iloc[0] == int(prob.sum())
    geom = whole.geometry.iloc[0]
    assert geom.geom_type == "MultiPolygon" and len(geom.geoms) == 2 and geom.is_valid
    for block in (16, 17, 18, 20):  # 17: the seam runs between the notch and the island
        assert same_result(whole, run(path, connectivity=8, block_size=block)), block


def test_output_sorted_by_first_pixel(tmp_path):
    prob = np.zeros((20, 20))
    prob[10:12, 1:3] = 1
    prob[2:4, 15:17] = 1
    prob[2:6, 5:6] = 1
    out = run(write_probabilities(tmp_path / "p.tif", prob))
    tops = [(-g.bounds[3], g.bounds[0]) for g in out.geometry]
    assert tops == sorted(tops)
    assert list(out.pixel_count) == [4, 4, 4]
    assert out.geometry.iloc[0].equals(world_box(5, 2, 6, 6))


# --------------------------------------------------------------------------- block seams


@pytest.mark.parametrize("connectivity", [4, 8])
def test_blockwise_equals_whole_raster_on_random_masks(tmp_path, connectivity):
    rng = np.random.default_rng(20240607)
    for trial in range(6):
        h, w = (int(v) for v in rng.integers(40, 110, 2))
        noise = rng.random((h, w))
        if trial % 2:  # smooth blobs: large objects cut by many seams
            noise = ndimage.gaussian_filter(noise, 2.0)
            noise = (noise - noise.min()) / (noise.max() - noise.min())
        nodata = rng.random((h, w)) < 0.02
        path = write_probabilities(tmp_path / f"r{trial}.tif", noise, nodata_mask=nodata)
        whole = run(path, block_size=4096, connectivity=connectivity)
        fg = (np.round(noise * 254) >= 127) & ~nodata
        assert whole.pixel_count.sum() == fg.sum()
        assert whole.geometry.is_valid.all()
        for block in (16, 19, 32, 41):
            blocked = run(path, block_size=block, connectivity=connectivity)
            assert same_result(whole, blocked), f"trial {trial}, block {block}"


def test_mask_path_equals_labelled_path(tmp_path):
    """Unscaled masks with 4-connectivity skip the labelling and read the seams off the polygons'
    edges; a probability raster of the same pixels goes through the labelling: same result."""
    rng = np.random.default_rng(11)
    for trial in range(4):
        h, w = (int(v) for v in rng.integers(40, 100, 2))
        blobs = ndimage.gaussian_filter(rng.random((h, w)), 1.5 + trial)
        mask = (blobs > np.median(blobs)).astype(np.uint8)
        mask[rng.random((h, w)) < 0.05] ^= 1  # speckle and pinholes
        nodata = rng.random((h, w)) < 0.02
        raw = np.where(nodata, 9, mask).astype(np.uint8)
        mask_path = write_raw(tmp_path / f"m{trial}.tif", raw, nodata=9)
        prob_path = write_probabilities(tmp_path / f"p{trial}.tif", mask.astype(float), nodata_mask=nodata)
        whole = run(prob_path, block_size=4096)
        assert whole.pixel_count.sum() == (mask.astype(bool) & ~nodata).sum()
        for block in (16, 23, 4096):
            assert same_result(whole, run(mask_path, block_size=block)), f"trial {trial}, block {block}"


def test_object_spanning_many_blocks_is_one_polygon(tmp_path):
    prob = np.zeros((100, 100))
    yy, xx = np.mgrid[:100, :100]
    prob[(yy - 50) ** 2 + (xx - 50) ** 2 < 40**2] = 0.9
    prob[(yy - 50) ** 2 + (xx - 50) ** 2 < 10**2] = 0  # hole straddling four blocks
    path = write_probabilities(tmp_path / "p.tif", prob)
    out = run(path, block_size=16)
    assert len(out) == 1
    assert len(out.geometry.iloc[0].interiors) == 1
    assert out.pixel_count.iloc[0] == int((prob > 0).sum())
    assert out.area_m2.iloc[0] == pytest.approx((prob > 0).sum() * 0.25)


def test_scores_are_mean_probability_per_component(tmp_path):
    rng = np.random.default_rng(7)
    prob = ndimage.gaussian_filter(rng.random((64, 64)), 2)
    prob = (prob - prob.min()) / (prob.max() - prob.min())
    path = write_probabilities(tmp_path / "p.tif", prob)
    codes = np.round(prob * 254)
    labels, n = ndimage.label(codes >= 127)
    expected = {}
    for lab in range(1, n + 1):
        sel = labels == lab
        rows, cols = np.nonzero(sel)
        first = np.lexsort((cols, rows))[0]
        expected[(rows[first], cols[first])] = codes[sel].mean() / 254
    out = run(path, block_size=20)
    assert len(out) == n
    for geom, score in zip(out.geometry, out.score, strict=True):
        coords = shapely.get_coordinates(geom)
        top = coords[:, 1].max()
        col = round((coords[coords[:, 1] == top, 0].min() - ORIGIN[0]) / RES)
        row = round((ORIGIN[1] - top) / RES)
        assert score == pytest.approx(expected[(row, col)], abs=1e-12)


# ------------------------------------------------------------------------ input codings


def test_threshold_boundary_and_nodata_never_foreground(tmp_path):
    codes = np.zeros((6, 6), dtype=np.uint8)
    codes[1, 1] = 127  # exactly 0.5
    codes[1, 3] = 126
    codes[3:5, 3:5] = 255  # nodata
    path = write_raw(tmp_path / "p.tif", codes, nodata=255, scale=1 / 254)
    out = run(path, threshold=0.5)
    assert len(out) == 1 and out.pixel_count.iloc[0] == 1
    assert out.score.iloc[0] == pytest.approx(0.5)
    assert len(run(path, threshold=0.0)) == 1  # everything valid, nodata still out
    assert run(path, threshold=0.0).pixel_count.iloc[0] == 36 - 4


def test_nodata_splits_an_object(tmp_path):
    prob = np.zeros((10, 10))
    prob[2:8, 2:8] = 1
    nodata = np.zeros_like(prob, dtype=bool)
    nodata[:, 5] = True
    out = run(write_probabilities(tmp_path / "p.tif", prob, nodata_mask=nodata), block_size=16)
    assert len(out) == 2
    assert list(out.pixel_count) == [18, 12]


def test_float32_probabilities_with_nan_nodata(tmp_path):
    prob = np.zeros((10, 10), dtype=np.float32)
    prob[2:6, 2:6] = 0.75
    prob[2, 2] = np.nan
    path = write_raw(tmp_path / "f.tif", prob, nodata=float("nan"))
    out = run(path)
    assert len(out) == 1 and out.pixel_count.iloc[0] == 15
    assert out.score.iloc[0] == pytest.approx(0.75)
    assert len(run(path, threshold=0.8)) == 0


def test_float32_with_numeric_nodata(tmp_path):
    prob = np.full((8, 8), -1.0, dtype=np.float32)
    prob[1:4, 1:4] = 0.9
    out = run(write_raw(tmp_path / "f.tif", prob, nodata=-1.0), threshold=0.0)
    assert len(out) == 1 and out.pixel_count.iloc[0] == 9


@pytest.mark.parametrize("on_value", [1, 255])
def test_unscaled_integer_mask(tmp_path, on_value):
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[1:3, 1:5] = on_value
    out = run(write_raw(tmp_path / "m.tif", mask), threshold=0.9)
    assert len(out) == 1 and out.pixel_count.iloc[0] == 8
    assert out.score.iloc[0] == 1.0


def test_empty_result_has_schema(tmp_path):
    out = run(write_probabilities(tmp_path / "p.tif", np.zeros((20, 20))))
    assert len(out) == 0
    assert list(out.columns) == ["score", "pixel_count", "area_m2", "perimeter_m", "geometry"]
    assert out.crs.to_epsg() == 32618


def test_bad_options_are_input_errors(tmp_path):
    path = write_probabilities(tmp_path / "p.tif", np.zeros((4, 4)))
    for bad in ({"threshold": 1.5}, {"connectivity": 6}, {"block_size": 3}, {"simplify": -1},
                {"min_area_px": -1}, {"fill_holes": -2.0}):
        with pytest.raises(InputError):
            run(path, **bad)
    with pytest.raises(InputError):
        vectorize_probabilities(tmp_path / "missing.tif")


# ------------------------------------------------------------------------------ filters


def test_min_area_px_and_m2(tmp_path):
    prob = np.zeros((20, 20))
    prob[1:2, 1:4] = 1  # 3 px = 0.75 m2
    prob[5:10, 5:10] = 1  # 25 px = 6.25 m2
    prob[12:14, 12:15] = 1  # 6 px = 1.5 m2
    path = write_probabilities(tmp_path / "p.tif", prob)
    assert list(run(path).pixel_count) == [3, 25, 6]
    assert list(run(path, min_area_px=4).pixel_count) == [25, 6]
    assert list(run(path, min_area_px=6).pixel_count) == [25, 6]
    assert list(run(path, min_area_m2=1.5).pixel_count) == [25, 6]
    assert list(run(path, min_area_m2=1.6).pixel_count) == [25]


def test_simplify_reduces_vertices_and_keeps_validity(tmp_path):
    yy, xx = np.mgrid[:120, :120]
    prob = np.zeros((120, 120))
    prob[(yy - 40) ** 2 + (xx - 40) ** 2 < 30**2] = 1
    prob[(yy - 80) ** 2 + (xx - 85) ** 2 < 25**2] = 1  # the two discs touch diagonally
    prob[(yy - 40) ** 2 + (xx - 40) ** 2 < 8**2] = 0
    path = write_probabilities(tmp_path / "p.tif", prob)
    raw = run(path, block_size=32)
    simple = run(path, block_size=32, simplify=1.5)
    assert len(simple) == len(raw)
    assert simple.geometry.is_valid.all()
    raw_n = shapely.get_num_coordinates(raw.geometry.to_numpy()).sum()
    simple_n = shapely.get_num_coordinates(simple.geometry.to_numpy()).sum()
    assert simple_n < raw_n / 2
    assert simple.area_m2.sum() == pytest.approx(raw.area_m2.sum(), rel=0.03)
    # no overlaps introduced between neighbours
    geoms = simple.geometry.to_numpy()
    for i in range(len(geoms)):
        for j in range(i + 1, len(geoms)):
            assert geoms[i].intersection(geoms[j]).area == pytest.approx(0, abs=1e-9)


# ------------------------------------------------------------------------------ metrics


def test_geodesic_area_in_epsg4326(tmp_path):
    # a 0.001 deg square at lat 45: 10 x 10 pixels of 0.0001 deg
    transform = from_origin(10.0, 45.0005, 0.0001, 0.0001)
    prob = np.zeros((14, 14))
    prob[2:12, 2:12] = 1
    out = run(write_probabilities(tmp_path / "g.tif", prob, crs="EPSG:4326", transform=transform))
    x0, y0 = 10.0 + 0.0002, 45.0005 - 0.0012
    lons = [x0, x0 + 0.001, x0 + 0.001, x0, x0]
    lats = [y0, y0, y0 + 0.001, y0 + 0.001, y0]
    area, perim = Geod(ellps="WGS84").polygon_area_perimeter(lons, lats)
    assert out.area_m2.iloc[0] == pytest.approx(abs(area), rel=1e-9)
    assert out.perimeter_m.iloc[0] == pytest.approx(perim, rel=1e-9)
    assert 8_700_000 < abs(area) * 1000 < 8_800_000  # ~111 m x ~79 m: sanity on magnitude


def test_geodesic_metrics_agree_with_pyprojs_whole_geometry_helpers():
    """Holes and parts, either ring orientation: the area is Geod.geometry_area_perimeter's on the
    oriented polygon, the perimeter the geodesic length of the whole boundary, holes included."""
    part = box(10.0, 45.0, 10.01, 45.01).difference(box(10.002, 45.002, 10.004, 45.004))
    multi = shapely.MultiPolygon([part, box(10.02, 45.0, 10.03, 45.005)])
    geod = Geod(ellps="WGS84")
    for geom in (multi, shapely.orient_polygons(multi, exterior_cw=True), shapely.orient_polygons(multi)):
        area, perimeter = polygon_metrics([geom], "EPSG:4326")
        assert area[0] == pytest.approx(geod.geometry_area_perimeter(shapely.orient_polygons(geom))[0], rel=1e-9)
        assert perimeter[0] == pytest.approx(geod.geometry_length(shapely.boundary(geom)), rel=1e-9)
        assert perimeter[0] > geod.geometry_area_perimeter(shapely.orient_polygons(geom))[1]  # + the hole


def test_polygon_metrics_projected_units():
    square = box(0, 0, 10, 10)
    area, perim = polygon_metrics([square], "EPSG:32618")
    assert area[0] == pytest.approx(100) and perim[0] == pytest.approx(40)
    area, perim = polygon_metrics([square], "EPSG:2277")  # Texas Central, US survey feet
    ft = 1200 / 3937
    assert area[0] == pytest.approx(100 * ft * ft) and perim[0] == pytest.approx(40 * ft)
    ring = box(0, 0, 10, 10).difference(box(2, 2, 4, 4))
    area, perim = polygon_metrics([ring], "EPSG:32618")
    assert area[0] == pytest.approx(96) and perim[0] == pytest.approx(48)


# ---------------------------------------------------------------------------- mask out


def test_write_mask_cog(tmp_path):
    prob = np.zeros((40, 40))
    prob[5:20, 5:20] = 0.7
    nodata = np.zeros_like(prob, dtype=bool)
    nodata[30:, 30:] = True
    src = write_probabilities(tmp_path / "p.tif", prob, nodata_mask=nodata)
    dst = write_mask(src, tmp_path / "mask.tif", threshold=0.5, block_size=16)
    with rasterio.open(dst) as ds:
        data = ds.read(1)
        assert ds.dtypes[0] == "uint8" and ds.nodata == 255 and ds.crs.to_epsg() == 32618
        assert ds.transform == from_origin(*ORIGIN, RES, RES)
    assert (data == 1).sum() == 225 and (data == 255).sum() == 100
    assert not list(tmp_path.glob(".*"))  # no temporary left behind


# ---------------------------------------------------------------------- gdal_polygonize


def _gdal_polygonize() -> str | None:
    return shutil.which("gdal_polygonize") or shutil.which("gdal_polygonize.py")


@pytest.mark.skipif(_gdal_polygonize() is None, reason="gdal_polygonize not installed (Debian gdal-bin)")
@pytest.mark.parametrize("connectivity", [4, 8])
def test_matches_gdal_polygonize(tmp_path, connectivity):
    rng = np.random.default_rng(3)
    noise = ndimage.gaussian_filter(rng.random((90, 70)), 1.2)
    mask = (noise > np.median(noise)).astype(np.uint8)
    src = write_raw(tmp_path / "m.tif", mask, nodata=0)  # nodata 0: GDAL polygonises only the 1s
    out_path = tmp_path / "gdal.gpkg"
    args = [_gdal_polygonize(), "-q", *(["-8"] if connectivity == 8 else []), str(src),
            "-f", "GPKG", str(out_path), "out", "dn"]
    subprocess.run(args, check=True, capture_output=True, timeout=120)
    gdal = pyogrio.read_dataframe(out_path)
    ours = run(src, block_size=16, connectivity=connectivity)
    assert ours.area_m2.sum() == pytest.approx(gdal.geometry.area.sum() * 1.0)
    assert ours.area_m2.sum() == pytest.approx(mask.sum() * RES * RES)
    if connectivity == 4:
        assert len(ours) == len(gdal)
        key = lambda g: tuple(round(v, 6) for v in g.bounds)  # noqa: E731
        for a, b in zip(sorted(ours.geometry, key=key), sorted(gdal.geometry, key=key), strict=True):
            assert shapely.make_valid(b).symmetric_difference(a).area < 1e-6
    else:  # GDAL's -8 output is one polygon per 8-connected region (ours: a MultiPolygon)
        assert len(ours) == len(gdal)


# ----------------------------------------------------------------------- bounded memory


def _peak_numpy_bytes(path: Path, block: int) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        run(path, block_size=block)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _disc_grid(path: Path, side: int) -> Path:
    """Discs of radius 150 px every 700 px: the number of objects grows with area, their size not."""
    codes = np.zeros((side, side), dtype=np.uint8)
    yy, xx = np.mgrid[-150:151, -150:151]
    disc = (yy**2 + xx**2 < 150**2).astype(np.uint8) * 200
    for cy in range(200, side - 150, 700):
        for cx in range(300, side - 150, 700):
            codes[cy - 150: cy + 151, cx - 150: cx + 151] = disc
    return write_raw(path, codes, nodata=255, scale=1 / 254)


def test_memory_is_bounded_by_block_not_scene(tmp_path):
    small = _disc_grid(tmp_path / "small.tif", 2048)
    large = _disc_grid(tmp_path / "large.tif", 4096)
    peak_small = _peak_numpy_bytes(small, 512)
    peak_large = _peak_numpy_bytes(large, 512)
    peak_whole = _peak_numpy_bytes(large, 4096)
    assert peak_large <= 1.3 * peak_small, (peak_small, peak_large)
    assert peak_whole > 4 * peak_large  # the measurement can tell a whole-scene read apart


# ---------------------------------------------------------------------------- real data

SHARED_DATA = Path(__file__).parents[1] / ".." / "shared" / "data"
ROAD_MASK = SHARED_DATA / "spacenet-roads-solaris" / "sample_road_raster_mask.tif"


@pytest.mark.skipif(not ROAD_MASK.exists(), reason=f"real test data absent: {ROAD_MASK}")
def test_real_spacenet_road_mask_epsg4326():
    """A real 0/255 road mask in EPSG:4326: seams, geodesic areas, and GDAL's own polygoniser."""
    with rasterio.open(ROAD_MASK) as ds:
        mask = ds.read(1) > 0
        transform = ds.transform
    whole = run(ROAD_MASK, block_size=4096)
    blocked = run(ROAD_MASK, block_size=200)
    assert same_result(whole, blocked)
    assert whole.pixel_count.sum() == mask.sum()
    assert (whole.score == 1.0).all() and whole.geometry.is_valid.all()
    # geodesic area of the foreground, pixel by pixel row sums (pixels of one row share an area)
    geod = Geod(ellps="WGS84")
    expected = 0.0
    for row in np.flatnonzero(mask.any(axis=1)):
        x0, y0 = transform @ (0, row)
        x1, y1 = transform @ (1, row + 1)
        a, _ = geod.polygon_area_perimeter([x0, x1, x1, x0], [y0, y0, y1, y1])
        expected += abs(a) * mask[row].sum()
    assert whole.area_m2.sum() == pytest.approx(expected, rel=1e-6)
