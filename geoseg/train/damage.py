"""Building damage composited onto real building chips ("damaged buildings", "destroyed buildings").

No real building-damage set with pixel masks can be had here, so damage is painted onto REAL
imagery whose buildings are labelled: each building (a connected component of the building mask)
is left intact, damaged or destroyed, and painted accordingly:

- destroyed: the footprint becomes a heap of rubble (grainy, multi-scale texture of broken
  material with bright and dark fragments and shadows) or a burn scar (charcoal and ash), and the
  debris spills a few pixels past the footprint on an irregular edge;
- damaged: part of the roof is torn open (dark holes with rubble), burnt, or covered by a blue
  tarp; some debris lies beside the walls;
- around some damaged or destroyed houses, the ground is mud or standing flood water.

Masks are the damaged and destroyed FOOTPRINTS (the spill is not the building); intact buildings
in the same chip stay negatives of the damage queries. As in geoseg.train.synth.vocab, a destroyed
building is a damaged building but no longer a building.

Everything is drawn from a `DamageStyle`. `TRAIN_STYLE` and `VALIDATION_STYLE` use disjoint
palettes, grain sizes, tarp hues and spill widths, so a score on validation composites is not the
compositor grading itself. Deterministic from the generator it is given.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from geoseg.train.synth.textures import value_noise

INTACT, DAMAGED, DESTROYED = 0, 1, 2

# Wordings each composited concept is asked with in training (the held-out words of
# geoseg.train.queries never appear). "destroyed" footprints answer both.
DAMAGE_WORDINGS: dict[str, tuple[str, ...]] = {
    "damaged buildings": (
        "damaged buildings", "damaged building", "damaged structures", "buildings affected by the disaster",
        "disaster-damaged buildings", "building damage", "damaged roofs",
    ),
    "destroyed buildings": (
        "destroyed buildings", "collapsed buildings", "rubble", "debris", "ruins", "flattened buildings",
        "completely destroyed buildings",
    ),
}


@dataclass(frozen=True)
class DamageStyle:
    """The parameters one split of composites draws from (RGB colours in [0, 1])."""

    name: str
    rubble: tuple[tuple[float, float, float], ...]  # base colours of broken material
    ash: tuple[tuple[float, float, float], ...]  # burn scar colours
    tarp_hue: tuple[float, float]  # degrees
    grain: tuple[float, float]  # rubble grain size in pixels
    spill: tuple[int, int]  # debris spill past the footprint, pixels
    mud: tuple[tuple[float, float, float], ...]  # mud / flood water around houses
    hole_cell: tuple[float, float]  # size of the torn-roof blobs as a share of the building's side
    piece: tuple[float, float]  # rubble piece size as a share of the building's side


TRAIN_STYLE = DamageStyle(
    name="train",
    rubble=((0.62, 0.60, 0.56), (0.55, 0.52, 0.47), (0.70, 0.66, 0.58), (0.47, 0.45, 0.43)),
    ash=((0.16, 0.15, 0.14), (0.30, 0.29, 0.28)),
    tarp_hue=(205.0, 222.0),
    grain=(0.7, 1.3),
    spill=(3, 8),
    mud=((0.42, 0.35, 0.25), (0.30, 0.30, 0.24)),
    hole_cell=(0.12, 0.25),
    piece=(0.06, 0.11),
)
VALIDATION_STYLE = DamageStyle(
    name="validation",
    rubble=((0.66, 0.50, 0.40), (0.58, 0.54, 0.50), (0.76, 0.72, 0.66)),  # brick, cement, plaster
    ash=((0.22, 0.20, 0.18), (0.40, 0.38, 0.36)),
    tarp_hue=(188.0, 200.0),
    grain=(1.5, 2.4),
    spill=(9, 13),
    mud=((0.50, 0.42, 0.30), (0.24, 0.27, 0.26)),
    hole_cell=(0.3, 0.45),
    piece=(0.13, 0.2),
)


@dataclass
class DamageComposite:
    image: np.ndarray  # H x W x 3 float32 in [0, 1]
    masks: dict[str, np.ndarray]  # "buildings" (intact + damaged), "damaged buildings", "destroyed buildings"
    states: np.ndarray  # per building component: INTACT, DAMAGED or DESTROYED


def composite_damage(
    rng: np.random.Generator,
    image: np.ndarray,
    buildings: np.ndarray,
    style: DamageStyle = TRAIN_STYLE,
    p_damaged: float = 0.35,
    p_destroyed: float = 0.3,
    min_pixels: int = 24,
) -> DamageComposite:
    """Paint damage onto the buildings of one chip; each component larger than `min_pixels` is
    damaged with probability `p_damaged`, destroyed with `p_destroyed`, else left intact."""
    labels, n = ndimage.label(buildings)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    draw = rng.random(n)
    states = np.where(draw < p_destroyed, DESTROYED, np.where(draw < p_destroyed + p_damaged, DAMAGED, INTACT))
    states[sizes[1:] < min_pixels] = INTACT
    out = image.astype(np.float32).copy()
    for i in np.flatnonzero(states != INTACT):
        footprint = labels == i + 1
        if states[i] == DESTROYED:
            _destroy(rng, out, footprint, style)
        else:
            _damage(rng, out, footprint, style)
        if rng.random() < 0.25:
            _surround(rng, out, footprint, buildings, style)
    state_map = np.concatenate([[INTACT], states])[labels]
    damaged = buildings & (state_map != INTACT)
    destroyed = buildings & (state_map == DESTROYED)
    masks = {"buildings": buildings & ~destroyed, "damaged buildings": damaged, "destroyed buildings": destroyed}
    return DamageComposite(np.clip(out, 0, 1).astype(np.float32), masks, states)


# ---- painters ---------------------------------------------------------------------------------
def _pick(rng: np.random.Generator, colours: tuple[tuple[float, float, float], ...]) -> np.ndarray:
    return np.asarray(colours[int(rng.integers(len(colours)))], np.float32) * np.float32(rng.uniform(0.9, 1.1))


def _bbox(mask: np.ndarray, pad: int) -> tuple[slice, slice]:
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return slice(max(0, ys.min() - pad), min(h, ys.max() + pad + 1)), slice(max(0, xs.min() - pad), min(w, xs.max() + pad + 1))


def _pieces(rng: np.random.Generator, h: int, w: int, size: float) -> tuple[np.ndarray, np.ndarray]:
    """Broken pieces about `size` pixels across: a piece id per pixel (nearest of random seeds)
    and the gaps between pieces."""
    seeds = np.ones((h, w), bool)
    n = max(1, int(h * w / size**2))
    seeds[rng.integers(0, h, n), rng.integers(0, w, n)] = False
    _, (iy, ix) = ndimage.distance_transform_edt(seeds, return_indices=True)
    ids = iy * w + ix
    gaps = (ids != np.roll(ids, 1, 0)) | (ids != np.roll(ids, 1, 1))
    return ids, gaps


def _rubble_texture(rng: np.random.Generator, h: int, w: int, style: DamageStyle, roof: np.ndarray, size: float) -> np.ndarray:
    """Broken material (h x w x 3): pieces of the old roof and of debris colours, each lit a little
    differently, with dark gaps between them, a fine grain and scattered bright fragments."""
    ids, gaps = _pieces(rng, h, w, size)
    _, inverse = np.unique(ids, return_inverse=True)
    inverse = inverse.reshape(h, w)
    k = int(inverse.max()) + 1
    colours = np.stack([_pick(rng, style.rubble) for _ in range(4)] + [roof, roof * 0.8])
    piece_colour = colours[rng.integers(0, len(colours), k)] * rng.uniform(0.75, 1.2, (k, 1)).astype(np.float32)
    tex = piece_colour[inverse] * (1 + 0.12 * value_noise(rng, h, w, float(rng.uniform(*style.grain))))[..., None]
    tex[gaps] *= np.float32(rng.uniform(0.45, 0.75))
    speck = rng.random((h, w))
    tex[speck > 0.97] = np.float32(rng.uniform(0.8, 0.95))  # bright fragments (broken concrete, sheet metal)
    # pieces are jumbled and half in shadow, never crisp tiles: soften them as the optics would
    return ndimage.gaussian_filter(tex, sigma=(float(rng.uniform(0.5, 1.0)),) * 2 + (0,)).astype(np.float32)


def _piece_size(footprint: np.ndarray, rng: np.random.Generator, style: DamageStyle) -> float:
    """Pieces scale with the building as imaged: a few per side of a small house."""
    side = float(np.sqrt(footprint.sum()))
    return float(np.clip(side * rng.uniform(*style.piece), 2.0, 14.0))


def _irregular_spill(rng: np.random.Generator, footprint: np.ndarray, width: int) -> np.ndarray:
    """The footprint grown by 0.3 to 1.2 x `width` pixels on a noisy edge."""
    dist = ndimage.distance_transform_edt(~footprint)
    h, w = footprint.shape
    edge = width * np.clip(0.6 + 0.5 * value_noise(rng, h, w, max(2.0, width * 1.5)), 0.3, 1.2)
    return footprint | (dist <= edge)


def _blend(out: np.ndarray, where: np.ndarray, paint: np.ndarray, sl: tuple[slice, slice], alpha: float) -> None:
    """Paint `paint` into `out[sl]` where `where` holds, with a one-pixel soft edge."""
    soft = ndimage.gaussian_filter(where.astype(np.float32), 0.7)[..., None] * np.float32(alpha)
    out[sl] = out[sl] * (1 - soft) + paint * soft


def _destroy(rng: np.random.Generator, out: np.ndarray, footprint: np.ndarray, style: DamageStyle) -> None:
    spill = int(rng.integers(style.spill[0], style.spill[1] + 1))
    sl = _bbox(footprint, spill + 2)
    fp = footprint[sl]
    h, w = fp.shape
    region = _irregular_spill(rng, fp, spill)
    if rng.random() < 0.3:  # burnt out: charcoal and ash, grey flakes
        paint = _pick(rng, style.ash) * (1 + 0.3 * value_noise(rng, h, w, float(rng.uniform(*style.grain))))[..., None]
    else:
        paint = _rubble_texture(rng, h, w, style, out[sl][fp].mean(axis=0), _piece_size(fp, rng, style))
    _blend(out, region, paint, sl, float(rng.uniform(0.85, 1.0)))
    if rng.random() < 0.4:  # a standing wall fragment: a straight bright line along one side
        ys, xs = np.nonzero(fp)
        if rng.random() < 0.5:
            y = int(rng.choice(ys))
            line = fp & (np.arange(h)[:, None] == y)
        else:
            x = int(rng.choice(xs))
            line = fp & (np.arange(w)[None, :] == x)
        out[sl][line] = out[sl][line] * 0.3 + np.float32(rng.uniform(0.75, 0.9)) * 0.7


def _tarp_colour(rng: np.random.Generator, style: DamageStyle) -> np.ndarray:
    import colorsys

    hue = float(rng.uniform(*style.tarp_hue)) / 360
    return np.asarray(colorsys.hsv_to_rgb(hue, float(rng.uniform(0.55, 0.85)), float(rng.uniform(0.55, 0.85))), np.float32)


def _damage(rng: np.random.Generator, out: np.ndarray, footprint: np.ndarray, style: DamageStyle) -> None:
    """Part of the roof broken: torn holes with rubble, a burnt patch, or a blue tarp."""
    sl = _bbox(footprint, style.spill[1] + 2)
    fp = footprint[sl]
    h, w = fp.shape
    kind = rng.choice(["holes", "burn", "tarp", "holes+tarp"], p=[0.4, 0.15, 0.3, 0.15])
    cell = max(2.0, float(np.sqrt(fp.sum()) * rng.uniform(*style.hole_cell)))
    blobs = fp & (value_noise(rng, h, w, cell) > rng.uniform(-0.1, 0.6))
    if blobs.sum() < 0.15 * fp.sum():  # make sure the damage is visible: at least part of the roof
        blobs = fp & (value_noise(rng, h, w, cell) > -0.3)
    roof = out[sl][fp].mean(axis=0)
    size = _piece_size(fp, rng, style)
    if "holes" in kind:
        tex = _rubble_texture(rng, h, w, style, roof, size) * np.float32(rng.uniform(0.45, 0.7))  # seen into a broken roof: darker
        _blend(out, blobs, tex, sl, 0.95)
    if kind == "burn":
        burn = _pick(rng, style.ash) * (1 + 0.25 * value_noise(rng, h, w, 2.0))[..., None]
        _blend(out, blobs, burn, sl, float(rng.uniform(0.7, 0.95)))
    if "tarp" in kind:
        ys, xs = np.nonzero(fp)
        cy, cx = int(rng.choice(ys)), int(rng.choice(xs))
        ry, rx = max(2, int(0.35 * np.ptp(ys) * rng.uniform(0.6, 1.2))), max(2, int(0.35 * np.ptp(xs) * rng.uniform(0.6, 1.2)))
        yy, xx = np.ogrid[:h, :w]
        tarp = fp & (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
        shade = (1 + 0.08 * value_noise(rng, h, w, 3.0))[..., None]  # folds
        _blend(out, tarp, _tarp_colour(rng, style) * shade, sl, 0.95)
    if rng.random() < 0.6:  # a little debris beside the walls
        spill = _irregular_spill(rng, fp, int(rng.integers(style.spill[0], style.spill[1] + 1))) & ~fp
        spill &= value_noise(rng, h, w, 3.0) > 0.3
        _blend(out, spill, _rubble_texture(rng, h, w, style, roof, size), sl, 0.85)


def _surround(rng: np.random.Generator, out: np.ndarray, footprint: np.ndarray, buildings: np.ndarray, style: DamageStyle) -> None:
    """Mud or standing flood water on the ground around a house (never over a roof)."""
    width = int(rng.integers(3 * style.spill[0], 3 * style.spill[1] + 1))
    sl = _bbox(footprint, width + 2)
    fp = footprint[sl]
    h, w = fp.shape
    ring = _irregular_spill(rng, fp, width) & ~buildings[sl]
    colour = _pick(rng, style.mud) * (1 + 0.1 * value_noise(rng, h, w, 4.0))[..., None]
    _blend(out, ring, colour, sl, float(rng.uniform(0.6, 0.9)))


def destroyed_pair(
    rng: np.random.Generator, image: np.ndarray, buildings: np.ndarray, style: DamageStyle = TRAIN_STYLE,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """A change pair from one chip: before = the chip, after = some buildings destroyed (rubble or
    burn scar) or cleared to bare ground. Returns (before, after, change masks by change kind of
    geoseg.train.synth.vocab: "damaged_buildings" = newly damaged or destroyed footprints,
    "demolished_buildings" = footprints destroyed)."""
    comp = composite_damage(rng, image, buildings, style, p_damaged=0.3, p_destroyed=0.4)
    after = comp.image
    destroyed = comp.masks["destroyed buildings"]
    if destroyed.any() and rng.random() < 0.3:  # cleared: bare ground where the rubble was
        h, w = destroyed.shape
        ground = _pick(rng, style.mud) * (1 + 0.08 * value_noise(rng, h, w, 3.0))[..., None]
        grown = ndimage.binary_dilation(destroyed, iterations=style.spill[0])
        sl = (slice(None), slice(None))
        _blend(after, grown, ground, sl, 0.9)
    changes = {"damaged_buildings": comp.masks["damaged buildings"], "demolished_buildings": destroyed}
    return image.astype(np.float32), after, changes


# ---- the validation sets ---------------------------------------------------------------------
# What each validation pair is asked, and which of destroyed_pair's change masks answers it: the
# change kinds a user types after a disaster, and "new buildings", which rubble must not answer.
CHANGE_QUESTIONS: dict[str, str | None] = {
    "destroyed buildings": "demolished_buildings",
    "damaged buildings": "damaged_buildings",
    "new buildings": None,
}


def export_damage_set(
    manifests: list[str | Path], out_dir: str | Path, style: DamageStyle = VALIDATION_STYLE, seed: int = 0,
    tag: str = "area-split:val", change: bool = False,
) -> Path:
    """Composite damage onto every image of `manifests` whose lines carry `tag` and label
    buildings, and write a dataset (docs/dataset-format.md). Single-date (default): each image is
    asked "damaged buildings", "destroyed buildings" and "buildings". `change=True`: each image
    becomes a pair (before = the chip, after = destroyed_pair's), asked CHANGE_QUESTIONS. Images
    are float .npy in [0, 1] (already stretched, so evaluation does not stretch them again).
    Deterministic from `seed`."""
    from geoseg.train.manifest import load_image, load_mask, read_manifest

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    lines: list[dict] = []
    for m in manifests:
        for k, s in enumerate(x for x in read_manifest(m) if tag in x.tags and x.expression == "buildings"):
            source = s.tags[0] if s.tags else Path(m).parent.name
            name = f"{source}_{k:04d}"
            rng = np.random.default_rng(np.random.SeedSequence([seed, k, len(lines)]))
            assert s.image is not None, f"{m}: damage composites are drawn on single-date samples"
            image, buildings = load_image(s.image), load_mask(s.mask)
            if change:
                before, after, changes = destroyed_pair(rng, image, buildings, style)
                images = {"before": _save(out, f"images/{name}_before.npy", before),
                          "after": _save(out, f"images/{name}_after.npy", after)}
                masks = {q: changes[kind] if kind else np.zeros_like(buildings, bool) for q, kind in CHANGE_QUESTIONS.items()}
            else:
                comp = composite_damage(rng, image, buildings, style)
                images, masks = {"image": _save(out, f"images/{name}.npy", comp.image)}, comp.masks
            for concept, mask in masks.items():
                mask_name = _save(out, f"masks/{name}_{concept.replace(' ', '_')}.npy", mask.astype(np.uint8) * 255)
                lines.append({**images, "mask": mask_name, "expression": concept, "empty": not mask.any(),
                              "tags": [source, concept, f"damage-style:{style.name}"]})
    path = out / "manifest.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _save(out: Path, name: str, array: np.ndarray) -> str:
    np.save(out / name, array)
    return name


def main() -> None:
    parser = argparse.ArgumentParser(description="Write a composited damage validation set of the model card.")
    parser.add_argument("out_dir")
    parser.add_argument("manifests", nargs="+", help="real manifests whose area-split:val building lines are used")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--change", action="store_true", help="write before/after pairs (destroyed_pair) for compact-change")
    args = parser.parse_args()
    print(export_damage_set(args.manifests, args.out_dir, seed=args.seed, change=args.change))


if __name__ == "__main__":
    main()
