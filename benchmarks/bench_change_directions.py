"""How compact-change tells the two directions of an undirected change query ("buildings") apart:
each direction's wording ("new ..." / "removed ...", what geoseg runs), another wording, or the same
words with the dates swapped. Numbers in docs/concepts.md, "Change semantics".

    .venv/bin/python benchmarks/bench_change_directions.py --pairs 30

Part 1: rendered pairs with new and demolished buildings (256 px, 0.5 m, seeds from 9100; training
seeds start at data.seed * 1_000_003), pixel IoU at 0.5 against each direction's truth, and how
much of the other direction's truth each direction flags. Part 2: sample_tiles/pair_*.tif through
geoseg.change (default options), the layer's polygons against pair_truth.gpkg.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import geopandas as gpd
import numpy as np
import torch
from shapely.ops import unary_union

from geoseg.models.base import Prediction
from geoseg.models.compact.segmenter import AsksDirections, directed_wording
from geoseg.models.registry import load_segmenter
from geoseg.queries import change_direction
from geoseg.run import pipeline
from geoseg.train.manifest import percentile_stretch
from geoseg.train.synth.change import render_pair

ROOT = Path(__file__).resolve().parents[1]
METHODS = {  # name: ((appeared query, dates swapped), (disappeared query, dates swapped))
    "one mask for both (old)": (("buildings", False), ("buildings", False)),
    "new / removed (runs)": (("new buildings", False), ("removed buildings", False)),
    "new / demolished": (("new buildings", False), ("demolished buildings", False)),
    "new buildings, swapped": (("new buildings", False), ("new buildings", True)),
    "buildings, swapped": (("buildings", False), ("buildings", True)),
}


def tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(percentile_stretch(image[..., :3])).permute(2, 0, 1)[None].float()


def ask(seg, a: torch.Tensor, b: torch.Tensor, cache: dict, q: str, swap: bool) -> np.ndarray:
    """compact-change's answer to `q` (threshold 0.5), the dates swapped when `swap`; once per pair."""
    if (q, swap) not in cache:
        x, y = (b, a) if swap else (a, b)
        cache[q, swap] = seg._predict(x, [q], y).probabilities[0, 0].numpy() > 0.5  # the raw wording
    return cache[q, swap]


def rendered(seg, pairs: int) -> None:
    sums = {m: np.zeros(8) for m in METHODS}  # tp/fp/fn appeared, tp/fp/fn disappeared, cross a, cross d
    px = np.zeros(2)
    used, seed = 0, 9100
    while used < pairs:
        pair = render_pair(seed, 256, 256, 0.5, change_kinds=("new_buildings", "demolished_buildings"))
        seed += 1
        new, dem = pair.change["new_buildings"], pair.change["demolished_buildings"]
        if new.sum() < 100 or dem.sum() < 100:
            continue
        used += 1
        a, b = tensor(pair.after.image), tensor(pair.before.image)
        cache: dict = {}
        px += new.sum(), dem.sum()
        for m, ((qa, sa), (qd, sd)) in METHODS.items():
            pa, pd = ask(seg, a, b, cache, qa, sa), ask(seg, a, b, cache, qd, sd)
            sums[m] += [(pa & new).sum(), (pa & ~new).sum(), (~pa & new).sum(), (pd & dem).sum(), (pd & ~dem).sum(),
                        (~pd & dem).sum(), (pa & dem).sum(), (pd & new).sum()]
    print(f"{used} rendered pairs, seeds 9100..{seed - 1}")
    print("| method | IoU appeared | IoU disappeared | new in disappeared | demolished in appeared |")
    print("|---|---|---|---|---|")
    for m, s in sums.items():
        print(f"| {m} | {s[0] / s[:3].sum():.3f} | {s[3] / s[3:6].sum():.3f} | {s[7] / px[0]:.3f} | {s[6] / px[1]:.3f} |")


def swapped(self, after, before, queries, *, direction="appeared"):
    """compact-change asked for `disappeared` with the appeared wording and the dates swapped."""
    dirs = [direction] * len(queries) if isinstance(direction, str) else list(direction)
    out = []
    for q, d in zip(queries, dirs, strict=True):
        swap = d == "disappeared" and change_direction(q) == "both"
        x, y = (before, after) if swap else (after, before)
        out.append(self._predict(x, [directed_wording(q, "appeared" if swap else d)], y).probabilities[:, 0])
    return Prediction(torch.stack(out, 1))


def sample_pair(seg) -> None:
    tiles = ROOT / "sample_tiles"
    truth = {k: gpd.read_file(tiles / "pair_truth.gpkg", layer=k) for k in ("new_buildings", "demolished_buildings")}
    wording = AsksDirections.predict_change
    for name, method in (("wording", wording), ("dates swapped", swapped)):
        AsksDirections.predict_change = method
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "pair.gpkg"
            pipeline.change(tiles / "pair_before.tif", tiles / "pair_after.tif", ["buildings"], out,
                            pipeline.RunOptions(progress=False), segmenter=seg)
            got = gpd.read_file(out, layer=0)
        for kind, own, other in (("appeared", "new_buildings", "demolished_buildings"),
                                 ("disappeared", "demolished_buildings", "new_buildings")):
            polys = got[got.change_type == kind].to_crs(truth[own].crs)
            mine, union = unary_union(list(polys.geometry)), unary_union(list(truth[own].geometry))
            found = sum(polys.intersects(g).any() for g in truth[own].geometry)
            wrong = sum(polys.intersects(g).any() for g in truth[other].geometry)
            extra = sum(not truth[own].intersects(p).any() for p in polys.geometry)
            print(f"sample pair, {name}: {kind} IoU {mine.intersection(union).area / mine.union(union).area:.3f}, "
                  f"{own} found {found}/{len(truth[own])}, {other} hit {wrong}/{len(truth[other])}, "
                  f"{extra} polygon(s) on no {own}")
    AsksDirections.predict_change = wording


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    seg = load_segmenter("compact-change", device="cpu")
    rendered(seg, args.pairs)
    sample_pair(seg)


if __name__ == "__main__":
    main()
