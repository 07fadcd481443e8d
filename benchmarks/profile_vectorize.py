"""Where the library's vectorising time goes: `vectorize_probabilities` + `write_geopackage`.

    nice -n 19 .venv/bin/python benchmarks/profile_vectorize.py --mask clean --side 6k
    nice -n 19 .venv/bin/python benchmarks/profile_vectorize.py --mask noisy --side 6k --top 20

cProfile, timed in CPU seconds (steadier than wall time on a shared machine), of the two library
calls `geoseg vectorize` makes, on a cached benchmark mask (benchmarks/common.py). No CLI and no
torch: start-up is `bench_vectorize.py`'s business. Prints the CPU seconds of a few named steps
and the functions with the most own time.
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
    "reading blocks": ("geoseg/vectorize.py", "_read_block"),
    "labelling (probability rasters, 8-connectivity)": ("_measurements.py", "label"),
    "rasterio.features.shapes (GDAL's polygoniser)": ("rasterio/features.py", "shapes"),
    "seam dissolve (_canonical)": ("geoseg/vectorize.py", "_canonical"),
    "vectorize_probabilities (all of it)": ("geoseg/vectorize.py", "vectorize_probabilities"),
    "pyogrio write": ("pyogrio/raw.py", "write"),
    "write_geopackage (all of it)": ("geoseg/io/gpkg.py", "write_geopackage"),
}


def profile(mask: Path) -> tuple[pstats.Stats, float, int]:
    from geoseg import vectorize
    from geoseg.io import gpkg
    from geoseg.queries import layer_name_for

    prof = cProfile.Profile(time.process_time)
    with tempfile.TemporaryDirectory(prefix="geoseg-prof-") as tmp:
        prof.enable()
        gdf = vectorize.vectorize_probabilities(mask)
        gdf["query"] = gdf["target"] = mask.stem
        layer = gpkg.LayerData(layer_name_for(mask.stem), gdf, mask.stem, {"command": "profile"})
        gpkg.write_geopackage(Path(tmp) / "out.gpkg", [layer])
        prof.disable()
    stats = pstats.Stats(prof)
    total = sum(tt for (_, _, tt, _, _) in stats.stats.values())
    return stats, total, len(gdf)


def step_seconds(stats: pstats.Stats) -> dict[str, float]:
    out = {}
    for label, (suffix, name) in STEPS.items():
        out[label] = sum(ct for (file, _, fn), (_, _, _, ct, _) in stats.stats.items()
                         if file.endswith(suffix) and fn == name)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mask", choices=["clean", "noisy"], default="clean")
    ap.add_argument("--side", default="6k")
    ap.add_argument("--top", type=int, default=12, help="functions listed by own time")
    ap.add_argument("--workdir", help=f"where inputs are cached (default {common.DEFAULT_WORKDIR})")
    args = ap.parse_args()
    side = common.parse_sizes(args.side)[0]
    mask = common.write_mask(common.workdir(args.workdir) / f"mask_{args.mask}_{side}.tif", side, args.mask)
    stats, total, features = profile(mask)
    print(f"{args.mask} mask {side}², {features:,} polygons: {total:.2f} CPU s profiled "
          "(cProfile adds overhead; read the shares)")
    for label, seconds in step_seconds(stats).items():
        print(f"  {label:<50} {seconds:7.2f} s  {100 * seconds / total:5.1f}%")
    print()
    stats.sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
