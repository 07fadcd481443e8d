"""The tiled engine vs a naive full-canvas implementation: time and peak RSS vs scene size.

The same deterministic oracle model (benchmarks/oracle.py: tests/doubles.py's ConvOracle, a
31 px box filter + sigmoid with zero padding, computed separably; 256 px tiles, 64 px overlap,
batch 4 -- the default model's plan) over 3-band uint8 scenes of 5k^2, 10k^2 and 20k^2 pixels:

- geoseg:  `pipeline.segment`: threaded reads, the rolling cosine blender writing uint8
           probabilities to disk, block-wise vectorising and the GeoPackage -- the whole flow;
- naive:   geoai's `predict_geotiff` pattern: float64 canvases over the whole scene, divided at
           the end and written as one float32 GeoTIFF (and no vectorising at all).

Each run is its own process (peak RSS per command, see common.measure; one math thread; GDAL_CACHEMAX=64 MB for
both, and once more for geoseg with GDAL's default block cache of 5% of the RAM, which is what a
user gets). The geoseg rows split time and peak memory into inference (read + model + blend) /
vectorise / GeoPackage write (RSS sampled every 20 ms inside the process).
The naive run is skipped, with the reason, when its canvases would not fit in memory.
The engine's overhead with the default model is measured by bench_end_to_end.py.

    nice -n 19 .venv/bin/python benchmarks/bench_engine.py --sizes 5k,10k,20k
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from workers import BATCH, OVERLAP, TILE  # noqa: E402

WORKERS = Path(__file__).resolve().parent / "workers.py"
# Alive at once at the end of the naive run: float64 sum and weight canvases, `weights > 0`,
# `weights + 1e-8`, the quotient, np.where's float64 result (then the float32 copy).
NAIVE_BYTES_PER_PIXEL = 8 + 8 + 1 + 8 + 8 + 8


ENGINES = {  # name: (worker, GDAL_CACHEMAX or None for GDAL's default of 5% of the RAM)
    "geoseg": ("geoseg", "64"),
    "naive": ("naive", "64"),
    "geoseg (GDAL default cache)": ("geoseg", None),
}


def run_worker(engine: str, scene: Path, out: Path) -> dict:
    kind, cache = ENGINES[engine]
    cmd = [common.PYTHON, str(WORKERS), kind, "--scene", str(scene), "--out", str(out)]
    env = common.env_single_thread()
    if cache is None:
        del env["GDAL_CACHEMAX"]
        if "GDAL_CACHEMAX" in os.environ:
            raise SystemExit("unset GDAL_CACHEMAX to measure GDAL's default cache")
    else:
        env["GDAL_CACHEMAX"] = cache
    m = common.measure(cmd, env=env).check()
    inner = m.json_tail()
    for path in out.parent.glob(out.name + "*"):
        path.unlink()
    return {"wall_s": m.wall_s, "cpu_s": m.cpu_s, "peak_rss_mb": m.peak_rss_mb, **inner, "command": m.command}


def naive_fits(side: int) -> bool:
    import psutil

    # 60%: the machine is shared, and the point is made without pushing others into swap or OOM
    return side * side * NAIVE_BYTES_PER_PIXEL < 0.6 * psutil.virtual_memory().available


def scaling(sizes: list[int], work: Path, engines: list[str], content: str) -> list[dict]:
    rows = []
    for side in sizes:
        name = f"scene_{side}.tif" if content == "fields" else f"scene_{content}_{side}.tif"
        scene = common.write_scene(work / name, side, kind=content)
        for engine in engines:
            row = {"engine": engine, "content": content, "side": side, "megapixels": round(side * side / 1e6, 1)}
            if engine == "naive" and not naive_fits(side):
                row["skipped"] = (f"needs ~{side * side * NAIVE_BYTES_PER_PIXEL / 2**30:.1f} GiB "
                                  "(float64 canvases), more than 60% of the available memory")
            else:
                out = work / (f"naive_{side}.tif" if engine == "naive" else f"engine_{side}.gpkg")
                row |= run_worker(engine, scene, out)
                row["mpx_per_s"] = round(side * side / 1e6 / row["wall_s"], 2)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    smallest = {}
    for r in rows:
        if "peak_rss_mb" in r:
            smallest.setdefault(r["engine"], r["peak_rss_mb"])
            r["rss_vs_smallest"] = round(r["peak_rss_mb"] / smallest[r["engine"]], 2)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="5k,10k,20k", help="square sides, k = 1000 px (default: 5k,10k,20k)")
    ap.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, of: {', '.join(ENGINES)}")
    ap.add_argument("--content", choices=common.SCENE_KINDS, default="fields",
                    help="fields: one scene-wide labyrinth (default); objects: isolated blobs")
    ap.add_argument("--workdir", help=f"where inputs are cached (default {common.DEFAULT_WORKDIR})")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()

    work = common.workdir(args.workdir)
    engines = [e.strip() for e in args.engines.split(",")]
    unknown = set(engines) - set(ENGINES)
    if unknown:
        ap.error(f"unknown engine(s): {', '.join(sorted(unknown))}")
    rows = scaling(common.parse_sizes(args.sizes), work, engines, args.content)
    print(common.markdown_table(rows, [
        "engine", "content", "side", "wall_s", "cpu_s", "peak_rss_mb", "rss_vs_smallest", "peak_rss_infer_mb",
        "peak_rss_vectorize_mb", "peak_rss_write_mb", "tiles", "model_s", "infer_s", "vectorize_s",
        "gpkg_write_s", "skipped",
    ]))
    if not args.no_save:
        name = "engine" if args.content == "fields" else f"engine_{args.content}"
        path = common.save_results(name, common.invocation(), rows,
                                   {"tile": TILE, "overlap": OVERLAP, "batch": BATCH})
        print(f"\nwritten: {path.relative_to(common.REPO)}")


if __name__ == "__main__":
    main()
