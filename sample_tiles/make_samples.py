"""Regenerate the committed sample tiles and their README from geoseg.train.synth.

    .venv/bin/python sample_tiles/make_samples.py

Every file is deterministic for its seed. The script checks that each scene still contains what
the README promises (so a change to the generator cannot silently empty the demo) and rewrites
sample_tiles/README.md with the facts of the files it wrote.
"""

from __future__ import annotations

import sys
from pathlib import Path

import rasterio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from geoseg.train.synth import CLASS_NAMES, SynthPair, SynthScene, write_pair, write_scene  # noqa: E402

COMMAND = ".venv/bin/python sample_tiles/make_samples.py"

SCENES = [
    # name, seed, size, gsd, options, what it must contain (class -> minimum instance count)
    ("town_utm_0p5m", 21, 1024, 0.5, {"crs": "EPSG:32633"},
     {"building": 100, "damaged_building": 10, "road": 10, "water": 1, "tree": 20, "field": 5}),
    ("village_4326_1m", 10, 512, 1.0, {"crs": "EPSG:4326", "origin": (15.02, 45.01)},
     {"building": 30, "road": 3, "field": 3}),
    ("suburb_utm_1m_u16_rgbn_nodata", 31, 512, 1.0,
     {"crs": "EPSG:32633", "dtype": "uint16", "bands": 4, "nodata_border": True, "origin": (455_000.0, 4_983_000.0)},
     {"building": 5, "road": 2, "field": 5, "water": 1}),
]
PAIR = ("pair", 20, 512, 0.5, {"crs": "EPSG:32633", "after_grid": "offset", "origin": (453_000.0, 4_984_000.0)},
        {"new_buildings": 400.0, "new_roads": 1000.0})  # change kind -> minimum area in view, m2


def describe_file(path: Path) -> str:
    with rasterio.open(path) as src:
        res = f"{src.res[0]:.3g}" if src.crs.is_projected else f"{src.res[0]:.3e} x {src.res[1]:.3e} deg"
        nodata = f", nodata {src.nodata:g}" if src.nodata is not None else ""
        corner = f"top-left ({src.transform.c:.10g}, {src.transform.f:.10g})"
        return (f"{src.width} x {src.height} px, {src.count} band(s) {', '.join(src.descriptions)}, {src.dtypes[0]}, "
                f"{src.crs.to_string()}, pixel {res}{' m' if src.crs.is_projected else ''}, {corner}{nodata}, "
                f"{path.stat().st_size / 1e6:.1f} MB")


def counts(scene: SynthScene | SynthPair, when: str = "") -> dict[str, int]:
    arrays = scene.arrays if isinstance(scene, SynthScene) else getattr(scene.arrays, when)
    return {name: len(arrays.select(name)) for name in CLASS_NAMES}


def check(name: str, got: dict[str, int], want: dict[str, int]) -> None:
    short = {k: (got.get(k, 0), n) for k, n in want.items() if got.get(k, 0) < n}
    if short:
        raise SystemExit(f"{name}: too few instances (got, wanted) {short}; pick another seed in {__file__}")


def main() -> None:
    lines = [
        "# Sample tiles",
        "",
        "Small synthetic GeoTIFFs with exact ground truth, made by `geoseg.train.synth` (procedural scenes:",
        "buildings with red/grey/white/... roofs, some damaged or reduced to rubble, paved and dirt roads,",
        "a river or lake, trees and woods with shadows, striped fields, bare ground). `make demo` segments",
        "`town_utm_0p5m.tif` with the query \"buildings\".",
        "",
        f"Regenerate everything (deterministic, well under a minute): `{COMMAND}`",
        "",
        "Each `*_truth.gpkg` has one layer per class (`building`, `damaged_building`, `road`, `water`, `tree`,",
        "`field`, `bare`) in the tile's CRS, with attributes (`subclass`, `roof_colour`, `damage`, `large`,",
        "`paved`, `near_river`, `along_road`, `area_m2`, ...). A destroyed building (rubble) is in",
        "`damaged_building` only; a damaged one (broken roof) is in both `building` and `damaged_building`.",
        "",
    ]
    for name, seed, size, gsd, opts, want in SCENES:
        path = HERE / f"{name}.tif"
        scene = write_scene(path, seed, size, size, gsd, truth_path=HERE / f"{name}_truth.gpkg", **opts)
        got = counts(scene)
        check(name, got, want)
        lines += [f"## `{name}.tif`", "",
                  f"- {describe_file(path)}",
                  f"- seed {seed}, gsd {gsd} m, options `{opts}`",
                  f"- truth `{name}_truth.gpkg`: " + ", ".join(f"{k} {v}" for k, v in got.items() if v),
                  ""]
        print(name, got)
    name, seed, size, gsd, opts, needed = PAIR
    pair = write_pair(HERE, seed, size, size, gsd, prefix=f"{name}_", **opts)
    ct = pair.change_truth
    changes = {k: int((ct["change"] == k).sum()) for k in pair.arrays.kinds}
    areas = {k: float(ct.loc[ct["change"] == k, "area_m2"].sum()) for k in pair.arrays.kinds}
    missing = {k: round(areas.get(k, 0.0)) for k, least in needed.items() if areas.get(k, 0.0) < least}
    if missing:
        raise SystemExit(f"pair: too little {missing} (m2) in seed {seed}; pick another seed in {__file__}")
    lines += [f"## `{name}_before.tif` / `{name}_after.tif`", "",
              f"- before: {describe_file(pair.before_path)} ({pair.arrays.before.season})",
              f"- after: {describe_file(pair.after_path)} ({pair.arrays.after.season}), written on an offset grid "
              "(sub-pixel shift, 0.6 m pixels): align it to the before grid before comparing pixels",
              f"- seed {seed}, gsd {gsd} m, options `{opts}`",
              "- changes: " + ", ".join(f"{k} {v} ({areas[k]:.0f} m2)" for k, v in changes.items()),
              f"- truth `{name}_truth.gpkg`: one layer per change kind (polygons in the before CRS) and",
              "  `before_<class>` / `after_<class>` layers",
              ""]
    print(name, changes)
    (HERE / "README.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
