"""Where `geoseg vectorize` spends its time, and what a vectorised MultiPolygon step would save.

    .venv/bin/python benchmarks/profile_vectorize.py --mask clean --side 10k
    .venv/bin/python benchmarks/profile_vectorize.py --mask noisy --side 4k

1. cProfile of `revectorize.vectorize_raster` (what the command runs after its imports) on a cached
   benchmark mask: the share of the run spent in polygonising, labelling, the GeoPackage's
   per-feature MultiPolygon conversion, the rest of the GeoPackage writing.
2. The per-feature conversion `gpkg._as_multipolygon` against one vectorised shapely call on the
   same polygons, with a check that both give the same geometries.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

STEPS = {  # label: (file suffix, function name) whose cumulative time is reported
    "rasterio.features.shapes (polygonise)": ("rasterio/features.py", "shapes"),
    "scipy.ndimage.label": ("_measurements.py", "label"),
    "vectorize_probabilities (all of it)": ("geoseg/vectorize.py", "vectorize_probabilities"),
    "gpkg._as_multipolygon (per feature)": ("geoseg/gpkg.py", "_as_multipolygon"),
    "gpkg.write_geopackage (all of it)": ("geoseg/gpkg.py", "write_geopackage"),
}


def profile(mask: Path) -> dict[str, float]:
    from geoseg import revectorize
    from geoseg.options import RunOptions

    opts = RunOptions(progress=False, overwrite=True)
    with tempfile.TemporaryDirectory(prefix="geoseg-prof-") as tmp:
        prof = cProfile.Profile()
        prof.enable()
        revectorize.vectorize_raster(mask, Path(tmp) / "out.gpkg", opts)
        prof.disable()
    stats = pstats.Stats(prof).stats
    total = sum(tt for (_, _, tt, _, _) in stats.values())
    out = {"total (profiled) s": total}
    for label, (suffix, name) in STEPS.items():
        cumulative = sum(ct for (file, _, fn), (_, _, _, ct, _) in stats.items() if file.endswith(suffix) and fn == name)
        out[label] = cumulative
    return out


def multipolygon_comparison(mask: Path) -> tuple[int, float, float, bool]:
    import numpy as np
    import shapely

    from geoseg import gpkg, vectorize

    geoms = vectorize.vectorize_probabilities(mask).geometry.values
    start = time.perf_counter()
    loop = [gpkg._as_multipolygon(g) for g in geoms]
    loop_s = time.perf_counter() - start

    start = time.perf_counter()
    arr = np.asarray(geoms, dtype=object)
    invalid = ~shapely.is_valid(arr)
    if invalid.any():
        arr[invalid] = shapely.make_valid(arr[invalid])
    parts, index = shapely.get_parts(arr, return_index=True)
    areal = (shapely.get_type_id(parts) == 3) & ~shapely.is_empty(parts)
    vectorised = shapely.multipolygons(parts[areal], indices=index[areal])
    vec_s = time.perf_counter() - start
    same = len(vectorised) == len(loop) and all(a.equals(b) for a, b in zip(loop, vectorised, strict=True))
    return len(geoms), loop_s, vec_s, same


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mask", choices=["clean", "noisy"], default="clean")
    ap.add_argument("--side", default="10k")
    ap.add_argument("--workdir", help=f"where inputs are cached (default {common.DEFAULT_WORKDIR})")
    args = ap.parse_args()
    side = common.parse_sizes(args.side)[0]
    mask = common.write_mask(common.workdir(args.workdir) / f"mask_{args.mask}_{side}.tif", side, args.mask)
    shares = profile(mask)
    total = shares.pop("total (profiled) s")
    print(f"{args.mask} mask {side}², profiled run {total:.1f} s (cProfile adds overhead; read the shares)")
    for label, seconds in shares.items():
        print(f"  {label:<42} {seconds:7.2f} s  {100 * seconds / total:5.1f}%")
    n, loop_s, vec_s, same = multipolygon_comparison(mask)
    print(f"MultiPolygon conversion of {n:,} polygons: per feature {loop_s:.2f} s, vectorised {vec_s:.2f} s, "
          f"same geometries: {same}")


if __name__ == "__main__":
    main()
