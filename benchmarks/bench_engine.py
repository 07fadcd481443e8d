"""The tiled engine vs a naive full-canvas implementation, and the engine's own overhead.

Part 1 (memory and time vs scene size): the same deterministic oracle model (benchmarks/oracle.py:
tests/doubles.py's ConvOracle, a 31 px box filter + sigmoid with zero padding, computed separably;
256 px tiles, 64 px overlap, batch 4, the default model's plan) run over 3-band scenes of 5k^2, 10k^2 and 20k^2 pixels by

- geoseg:  `pipeline.segment` (threaded reads, rolling cosine blender writing uint8 probabilities
           to disk, block-wise vectorising, GeoPackage) -- the whole flow, not just the blend;
- naive:   the full-canvas pattern of geoai's `predict_geotiff`: windowed reads, but float64
           `output_sum` and `weight_sum` canvases over the whole scene, divided at the end and
           written as one float32 GeoTIFF (no vectorising at all).

Each run is its own process (peak RSS from os.wait4). The geoseg worker also reports where its
time went (model / vectorise / GeoPackage write / the rest).

Part 2 (overhead): `pipeline.segment` with the default model (`compact`), timing every
`predict` call: overhead = 1 - model time / wall time of the run (model loading excluded).

    nice -n 19 .venv/bin/python benchmarks/bench_engine.py --sizes 5k,10k,20k
    nice -n 19 .venv/bin/python benchmarks/bench_engine.py --overhead-only --overhead-size 2k
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

TILE, OVERLAP, BATCH = 256, 64, 4
NAIVE_BYTES_PER_PIXEL = 8 + 8 + 8 + 8 + 4  # sum, weight, quotient, where() result (float64), output (float32)


class TimedModel:
    """Wraps a segmenter and adds up the wall time spent inside predict()."""

    def __init__(self, model) -> None:
        self.model, self.info, self.device = model, model.info, model.device
        self.seconds, self.calls, self.tiles = 0.0, 0, 0

    def predict(self, images, queries, *, before=None):
        start = time.perf_counter()
        out = self.model.predict(images, queries, before=before)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        self.tiles += int(images.shape[0])
        return out


def timed(module, name: str, totals: dict) -> None:
    """Replace module.name with a wrapper that adds its wall time to totals[name]."""
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - start

    setattr(module, name, wrapper)


# ------------------------------------------------------------------------------ workers


def geoseg_worker(scene: str, out: str, model_name: str | None) -> dict:
    import torch

    from geoseg import gpkg, pipeline, vectorize

    if model_name is None:
        from oracle import SeparableConvOracle

        model = SeparableConvOracle(tile_size=TILE, overlap=OVERLAP)
        load_s = 0.0
    else:
        from geoseg.models.registry import load_segmenter

        start = time.perf_counter()
        model = load_segmenter(model_name, device="cpu")
        load_s = time.perf_counter() - start
    timer = TimedModel(model)
    totals: dict[str, float] = {}
    timed(vectorize, "vectorize_probabilities", totals)
    timed(gpkg, "write_geopackage", totals)
    opts = pipeline.RunOptions(progress=False, overwrite=True, batch_size=BATCH)
    start = time.perf_counter()
    summary = pipeline.segment([scene], ["bright fields"], out, opts, segmenter=timer)
    wall = time.perf_counter() - start
    vec, write = totals.get("vectorize_probabilities", 0.0), totals.get("write_geopackage", 0.0)
    return {
        "run_s": round(wall, 3), "model_s": round(timer.seconds, 3), "vectorize_s": round(vec, 3),
        "gpkg_write_s": round(write, 3), "infer_s": round(wall - vec - write, 3),
        "overhead_fraction": round(1 - timer.seconds / wall, 4), "tiles": timer.tiles,
        "features": sum(layer.features for layer in summary.layers), "load_s": round(load_s, 3),
        "torch_threads": torch.get_num_threads(),
    }


def naive_worker(scene: str, out: str) -> dict:
    """Full-canvas tiled inference as geoai's predict_geotiff does it (float64 canvases)."""
    import numpy as np
    import rasterio
    import torch
    from oracle import SeparableConvOracle
    from rasterio.windows import Window

    model = SeparableConvOracle(tile_size=TILE, overlap=OVERLAP)
    stride = TILE - OVERLAP
    weight = hann_window(TILE, OVERLAP)
    model_s = 0.0
    start = time.perf_counter()
    with rasterio.open(scene) as src:
        height, width, profile = src.height, src.width, src.profile.copy()
        total = np.zeros((1, height, width), np.float64)
        weights = np.zeros((1, height, width), np.float64)
        origins = []
        for row in range(0, height, stride):
            for col in range(0, width, stride):
                y1, x1 = min(row + TILE, height), min(col + TILE, width)
                origins.append((max(0, y1 - TILE), max(0, x1 - TILE)))
        origins = list(dict.fromkeys(origins))
        for b in range(0, len(origins), BATCH):
            batch = origins[b : b + BATCH]
            arrays = [src.read(window=Window(x, y, TILE, TILE)).astype(np.float32) / 255.0 for y, x in batch]
            t0 = time.perf_counter()
            probs = model.predict(torch.from_numpy(np.stack(arrays)), ["q"]).probabilities.numpy()
            model_s += time.perf_counter() - t0
            for (y, x), p in zip(batch, probs, strict=True):
                total[:, y : y + TILE, x : x + TILE] += p * weight
                weights[:, y : y + TILE, x : x + TILE] += weight
    result = np.where(weights > 0, total / (weights + 1e-8), -9999.0).astype(np.float32)
    profile.update(count=1, dtype="float32", nodata=-9999.0, compress="lzw")
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(result)
    wall = time.perf_counter() - start
    return {"run_s": round(wall, 3), "model_s": round(model_s, 3), "infer_s": round(wall, 3),
            "tiles": len(origins), "overhead_fraction": round(1 - model_s / wall, 4)}


def hann_window(tile: int, overlap: int):
    """Raised-cosine taper across the overlap on every side (the naive path tapers scene edges too)."""
    import numpy as np

    edge = np.minimum(np.arange(tile), np.arange(tile)[::-1]).astype(np.float64)
    ramp = 0.5 * (1 - np.cos(np.pi * np.minimum(edge + 1, overlap) / overlap))
    return np.outer(ramp, ramp).astype(np.float32)


# ------------------------------------------------------------------------------ driver


def run_worker(kind: str, scene: Path, out: Path, model: str | None, threads: int | None) -> dict:
    cmd = [common.PYTHON, __file__, "--worker", kind, "--scene", str(scene), "--out", str(out)]
    if model:
        cmd += ["--model", model]
    env = common.env_single_thread()
    if threads is None:  # let torch use every core, as a user's run would
        for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.pop(key)
    m = common.measure(cmd, env=env).check()
    inner = m.json_tail()
    for path in out.parent.glob(out.name + "*"):
        path.unlink()
    return {"wall_s": m.wall_s, "cpu_s": m.cpu_s, "peak_rss_mb": m.peak_rss_mb, **inner, "command": m.command}


def naive_fits(side: int) -> bool:
    import psutil

    return side * side * NAIVE_BYTES_PER_PIXEL < 0.8 * psutil.virtual_memory().available


def scaling(sizes: list[int], work: Path) -> list[dict]:
    rows = []
    for side in sizes:
        scene = common.write_scene(work / f"scene_{side}.tif", side)
        row = {"engine": "geoseg", "side": side, "megapixels": round(side * side / 1e6, 1)}
        row |= run_worker("geoseg", scene, work / f"engine_{side}.gpkg", None, 1)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
        row = {"engine": "naive", "side": side, "megapixels": round(side * side / 1e6, 1)}
        if naive_fits(side):
            row |= run_worker("naive", scene, work / f"naive_{side}.tif", None, 1)
        else:
            row["skipped"] = (f"needs ~{side * side * NAIVE_BYTES_PER_PIXEL / 2**30:.1f} GiB "
                              "(float64 canvases), more than 80% of the available memory")
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    first = next(r for r in rows if r["engine"] == "geoseg")
    for r in rows:
        if "peak_rss_mb" in r:
            r["rss_vs_smallest_geoseg"] = round(r["peak_rss_mb"] / first["peak_rss_mb"], 2)
    return rows


def overhead(side: int, model: str, work: Path) -> dict:
    scene = common.write_scene(work / f"scene_{side}.tif", side)
    row = {"engine": f"geoseg + {model}", "side": side, "megapixels": round(side * side / 1e6, 2)}
    row |= run_worker("geoseg", scene, work / f"overhead_{side}.gpkg", model, None)
    row["mpx_per_s"] = round(side * side / 1e6 / row["run_s"], 3)
    print(json.dumps(row), file=sys.stderr)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="5k,10k,20k", help="square sides, k = 1000 px (default: 5k,10k,20k)")
    ap.add_argument("--overhead-size", default="2k", help="scene side for the overhead run (default 2k)")
    ap.add_argument("--overhead-model", default="compact", help="model for the overhead run (default compact)")
    ap.add_argument("--overhead-only", action="store_true")
    ap.add_argument("--no-overhead", action="store_true")
    ap.add_argument("--workdir", help=f"where inputs are cached (default {common.DEFAULT_WORKDIR})")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--worker", choices=["geoseg", "naive"], help=argparse.SUPPRESS)
    ap.add_argument("--scene", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        result = geoseg_worker(args.scene, args.out, args.model) if args.worker == "geoseg" else naive_worker(args.scene, args.out)
        print(json.dumps(result))
        return

    work = common.workdir(args.workdir)
    rows = [] if args.overhead_only else scaling(common.parse_sizes(args.sizes), work)
    if not args.no_overhead:
        rows.append(overhead(common.parse_sizes(args.overhead_size)[0], args.overhead_model, work))
    print(common.markdown_table(rows, [
        "engine", "side", "wall_s", "cpu_s", "peak_rss_mb", "rss_vs_smallest_geoseg", "tiles", "model_s",
        "infer_s", "vectorize_s", "gpkg_write_s", "overhead_fraction", "skipped",
    ]))
    if not args.no_save:
        name = "engine_overhead" if args.overhead_only else "engine"
        path = common.save_results(name, common.invocation(), rows,
                                   {"tile": TILE, "overlap": OVERLAP, "batch": BATCH})
        print(f"\nwritten: {path.relative_to(common.REPO)}")


if __name__ == "__main__":
    main()
