"""End to end on this machine's CPU with the default model: MP/s, km2/h, and the engine overhead.

Two runs of `segment` on a sample scene (default: sample_tiles/town_utm_0p5m.tif, 0.5 m GSD):

- warm:  the model loaded once, then `pipeline.segment` timed in-process with every predict()
         call timed (benchmarks/workers.py): throughput without start-up, and the engine's
         overhead = 1 - model time / run time (reading, normalising, blending, vectorising,
         GeoPackage writing: everything but the model);
- cold:  the command a user types, `geoseg -q segment SCENE QUERY -o OUT --json`, as a process:
         start-up, model loading and all (wall time and peak RSS).

km2/h = MP/s x 3600 x (pixel area in m2); the pixel area comes from the scene's geotransform
(geographic CRSs: at the scene centre). torch uses its default thread count (all cores) unless
--threads says otherwise. For GPUs see bench_gpu_mllm.py.

    nice -n 19 .venv/bin/python benchmarks/bench_end_to_end.py
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

WORKERS = Path(__file__).resolve().parent / "workers.py"
DEFAULT_SCENE = common.REPO / "sample_tiles" / "town_utm_0p5m.tif"


def pixel_area_m2(path: Path) -> float:
    import rasterio
    from pyproj import Geod

    with rasterio.open(path) as src:
        t, crs = src.transform, src.crs
        if crs is None or not crs.is_geographic:
            unit = crs.linear_units_factor[1] if crs is not None else 1.0
            return abs(t.a * t.e) * unit * unit
        lon, lat = src.xy(src.height // 2, src.width // 2)
    geod = Geod(ellps="WGS84")
    dx = geod.inv(lon, lat, lon + t.a, lat)[2]
    dy = geod.inv(lon, lat, lon, lat + t.e)[2]
    return abs(dx * dy)


def env_for(threads: int | None) -> dict:
    env = {"GDAL_CACHEMAX": "64"}
    if threads:
        env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return env


def warm_run(scene: Path, model: str, query: str, threads: int | None, out: Path) -> dict:
    cmd = [common.PYTHON, str(WORKERS), "geoseg", "--scene", str(scene), "--out", str(out),
           "--model", model, "--query", query]
    m = common.measure(cmd, env=env_for(threads)).check()
    return {"wall_s": m.wall_s, "peak_rss_mb": m.peak_rss_mb, **m.json_tail(), "command": m.command}


def cold_run(scene: Path, model: str, query: str, threads: int | None, out: Path) -> dict:
    cmd = [str(common.REPO / ".venv" / "bin" / "geoseg"), "-q", "segment", str(scene), query, "-o", str(out),
           "--json", "--overwrite", "--model", model]
    m = common.measure(cmd, env=env_for(threads)).check()
    summary = m.json_tail()
    return {"wall_s": m.wall_s, "cpu_s": m.cpu_s, "peak_rss_mb": m.peak_rss_mb, "tiles": summary.get("tiles"),
            "features": sum(layer["features"] for layer in summary.get("layers", [])), "command": m.command}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scene", type=Path, default=DEFAULT_SCENE)
    ap.add_argument("--model", default="compact", help="registry name or checkpoint directory (default compact)")
    ap.add_argument("--query", default="buildings")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's, i.e. every core)")
    ap.add_argument("--repeat", type=int, default=1, help="warm runs; the fastest is kept")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()

    import rasterio

    with rasterio.open(args.scene) as src:
        megapixels = src.width * src.height / 1e6
    area = pixel_area_m2(args.scene)
    rows = []
    with tempfile.TemporaryDirectory(prefix="geoseg-e2e-") as tmp:
        warm = min((warm_run(args.scene, args.model, args.query, args.threads, Path(tmp) / f"w{i}.gpkg")
                    for i in range(args.repeat)), key=lambda r: r["run_s"])
        warm |= {"run": "warm (model loaded)", "seconds": warm["run_s"]}
        cold = cold_run(args.scene, args.model, args.query, args.threads, Path(tmp) / "cold.gpkg")
        cold |= {"run": "cold (`geoseg segment` process)", "seconds": cold["wall_s"]}
        for row in (warm, cold):
            row["megapixels"] = round(megapixels, 3)
            row["mpx_per_s"] = round(megapixels / row["seconds"], 4)
            row["km2_per_h"] = round(megapixels * 1e6 * area / 1e6 * 3600 / row["seconds"], 2)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    print(f"scene {args.scene.name}: {megapixels:.2f} MP, pixel {math.sqrt(area):.3g} m; model {args.model}")
    print(common.markdown_table(rows, [
        "run", "seconds", "mpx_per_s", "km2_per_h", "peak_rss_mb", "tiles", "model_s", "overhead_fraction",
        "load_s", "features",
    ]))
    if not args.no_save:
        path = common.save_results("end_to_end", common.invocation(), rows, {
            "scene": str(args.scene), "pixel_area_m2": area, "model": args.model, "query": args.query,
            "threads": args.threads,
        })
        print(f"\nwritten: {path.relative_to(common.REPO)}")


if __name__ == "__main__":
    main()
