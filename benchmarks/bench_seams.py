"""Seam quality: IoU within +-32 px of tile seams vs the interior, per blending mode.

The oracle model (benchmarks/oracle.py: a 31 px box filter with zero padding at tile edges, so a
tile's border pixels see less context, as a network's do) has an exact answer: its output on the
whole scene in one piece. Every tiled run is compared with that untiled reference, thresholded
at 0.5, separately in the seam band (pixels within 32 px of a seam) and in the interior (the
rest). A seam is where two neighbouring tiles hand over: the shared edge without overlap, the
middle of the overlap with it.

Variants (256 px tiles, through the public `pipeline.segment(..., probabilities=...)`):
no overlap; 64 px overlap with uniform averaging, with centre cropping, with cosine blending;
128 px overlap with centre cropping and with cosine blending.
Each for two oracles: a 31 px receptive field (fits inside half the overlap, so a centre crop is
exact) and a 97 px one (wider than the overlap, as a real network's effective field is). With
--model, the same for a real model on a real scene, against that model's untiled output (the
whole scene as one tile; the model must accept it) and against the scene's ground truth (--truth),
separately at the seams and in the interior.

    nice -n 19 .venv/bin/python benchmarks/bench_seams.py --side 2048
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

TILE = 256
HALF_BAND = 32
RADII = (15, 48)  # receptive fields of 31 and 97 px
VARIANTS = (  # name, overlap, --blend
    ("no overlap", 0, "none"),
    ("uniform averaging", 64, "average"),
    ("centre crop", 64, "none"),
    ("cosine blending", 64, "cosine"),
    ("centre crop", 128, "none"),
    ("cosine blending", 128, "cosine"),
)


def oracle_factory(radius: int):
    """A new oracle for each tiling (the tiling does not change what it computes)."""
    from oracle import SeparableConvOracle

    return lambda tile, overlap: SeparableConvOracle(tile, overlap, radius)


def model_factory(name: str):
    """The same loaded model for every tiling; the run's options set the tile size and overlap."""
    from geoseg.models.registry import load_segmenter

    model = load_segmenter(name, device="cpu")
    return lambda tile, overlap: model


def probabilities(scene: Path, tile: int, overlap: int, blend: str, make_model, query: str, work: Path):
    """Blended probabilities over `scene` (float32 array) and the run's seconds."""
    import numpy as np
    import rasterio

    from geoseg.run import pipeline, stitch

    out = work / f"p_{tile}_{overlap}_{blend}.tif"
    opts = pipeline.RunOptions(tile_size=tile, overlap=overlap, blend=blend, probabilities=out,
                               progress=False, overwrite=True, batch_size=4 if tile < 1024 else 1)
    start = time.perf_counter()
    pipeline.segment([scene], [query], work / "seams.gpkg", opts, segmenter=make_model(tile, overlap))
    seconds = time.perf_counter() - start
    with rasterio.open(out) as src:
        return src.read(1).astype(np.float32) / stitch.PROB_SCALE, seconds


def seam_lines(length: int, tile: int, overlap: int) -> list[float]:
    """Where consecutive tiles hand over along one axis."""
    from geoseg.run import tiling

    starts = tiling.axis_starts(length, tile, overlap)
    return [(nxt + prev + tile) / 2 for prev, nxt in zip(starts, starts[1:], strict=False)]


def seam_band(shape: tuple[int, int], tile: int, overlap: int, half: int = HALF_BAND):
    import numpy as np

    band = np.zeros(shape, bool)
    for y in seam_lines(shape[0], tile, overlap):
        band[max(0, int(y - half)) : int(y + half)] = True
    for x in seam_lines(shape[1], tile, overlap):
        band[:, max(0, int(x - half)) : int(x + half)] = True
    return band


def iou(a, b) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def components(mask) -> int:
    from scipy import ndimage

    return int(ndimage.label(mask)[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=2048, help="oracle scene side in pixels (default 2048)")
    ap.add_argument("--model", help="also measure this model (registry name or directory) on --model-scene")
    ap.add_argument("--model-scene", type=Path, default=common.REPO / "sample_tiles" / "town_utm_0p5m.tif")
    ap.add_argument("--query", default="buildings", help="query for --model (default buildings)")
    ap.add_argument("--truth", default=str(common.REPO / "sample_tiles" / "town_utm_0p5m_truth.gpkg") + ":building",
                    help="GPKG:LAYER[,LAYER] ground truth of --model-scene for the query (default: the sample's buildings)")
    ap.add_argument("--workdir", help=f"where inputs are cached (default {common.DEFAULT_WORKDIR})")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()

    scene = common.write_scene(common.workdir(args.workdir) / f"scene_{args.side}.tif", args.side)
    rows = []
    with tempfile.TemporaryDirectory(prefix="geoseg-seams-") as tmp:
        work = Path(tmp)
        for radius in RADII:
            rows += compare_variants(scene, oracle_factory(radius), f"oracle, {2 * radius + 1} px field", "q", work)
        if args.model:
            import torch

            torch.set_num_threads(1)  # a shared machine: one thread is the fast and steady choice
            truth = truth_mask(args.model_scene, args.truth) if args.truth else None
            rows += compare_variants(args.model_scene, model_factory(args.model),
                                     f"{args.model} on {args.model_scene.name}", args.query, work, truth)
    print(common.markdown_table(rows, [
        "model", "variant", "overlap", "iou_seam", "iou_interior", "max_abs_error_seam",
        "mean_abs_error_seam", "objects", "objects_untiled", "truth_iou_seam", "truth_iou_interior", "seconds",
    ]))
    if not args.no_save:
        path = common.save_results("seams", common.invocation(), rows,
                                   {"side": args.side, "half_band_px": HALF_BAND, "model": args.model,
                                    "model_scene": str(args.model_scene) if args.model else None,
                                    "truth": args.truth if args.model else None})
        print(f"\nwritten: {path.relative_to(common.REPO)}")


def truth_mask(scene: Path, spec: str):
    """The ground truth 'GPKG:LAYER[,LAYER...]' rasterised on the scene's grid (bool array)."""
    import geopandas as gpd
    import numpy as np
    import rasterio
    from rasterio.features import rasterize

    path, _, layers = spec.rpartition(":")
    with rasterio.open(scene) as src:
        shape, transform, crs = (src.height, src.width), src.transform, src.crs
    geoms = []
    for layer in layers.split(","):
        gdf = gpd.read_file(path, layer=layer)
        geoms += list(gdf.to_crs(crs).geometry if gdf.crs and crs and gdf.crs != crs else gdf.geometry)
    if not geoms:
        return np.zeros(shape, bool)
    return rasterize([(g, 1) for g in geoms], out_shape=shape, transform=transform, dtype="uint8").astype(bool)


def compare_variants(scene: Path, make_model, label, query: str, work: Path, truth=None) -> list[dict]:
    import numpy as np

    from geoseg.io import raster

    side = raster.open_input(scene).native.width
    reference, ref_s = probabilities(scene, side, 0, "cosine", make_model, query, work)
    ref_mask = reference >= 0.5
    ref_objects = components(ref_mask)
    rows = []
    if truth is not None:  # the untiled run against the truth, with the 64 px overlap's seam band
        band = seam_band(ref_mask.shape, TILE, 64)
        rows.append({"model": label, "variant": "untiled (reference)", "tile": side, "overlap": 0,
                     "truth_iou_seam": round(iou(ref_mask[band], truth[band]), 4),
                     "truth_iou_interior": round(iou(ref_mask[~band], truth[~band]), 4),
                     "objects": ref_objects, "seconds": round(ref_s, 2)})
    for name, overlap, blend in VARIANTS:
        prob, seconds = probabilities(scene, TILE, overlap, blend, make_model, query, work)
        mask = prob >= 0.5
        band = seam_band(mask.shape, TILE, overlap)
        if truth is not None:
            rows_truth = {"truth_iou_seam": round(iou(mask[band], truth[band]), 4),
                          "truth_iou_interior": round(iou(mask[~band], truth[~band]), 4)}
        else:
            rows_truth = {}
        rows.append({**rows_truth,
            "model": label, "variant": name, "tile": TILE, "overlap": overlap,
            "blend": blend,
            "iou_seam": round(iou(mask[band], ref_mask[band]), 4),
            "iou_interior": round(iou(mask[~band], ref_mask[~band]), 4),
            "max_abs_error_seam": round(float(np.abs(prob - reference)[band].max()), 3),
            "mean_abs_error_seam": round(float(np.abs(prob - reference)[band].mean()), 4),
            "objects": components(mask), "objects_untiled": ref_objects,
            "seconds": round(seconds, 2), "untiled_seconds": round(ref_s, 2),
            "seam_band_fraction": round(float(band.mean()), 3),
        })
        print(rows[-1], file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()
