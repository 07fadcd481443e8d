"""End to end on this machine's CPU with the default model: MP/s, km2/h, and the engine overhead.

Two runs of `segment` on a sample scene (default: sample_tiles/town_utm_0p5m.tif, 0.5 m GSD):

- warm:  the model loaded once, then `pipeline.segment` timed in-process with every predict()
         call timed (benchmarks/workers.py): throughput without start-up, and the engine's
         overhead = 1 - model time / run time (reading, normalising, blending, vectorising,
         GeoPackage writing: everything but the model);
- cold:  the command a user types, `geoseg -q segment SCENE QUERY -o OUT --json`, as a process:
         start-up, model loading and all (wall time, CPU time / wall, peak RSS), twice: first
         with an empty query cache ("cold, new query": the text encoder is loaded to encode the
         query), then again ("cold": the query is read from the cache, as for anyone who asked
         it before). Each scene and thread count gets a cache folder of its own.

km2/h = MP/s x 3600 x (pixel area in m2); the pixel area comes from the scene's geotransform
(geographic CRSs: at the scene centre). Scenes: the sample (1 MP) and a larger geoseg.train.synth town
at the same GSD. Each with torch on one thread and with torch's default (every core): on a
loaded machine the default can be far slower (OpenMP threads waiting for each other on busy
cores), and that is worth knowing. For GPUs see bench_gpu_mllm.py.

Machines of one kind differ up to 2x in absolute speed, so every thread count also measures the
machine's fp32 matrix-multiply throughput in the same run (torch.mm on 2048 x 2048, the project's
torch, the same thread setting, best of several) and reports MP/s per 100 GFLOP/s beside MP/s:
that ratio is what compares across machines.

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


def env_for(threads: int | None, cache: Path | str = "off") -> dict:
    env = {"GDAL_CACHEMAX": "64", "GEOSEG_CACHE_DIR": str(cache)}
    if threads:
        env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return env


MATMUL = """
import json, time, torch
a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
for _ in range(3):
    torch.mm(a, b)
best = float("inf")
for _ in range(10):
    t = time.perf_counter(); torch.mm(a, b); best = min(best, time.perf_counter() - t)
print(json.dumps({"gflops": round(2 * 2048**3 / best / 1e9, 1), "torch_threads": torch.get_num_threads()}))
"""


def matmul_gflops(threads: int | None) -> float:
    """fp32 GFLOP/s of a 2048 x 2048 matrix product in a fresh process with `threads` threads."""
    m = common.measure([common.PYTHON, "-c", MATMUL], env=env_for(threads)).check()
    return float(m.json_tail()["gflops"])


def warm_run(scene: Path, model: str, query: str, threads: int | None, out: Path) -> dict:
    cmd = [common.PYTHON, str(WORKERS), "geoseg", "--scene", str(scene), "--out", str(out),
           "--model", model, "--query", query]
    m = common.measure(cmd, env=env_for(threads)).check()
    return {"wall_s": m.wall_s, "peak_rss_mb": m.peak_rss_mb, **m.json_tail(), "command": m.command}


def cold_run(scene: Path, model: str, query: str, threads: int | None, out: Path, cache: Path) -> dict:
    cmd = [str(common.REPO / ".venv" / "bin" / "geoseg"), "-q", "segment", str(scene), query, "-o", str(out),
           "--json", "--overwrite", "--model", model]
    m = common.measure(cmd, env=env_for(threads, cache)).check()
    summary = m.json_tail()
    return {"wall_s": m.wall_s, "cpu_s": m.cpu_s, "cpu_per_wall": round(m.cpu_s / m.wall_s, 2),
            "peak_rss_mb": m.peak_rss_mb, "tiles": summary.get("tiles"),
            "features": sum(layer["features"] for layer in summary.get("layers", [])), "command": m.command}


def synth_scene(side: int, work: Path) -> Path:
    """A geoseg.train.synth town at 0.5 m (the sample's GSD), `side` px square, cached."""
    path = work / f"synth_town_{side}.tif"
    if not path.exists():
        from geoseg.train.synth import write_scene

        part = path.with_name(path.name + ".part.tif")
        write_scene(part, 21, side, side, 0.5, crs="EPSG:32633")
        part.rename(path)
    return path


def measure_scene(scene: Path, model: str, query: str, threads: int | None, repeat: int, tmp: Path) -> list[dict]:
    import rasterio

    with rasterio.open(scene) as src:
        megapixels = src.width * src.height / 1e6
    area = pixel_area_m2(scene)
    warm = min((warm_run(scene, model, query, threads, tmp / f"w{i}.gpkg") for i in range(repeat)),
               key=lambda r: r["run_s"])
    warm |= {"run": "warm", "seconds": warm["run_s"]}
    cache = tmp / f"cache-{scene.stem}-{threads or 'default'}"
    new_query = cold_run(scene, model, query, threads, tmp / "cold.gpkg", cache)
    new_query |= {"run": "cold, new query", "seconds": new_query["wall_s"]}
    cold = cold_run(scene, model, query, threads, tmp / "cold.gpkg", cache)
    cold |= {"run": "cold", "seconds": cold["wall_s"]}
    gflops = matmul_gflops(threads)
    rows = []
    for row in (warm, new_query, cold):
        row |= {"scene": scene.name, "threads": threads or "torch default", "megapixels": round(megapixels, 3),
                "pixel_m": round(math.sqrt(area), 3)}
        row["mpx_per_s"] = round(megapixels / row["seconds"], 4)
        row["km2_per_h"] = round(megapixels * area * 3600 / row["seconds"], 2)
        row["matmul_gflops"] = gflops
        row["mpx_per_s_per_100gflops"] = round(100 * row["mpx_per_s"] / gflops, 3)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scene", type=Path, default=DEFAULT_SCENE)
    ap.add_argument("--synth-side", type=int, default=4096,
                    help="also a geoseg.train.synth town of this side at 0.5 m (0: none; default 4096)")
    ap.add_argument("--model", default="compact", help="registry name or checkpoint directory (default compact)")
    ap.add_argument("--query", default="buildings")
    ap.add_argument("--threads", default="1,default",
                    help="torch thread counts to run, 'default' = torch's own (every core); default: 1,default")
    ap.add_argument("--repeat", type=int, default=1, help="warm runs; the fastest is kept")
    ap.add_argument("--workdir", help=f"where inputs are cached (default {common.DEFAULT_WORKDIR})")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()

    scenes = [args.scene]
    if args.synth_side:
        scenes.append(synth_scene(args.synth_side, common.workdir(args.workdir)))
    threads = [None if t == "default" else int(t) for t in args.threads.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="geoseg-e2e-") as tmp:
        for scene in scenes:
            for n in threads:
                rows += measure_scene(scene, args.model, args.query, n, args.repeat, Path(tmp))
    print(f"model {args.model}, query {args.query!r}")
    print(common.markdown_table(rows, [
        "scene", "threads", "run", "seconds", "mpx_per_s", "mpx_per_s_per_100gflops", "matmul_gflops", "km2_per_h", "cpu_per_wall", "peak_rss_mb", "tiles", "model_s",
        "overhead_fraction", "load_s", "features",
    ]))
    if not args.no_save:
        path = common.save_results("end_to_end", common.invocation(), rows,
                                   {"model": args.model, "query": args.query})
        print(f"\nwritten: {path.relative_to(common.REPO)}")


if __name__ == "__main__":
    main()
