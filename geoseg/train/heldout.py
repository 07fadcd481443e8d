"""Write the held-out evaluation sets of the model card (synthetic scenes, seeds unseen in training).

    python -m geoseg.train.heldout data/heldout          # then, e.g.
    geoseg evaluate compact data/heldout/seen --json
    python -m geoseg.train.heldout data/validation --validation

Sets (each a folder with manifest.jsonl, see docs/dataset-format.md):
    seen        training wordings on new scenes
    synonym     held-out synonyms ("houses", "homes", "streets", ...) on new scenes
    attribute   held-out attribute set (white roofs) on new scenes
    change      change wordings on new before/after pairs
    change-heldout  held-out change wordings ("added buildings", "inundated fields", ...)
With --validation, the sets for choosing between training runs instead (never the held-out seeds):
    validation-a, validation-b   training wordings on new scenes, like `seen` (40 and 80 scenes)
    validation-change            change wordings on new pairs, like `change` (40 pairs)
Scenes are drawn by geoseg.train.synth.export_dataset from its own seed sequence
(SeedSequence([seed, i])), unrelated to the training stream (data.seed * 1_000_003 + k).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from geoseg.train.queries import queries_by_split

SETS = {  # name -> (query split, seed, change pairs?, scenes per n)
    "seen": ("train", 9001, False, 1),
    "synonym": ("synonym", 9002, False, 1),
    "attribute": ("attribute", 9003, False, 1),
    "change": ("change", 9004, True, 1),
    "change-heldout": ("change_heldout", 9005, True, 1),
}
VALIDATION_SETS = {
    "validation-a": ("train", 9101, False, 1),
    "validation-b": ("train", 9201, False, 2),
    "validation-change": ("change", 9301, True, 1),
}


def export_heldout_sets(out_dir: str | Path, n: int = 40, size: int = 256, queries_per_image: int = 6,
                        empty_fraction: float = 0.25, names: tuple[str, ...] = tuple(SETS)) -> dict[str, Path]:
    from geoseg.train.synth.export import export_dataset

    splits = queries_by_split()
    out = {}
    for name in names:
        split, seed, change, scale = {**SETS, **VALIDATION_SETS}[name]
        phrases = sorted({q.text for q in splits[split]})
        out[name] = export_dataset(
            Path(out_dir) / name, scale * n, seed, size=size, phrases=phrases, change=change,
            queries_per_image=queries_per_image, empty_fraction=empty_fraction,
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("-n", type=int, default=40, help="scenes (or pairs) per set")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--validation", action="store_true", help="write the validation sets instead")
    args = parser.parse_args()
    names = tuple(VALIDATION_SETS if args.validation else SETS)
    for name, path in export_heldout_sets(args.out_dir, args.n, args.size, names=names).items():
        print(name, path)


if __name__ == "__main__":
    main()
