"""Choose (and measure) the unknown-query rule of a compact checkpoint: one command per model.

    # shipped compact (0.7.1): the inventory of what its last phase trained, the rule, the report
    nice -n 19 .venv/bin/python docs/models/unknown_queries.py geoseg/models/compact/weights/compact \\
        --train-config configs/compact-real-7.yaml --measure
    # shipped compact-change
    nice -n 19 .venv/bin/python docs/models/unknown_queries.py geoseg/models/compact/weights/compact-change \\
        --train-config configs/compact-change-real-4.yaml
    # a new model: its last phase's config (e.g. configs/compact-real-8.yaml)

1. The inventory: derived from `--train-config` (geoseg.train.inventory.inventory_for: the concepts
   and wordings that config trains), or, without it, the one already in the checkpoint's config.json.
2. The rule, chosen on UNRELATED_TUNE and KNOWN_TUNE only (geoseg.train.queries, fixed before
   training): min_similarity = the midpoint between the highest unrelated and the lowest known
   similarity to the nearest trained wording when the two separate, otherwise the largest threshold
   that warns no KNOWN_TUNE wording (geoseg.train.inventory.choose_rule). Written into config.json.
3. The report on UNRELATED_EVAL and KNOWN_EVAL (never used to choose): similarity, nearest wording,
   warned or not.
4. With --measure (segment models): `geoseg.segment` on the real test scenes of ../shared/data
   (each cropped to at most --window px), every UNRELATED_EVAL concept and KNOWN_EVAL wording asked
   in one run per scene; counts the runs that draw polygons without the unknown-query warning (the
   target: at most 10 % of the unrelated runs) and the KNOWN_EVAL wordings that are warned (target: none).

The numbers go to stdout as Markdown (docs/models/compact.md, "Queries it does not know").
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from geoseg.models.compact.config import CompactConfig  # noqa: E402
from geoseg.models.compact.text import shared_text_encoder  # noqa: E402
from geoseg.train.inventory import choose_rule, inventory_for, score, write_inventory  # noqa: E402
from geoseg.train.queries import KNOWN_EVAL, KNOWN_TUNE, UNRELATED_EVAL, UNRELATED_TUNE  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
# (file, bands to read): the real test scenes (../shared/data/README.md); Landsat's are SWIR1,NIR,R,G
SCENES = (
    ("georef-naip-pair/m_4709963_se_14_1_20200831.tif", None),
    ("georef-landsat-pucallpa/2020.tif", (3, 4, 2)),
    ("spacenet-roads-solaris/road_mask_input.tif", None),
    ("georef-rasterio/RGB.byte.tif", None),
)


def table(title: str, rows: list) -> None:
    print(f"\n{title}\n\n| query | similarity | nearest trained wording | warned |\n|---|---|---|---|")
    for s in sorted(rows, key=lambda r: r.similarity):
        print(f"| {s.query} | {s.similarity:.3f} | {s.nearest} | {'yes' if s.warned else 'no'} |")


def crop(path: Path, window: int, out: Path) -> Path:
    """The scene's central window of at most `window` x `window` pixels, as a GeoTIFF in `out`."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(path) as src:
        w, h = min(window, src.width), min(window, src.height)
        win = Window((src.width - w) // 2, (src.height - h) // 2, w, h)
        profile = src.profile | {"width": w, "height": h, "transform": src.window_transform(win), "driver": "GTiff"}
        for key in ("blockxsize", "blockysize", "tiled", "compress"):
            profile.pop(key, None)
        target = out / f"{path.parent.name}-{path.stem}.tif"
        with rasterio.open(target, "w", **profile) as dst:
            dst.write(src.read(window=win))
    return target


def measure(checkpoint: Path, window: int) -> None:
    from geoseg.models.compact.segmenter import load_compact_segmenter
    from geoseg.options import RunOptions
    from geoseg.run import pipeline

    model = load_compact_segmenter(checkpoint)
    queries = list(UNRELATED_EVAL) + list(KNOWN_EVAL)
    drawn_unwarned, unrelated_runs, known_warned = [], 0, set()
    print(f"\nEnd to end: {checkpoint} on {len(SCENES)} real scenes (central {window} px windows), "
          f"{len(UNRELATED_EVAL)} unrelated + {len(KNOWN_EVAL)} held-out known queries, one run per scene and query\n")
    print("| scene | GSD warning | unrelated runs with polygons (warned / not warned) | known runs with polygons | seconds |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, bands in SCENES:
            path = DATA / name
            if not path.is_file():
                print(f"| {name} | missing: skipped | | | |")
                continue
            scene = crop(path, window, Path(tmp))
            t0 = time.perf_counter()
            summary = pipeline.segment([scene], queries, Path(tmp) / "out.gpkg",
                                       RunOptions(overwrite=True, progress=False, bands=bands), segmenter=model)
            seconds = time.perf_counter() - t0
            known = {c["query"]: c["known"] for c in summary.query_check or []}
            features = {layer.query: layer.features for layer in summary.layers}
            drawn_w = drawn_n = known_here = 0
            for q in UNRELATED_EVAL:
                unrelated_runs += 1
                if features[q]:
                    drawn_w += known[q] is False
                    if known[q]:
                        drawn_n += 1
                        drawn_unwarned.append(f"{q} ({path.parent.name}: {features[q]} polygons)")
            for q in KNOWN_EVAL:
                known_here += bool(features[q])
                if not known[q]:
                    known_warned.add(q)
            gsd = "yes" if any("trained for" in w for w in summary.warnings) else "no"
            print(f"| {path.parent.name}/{path.name} | {gsd} | {drawn_w} / {drawn_n} | {known_here} / {len(KNOWN_EVAL)} | {seconds:.0f} |")
    share = 100 * len(drawn_unwarned) / max(1, unrelated_runs)
    print(f"\nUnrelated runs that draw polygons without the warning: {len(drawn_unwarned)} / {unrelated_runs} "
          f"= {share:.1f} % (target <= 10 %): {', '.join(drawn_unwarned) or 'none'}")
    print(f"KNOWN_EVAL wordings warned: {len(known_warned)} / {len(KNOWN_EVAL)} (target 0): "
          f"{', '.join(sorted(known_warned)) or 'none'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path, help="checkpoint directory (config.json + model.safetensors)")
    parser.add_argument("--train-config", help="the training config whose concepts the checkpoint learnt (its last phase)")
    parser.add_argument("--measure", action="store_true", help="also run the model on the real test scenes")
    parser.add_argument("--window", type=int, default=512, help="crop each scene to at most this many pixels a side")
    args = parser.parse_args()

    config = CompactConfig.load(args.checkpoint)
    if args.train_config:
        from geoseg.train.config import load_train_config

        inventory = inventory_for(load_train_config(args.train_config))
    elif config.inventory is not None:
        inventory = config.inventory
    else:
        sys.exit(f"{args.checkpoint}: config.json declares no inventory; give --train-config")
    text = shared_text_encoder(config.text_encoder, config.max_text_tokens)
    rule = choose_rule(inventory, text)
    inventory = write_inventory(args.checkpoint, inventory, rule=rule)
    print(f"# {args.checkpoint} ({config.version}): inventory {inventory.source}")
    print("\n" + ", ".join(f"{c.name} ({c.origin}, {len(c.wordings)} wordings)" for c in inventory.concepts))
    print(f"\nRule: known when similarity >= {rule.min_similarity} ({rule.chosen_on})")
    for title, words in (("UNRELATED_TUNE", UNRELATED_TUNE), ("KNOWN_TUNE", KNOWN_TUNE),
                         ("UNRELATED_EVAL", UNRELATED_EVAL), ("KNOWN_EVAL", KNOWN_EVAL)):
        rows = score(inventory, words, text)
        table(f"{title}: {sum(r.warned for r in rows)} / {len(rows)} warned", rows)
    if args.measure:
        if config.change:
            sys.exit("--measure runs segment models only")
        measure(args.checkpoint, args.window)


if __name__ == "__main__":
    main()
