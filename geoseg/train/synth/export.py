"""Write a referring-segmentation dataset of synthetic scenes to disk.

Layout of `out_dir`:

    images/000000.png            (or .tif; pairs: images/000000_before.png + _after.png)
    masks/000000_00.png          single band, 0 = background, 255 = target
    manifest.jsonl               one JSON object per (image, expression)

Manifest lines: {"image": "images/000000.png", "mask": "masks/000000_00.png",
"expression": "red-roofed houses", "empty": false, "concept": "building/red_roof", "kind":
"attribute", "synonym": "building:houses", "attribute": "red_roof", "gsd": 0.5, "seed": ...,
"season": "summer"}; change datasets have "before" and "after" instead of "image". "empty": true
marks a query whose target is absent from the image (all-zero mask), so a model learns to answer
"nothing".
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio

from .change import PairArrays, render_pair
from .palette import SEASONS
from .render import SceneArrays, render_scene
from .vocab import DEFAULT_CHANGE_KINDS, PHRASES, Phrase, normalise

DEFAULT_GSDS = (0.3, 0.5, 1.0, 2.0)


def write_png(path: Path, array: np.ndarray) -> None:
    """H x W (x B) uint8 array as a PNG (GDAL's PNG driver, no georeferencing)."""
    arr = array[..., None] if array.ndim == 2 else array
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="PNG", height=arr.shape[0], width=arr.shape[1], count=arr.shape[2],
                           dtype="uint8") as dst:
            dst.write(np.moveaxis(arr, 2, 0))


def write_image(path: Path, image: np.ndarray) -> None:
    if path.suffix == ".png":
        write_png(path, image)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="GTiff", height=image.shape[0], width=image.shape[1], count=image.shape[2],
                           dtype=image.dtype.name, compress="deflate") as dst:
            dst.write(np.moveaxis(image, 2, 0))


def select_phrases(phrases: Sequence[str | Phrase] | None, exclude: Sequence[str | Phrase], change: bool) -> list[Phrase]:
    """The phrase pool: given phrases (or the whole vocabulary) of the right kind, minus exclusions."""
    index = {normalise(p.text): p for p in PHRASES}
    if phrases is None:
        pool = list(PHRASES)
    else:
        pool = []
        for p in phrases:
            key = normalise(p.text if isinstance(p, Phrase) else p)
            if key not in index:
                raise KeyError(f"phrase {p!r} is not in the synthetic vocabulary")
            pool.append(index[key])
    dropped = {normalise(p.text if isinstance(p, Phrase) else p) for p in exclude}
    pool = [p for p in pool if normalise(p.text) not in dropped and (p.kind == "change") == change]
    if not pool:
        raise ValueError("no phrase left to query with: check phrases/exclude and the change flag")
    return pool


def pick_queries(rng: np.random.Generator, pool: list[Phrase], present: dict[str, bool], k: int,
                 empty_fraction: float) -> list[Phrase]:
    """k phrases: present targets first (one per concept, shuffled), then some absent ones."""
    by_concept: dict[str, list[Phrase]] = {}
    for p in pool:
        by_concept.setdefault(p.concept, []).append(p)
    concepts = list(by_concept)
    rng.shuffle(concepts)
    full = [c for c in concepts if present[c]]
    empty = [c for c in concepts if not present[c]]
    n_empty = min(len(empty), int(round(k * empty_fraction)))
    chosen = full[: k - n_empty] + empty[:n_empty]
    if len(chosen) < k:  # not enough present concepts: fill with more empty ones
        chosen += empty[n_empty : n_empty + k - len(chosen)]
    return [by_concept[c][int(rng.integers(0, len(by_concept[c])))] for c in chosen]


@dataclass(frozen=True)
class Expression:
    """A query phrase with its truth mask on a scene (or pair) and whether the target is absent."""

    phrase: Phrase
    mask: np.ndarray
    empty: bool

    @property
    def text(self) -> str:
        return self.phrase.text


def expressions_for(target: SceneArrays | PairArrays, *, k: int | None = None, rng: np.random.Generator | None = None,
                    empty_fraction: float = 0.2, phrases: Sequence[str | Phrase] | None = None,
                    exclude: Sequence[str | Phrase] = ()) -> list[Expression]:
    """Queries with truth masks for a rendered scene (scene phrases) or pair (change phrases).

    k=None: every phrase of the pool. Otherwise k phrases, one per concept, mostly of targets
    present in the image and `empty_fraction` of absent ones (all-zero masks).
    """
    is_pair = isinstance(target, PairArrays)
    pool = select_phrases(phrases, exclude, change=is_pair)
    masks = {c: target.mask(c) for c in {p.concept for p in pool}}
    present = {c: bool(m.any()) for c, m in masks.items()}
    chosen = pool if k is None else pick_queries(rng or np.random.default_rng(0), pool, present, k, empty_fraction)
    return [Expression(p, masks[p.concept], not present[p.concept]) for p in chosen]


def export_dataset(out_dir: Path | str, n: int, seed: int, *, size: int = 256,
                   gsd_choices: Sequence[float] = DEFAULT_GSDS, phrases: Sequence[str | Phrase] | None = None,
                   exclude: Sequence[str | Phrase] = (), change: bool = False, queries_per_image: int = 6,
                   empty_fraction: float = 0.2, image_format: str = "png", bands: int = 3,
                   seasons: Sequence[str] = SEASONS, change_kinds: Sequence[str] = DEFAULT_CHANGE_KINDS) -> Path:
    """Render n scenes (or pairs with `change=True`) and write images, masks and manifest.jsonl.

    Deterministic for (n, seed, options). `phrases` restricts the queries (default: the whole
    vocabulary of the right kind; change phrases of kinds not in `change_kinds` come out as empty
    queries); `exclude` holds phrases out, e.g. a synonym or attribute set
    (`[p for p in PHRASES if p.attribute == "red_roof"]`). Returns the manifest path.
    """
    if image_format not in ("png", "tif"):
        raise ValueError(f"image_format must be 'png' or 'tif', not {image_format!r}")
    if image_format == "png" and bands != 3:
        raise ValueError("PNG images hold RGB only; use image_format='tif' for 4 bands")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    pool = select_phrases(phrases, exclude, change)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    manifest = out_dir / "manifest.jsonl"
    with manifest.open("w") as fh:
        for i in range(n):
            item_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
            gsd = float(gsd_choices[int(rng.integers(0, len(gsd_choices)))])
            season = seasons[int(rng.integers(0, len(seasons)))]
            present_of: PairArrays | SceneArrays
            if change:
                pair = render_pair(item_seed, size, size, gsd, bands=bands, season_before=season,
                                   change_kinds=tuple(change_kinds))
                images = {"before": pair.before.image, "after": pair.after.image}
                mask_of, present_of = pair.mask, pair
            else:
                scene = render_scene(item_seed, size, size, gsd, bands=bands, season=season)
                images = {"image": scene.image}
                mask_of, present_of = scene.mask, scene
            masks = {c: mask_of(c) for c in {p.concept for p in pool}}
            present = {c: bool(m.any()) for c, m in masks.items()}
            refs = {}
            for key, img in images.items():
                suffix = "" if key == "image" else f"_{key}"
                rel = f"images/{i:06d}{suffix}.{image_format}"
                write_image(out_dir / rel, img)
                refs[key] = rel
            for q, phrase in enumerate(pick_queries(rng, pool, present, queries_per_image, empty_fraction)):
                rel_mask = f"masks/{i:06d}_{q:02d}.png"
                write_png(out_dir / rel_mask, masks[phrase.concept].astype(np.uint8) * 255)
                line = {**refs, "mask": rel_mask, "expression": phrase.text, "empty": not present[phrase.concept],
                        "concept": phrase.concept, "kind": phrase.kind, "synonym": phrase.synonym,
                        "attribute": phrase.attribute, "gsd": gsd, "seed": item_seed, "season": season}
                if change:
                    assert isinstance(present_of, PairArrays)
                    line["season_after"] = present_of.after.season
                fh.write(json.dumps(line) + "\n")
    return manifest
