"""Measured runs, one per process (the driver scripts start them through common.measure).

    python benchmarks/workers.py geoseg --scene S --out O.gpkg [--model NAME|DIR] [--query Q]
    python benchmarks/workers.py naive  --scene S --out O.tif

Each prints one JSON line with its own timings:

- geoseg: `pipeline.segment` on a loaded model, with every predict() call timed, and the
  vectorising and GeoPackage writing steps timed by wrapping them; without --model the oracle
  (benchmarks/oracle.py) runs with the default model's plan (256 px tiles, 64 px overlap, batch 4).
- naive: the full-canvas pattern of geoai's `predict_geotiff` (facts, not code, carried over):
  windowed reads, float64 `output_sum` and `weight_sum` canvases over the whole scene, one
  division at the end, one float32 GeoTIFF written; same oracle, tiles and batch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

TILE, OVERLAP, BATCH = 256, 64, 4


class TimedModel:
    """Wraps a segmenter and adds up the wall time spent inside predict()."""

    def __init__(self, model) -> None:
        self.model, self.info, self.device = model, model.info, model.device
        self.seconds, self.calls, self.tiles = 0.0, 0, 0

    def predict(self, images, queries):
        start = time.perf_counter()
        out = self.model.predict(images, queries)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        self.tiles += int(images.shape[0])
        return out


class PhaseMemory:
    """Samples this process's RSS every 20 ms and keeps the maximum per phase.

    ru_maxrss gives one peak for the whole process; this says which stage reached it. Stages,
    in order: "infer" (reading, model, blending, and the polygons built beside them) until the
    last tile is blended; "vectorize" from then until the GeoPackage writing starts (what is left
    of the polygons, their fields, the layers); "write" from then to the end.
    """

    def __init__(self) -> None:
        import threading

        import psutil

        self.process = psutil.Process()
        self.phase = "infer"
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.sample()

    def sample(self) -> None:
        rss = self.process.memory_info().rss
        if rss > self.peaks.get(self.phase, 0):
            self.peaks[self.phase] = rss

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {f"peak_rss_{k}_mb": round(v / 2**20, 1) for k, v in self.peaks.items()}


def timed(module, name: str, totals: dict, memory: PhaseMemory | None = None, stage: str | None = None) -> None:
    """Replace module.name with a wrapper that adds its wall time to totals[name] (and, with
    `memory`, starts `stage` when it is first called; stages never go back)."""
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        if memory is not None and memory.phase != stage:
            memory.sample()
            memory.phase = stage
        try:
            return original(*args, **kwargs)
        finally:
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - start

    setattr(module, name, wrapper)


def geoseg_worker(scene: str, out: str, model_name: str | None, query: str, batch: int | None) -> dict:
    import torch

    from geoseg.io import gpkg
    from geoseg.run import pipeline

    start = time.perf_counter()
    if model_name is None:
        from oracle import SeparableConvOracle

        model = SeparableConvOracle(tile_size=TILE, overlap=OVERLAP)
        batch = batch or BATCH
    else:
        from geoseg.models.registry import load_segmenter

        model = load_segmenter(model_name, device="cpu")
        # One tile first, so the query's encoding (a cache miss loads the text encoder) counts as
        # loading, not as the warm run's model time.
        tile = model.info.tile_size
        model.predict(torch.zeros(1, model.info.bands, tile, tile), [query])
    load_s = time.perf_counter() - start
    timer = TimedModel(model)
    totals: dict[str, float] = {}
    memory = PhaseMemory()
    # The polygons are built beside the inference (pipeline.polygons_beside); `streamed` waits for
    # what is left of them once the last tile is blended: the vectorising the run still waits for.
    timed(pipeline, "streamed", totals, memory, "vectorize")
    timed(gpkg, "write_geopackage", totals, memory, "write")
    opts = pipeline.RunOptions(progress=False, overwrite=True, batch_size=batch)
    start = time.perf_counter()
    summary = pipeline.segment([scene], [query], out, opts, segmenter=timer)
    wall = time.perf_counter() - start
    phases = memory.stop()
    vec, write = totals.get("streamed", 0.0), totals.get("write_geopackage", 0.0)
    return {**phases,
        "run_s": round(wall, 3), "model_s": round(timer.seconds, 3), "vectorize_s": round(vec, 3),
        "gpkg_write_s": round(write, 3), "infer_s": round(wall - vec - write, 3),
        "overhead_fraction": round(1 - timer.seconds / wall, 4), "tiles": timer.tiles,
        "features": sum(layer.features for layer in summary.layers), "load_s": round(load_s, 3),
        "model": model.info.name, "tile_size": model.info.tile_size, "overlap": model.info.overlap,
        "weights_sha256": (model.info.weights_sha256 or "")[:16],
        "torch_threads": torch.get_num_threads(),
    }


def naive_worker(scene: str, out: str) -> dict:
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["geoseg", "naive"])
    ap.add_argument("--scene", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", help="registry name or directory (geoseg only; default: the oracle)")
    ap.add_argument("--query", default="buildings")
    ap.add_argument("--batch-size", type=int)
    args = ap.parse_args()
    if args.kind == "geoseg":
        result = geoseg_worker(args.scene, args.out, args.model, args.query, args.batch_size)
    else:
        result = naive_worker(args.scene, args.out)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
