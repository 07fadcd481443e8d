"""Vectorising a mask: `geoseg vectorize` vs GDAL's gdal_polygonize vs whole-raster shapes().

Same input, same output format (GeoPackage), one process per run, in one sitting:

- geoseg:     `geoseg -q vectorize MASK -o OUT.gpkg` (block-wise, seams dissolved, with score,
              area and perimeter fields, provenance and QGIS style);
- geoseg-lib: the same library calls from a small script (`--worker-library`), without the CLI's
              imports (the whole process still: Python start-up, imports, read, write);
- gdal:       `gdal_polygonize.py MASK -mask MASK -of GPKG OUT.gpkg` (Debian gdal-bin; the mask
              keeps the background out, as geoseg does);
- shapes:     what samgeo/geoai do: read the whole band, `rasterio.features.shapes(band,
              mask=band > 0)`, `GeoDataFrame.from_features`, `to_file(GPKG)`.

Masks are clean (rectangular "buildings" and a road grid) or noisy (a thresholded noisy
probability map: ragged blobs and speckle), 0/1 uint8, tiled 512, DEFLATE. Every tool must find
the same number of polygons (4-connectivity) covering the same total area as gdal_polygonize's,
or the row says so (`same_count_as_gdal`, `area_vs_gdal`: relative difference of the areas).
Ratios (`x_gdal_*`) are against gdal_polygonize in the same group, measured one after the other.

    nice -n 19 .venv/bin/python benchmarks/bench_vectorize.py --sizes 4k,10k,20k
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

GDAL_POLYGONIZE = "/usr/bin/gdal_polygonize.py"
TOOLS = ("geoseg", "geoseg-lib", "gdal", "shapes")


def shapes_worker(mask: str, out: str) -> None:
    """The whole-raster peer: everything in memory, then one write."""
    import geopandas as gpd
    import rasterio
    from rasterio.features import shapes

    with rasterio.open(mask) as src:
        band = src.read(1)
        features = [
            {"type": "Feature", "geometry": geom, "properties": {"value": int(value)}}
            for geom, value in shapes(band, mask=band > 0, connectivity=4, transform=src.transform)
        ]
        crs = src.crs
    gdf = gpd.GeoDataFrame.from_features(features, crs=crs)
    gdf.to_file(out, driver="GPKG", layer="mask", engine="pyogrio")


def library_worker(mask: str, out: str) -> None:
    """What `geoseg vectorize` does with a mask, as library calls: polygons, the command's fields,
    a provenance record, the GeoPackage. No torch, no CLI."""
    from geoseg import vectorize
    from geoseg.io import gpkg
    from geoseg.queries import layer_name_for

    started = time.perf_counter()
    gdf = vectorize.vectorize_probabilities(mask)
    query = Path(mask).stem
    gdf["query"], gdf["target"] = query, query
    gdf["model"], gdf["model_version"], gdf["run_id"], gdf["source"] = "none", "", "bench", mask
    record = {"command": "vectorize", "query": query, "inputs": [mask], "run_id": "bench"}
    layer = gpkg.LayerData(layer_name_for(query), gdf, query, record)
    gpkg.write_geopackage(out, [layer], overwrite=True)
    print(json.dumps({"features": len(gdf), "seconds": round(time.perf_counter() - started, 3)}))


def geoseg_executable() -> Path:
    """The console script installed beside the interpreter that runs the benchmark."""
    return Path(common.PYTHON).parent / "geoseg"


def command_for(tool: str, mask: Path, out: Path) -> list[str]:
    if tool == "geoseg":
        return [str(geoseg_executable()), "-q", "vectorize", str(mask), "-o", str(out), "--json"]
    if tool == "geoseg-lib":
        return [common.PYTHON, __file__, "--worker-library", str(mask), str(out)]
    if tool == "gdal":
        return ["/usr/bin/python3", GDAL_POLYGONIZE, "-q", str(mask), "-mask", str(mask),
                "-of", "GPKG", str(out), "mask", "value"]
    if tool == "shapes":
        return [common.PYTHON, __file__, "--worker-shapes", str(mask), str(out)]
    raise ValueError(tool)


def features_and_area(path: Path) -> tuple[int, float]:
    """Feature count and total polygon area (CRS units) over the file's geometry layers."""
    import pyogrio
    import shapely

    count, area = 0, 0.0
    for name, geometry_type in pyogrio.list_layers(path):
        if geometry_type:
            geoms = pyogrio.read_dataframe(path, layer=name, columns=[]).geometry.to_numpy()
            count += len(geoms)
            area += float(shapely.area(geoms).sum())
    return count, area


def run_one(tool: str, mask: Path, side: int, kind: str, work: Path, repeat: int) -> dict:
    best = None
    for _ in range(repeat):
        out = work / f"out_{tool}_{kind}_{side}.gpkg"
        out.unlink(missing_ok=True)
        m = common.measure(command_for(tool, mask, out), env=common.env_single_thread()).check()
        if best is None or m.wall_s < best.wall_s:
            best = m
            features, area = features_and_area(out)
        out.unlink(missing_ok=True)
    row = {
        "tool": tool, "mask": kind, "side": side, "megapixels": round(side * side / 1e6, 1),
        "wall_s": best.wall_s, "cpu_s": best.cpu_s, "mpx_per_s": round(side * side / 1e6 / best.wall_s, 2),
        "mpx_per_cpu_s": round(side * side / 1e6 / best.cpu_s, 2),
        "peak_rss_mb": best.peak_rss_mb, "features": features, "area": area, "command": best.command,
    }
    if tool.startswith("geoseg"):
        row["in_process_s"] = best.json_tail().get("seconds")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="4k,10k,20k", help="square sides, k = 1000 px (default: 4k,10k,20k)")
    ap.add_argument("--masks", default="clean,noisy")
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--repeat", type=int, default=1, help="runs per cell; the fastest is kept")
    ap.add_argument("--workdir", help=f"where inputs are cached (default {common.DEFAULT_WORKDIR})")
    ap.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/vectorize.json")
    ap.add_argument("--worker-shapes", nargs=2, metavar=("MASK", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--worker-library", nargs=2, metavar=("MASK", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker_shapes:
        shapes_worker(*args.worker_shapes)
        return
    if args.worker_library:
        library_worker(*args.worker_library)
        return

    work = common.workdir(args.workdir)
    tools = args.tools.split(",")
    startup = geoseg_startup()
    print(f"geoseg start-up (`geoseg --version`): {startup}", file=sys.stderr)
    rows = []
    for side in common.parse_sizes(args.sizes):
        for kind in args.masks.split(","):
            mask = common.write_mask(work / f"mask_{kind}_{side}.tif", side, kind)
            group = [run_one(tool, mask, side, kind, work, args.repeat) for tool in tools]
            add_ratios(group)
            for row in group:
                print(json.dumps(row), file=sys.stderr)
            rows += group
    print(markdown_table(rows))
    if not args.no_save:
        path = common.save_results("vectorize", common.invocation(), rows,
                                   {"gdal_polygonize": gdal_version(), "geoseg_startup": startup})
        print(f"\nwritten: {path.relative_to(common.REPO)}")


def add_ratios(group: list[dict]) -> None:
    """Throughput relative to gdal_polygonize; flag a polygon count or area that differs from GDAL's."""
    gdal = next((r for r in group if r["tool"] == "gdal"), None)
    for row in group:
        if gdal is None:
            continue
        row["x_gdal_throughput"] = round(row["mpx_per_s"] / gdal["mpx_per_s"], 2)
        row["x_gdal_cpu"] = round(row["mpx_per_cpu_s"] / gdal["mpx_per_cpu_s"], 2)
        row["x_gdal_rss"] = round(row["peak_rss_mb"] / gdal["peak_rss_mb"], 2)
        row["same_count_as_gdal"] = row["features"] == gdal["features"]
        row["area_vs_gdal"] = (row["area"] - gdal["area"]) / gdal["area"] if gdal["area"] else None


def geoseg_startup() -> dict:
    """What every geoseg command pays before it starts working (imports), for reading the table."""
    m = common.measure([str(geoseg_executable()), "--version"]).check()
    return {"wall_s": m.wall_s, "cpu_s": m.cpu_s, "peak_rss_mb": m.peak_rss_mb}


def gdal_version() -> str:
    import subprocess

    out = subprocess.run(["/usr/bin/python3", "-c", "from osgeo import gdal; print(gdal.__version__)"],
                         capture_output=True, text=True)
    return out.stdout.strip()


def markdown_table(rows: list[dict]) -> str:
    return common.markdown_table(rows, [
        "mask", "side", "tool", "wall_s", "mpx_per_s", "x_gdal_throughput", "cpu_s", "x_gdal_cpu", "peak_rss_mb",
        "x_gdal_rss", "features", "same_count_as_gdal", "area_vs_gdal",
    ])


if __name__ == "__main__":
    main()
