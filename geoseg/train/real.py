"""Training batches cut from real labelled imagery (manifests in docs/dataset-format.md).

Real sources (e.g. `../shared/data/train-real/<source>/manifest.jsonl`) label a few concepts per
image ("buildings", "roads", "water", "vegetation", "bare land"). This module turns them into the
same `Batch` the synthetic sources give:

- every image is loaded once, stretched per band (2nd-98th percentile, as the pipeline stretches a
  scene) and kept in memory as uint8 with its per-concept masks and its "unlabelled" mask;
- lines tagged `area-split:val` never enter training (they are whole held-out areas);
- crops are taken at a random scale (the ground resolution moves across the range the model is
  meant for), rotated, flipped, and radiometrically disturbed (gain, gamma, haze, saturation,
  blur, JPEG artefacts), since real scenes differ in all of these;
- each crop is asked K queries: wordings of its labelled concepts (synonyms from the synthetic
  vocabulary, minus the held-out words) and absent-target queries (a concept the source labels
  exhaustively and the crop does not contain, or one the source never has);
- for change stages, pairs are made from single-date masks as ChangeStar does: two different
  chips (the change of a concept is where its masks differ; "new" = in after only), or one chip
  with itself under a strong photometric change (nothing changed).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from geoseg.errors import InputError
from geoseg.train.batch import Batch, stack_batch
from geoseg.train.config import TrainConfig
from geoseg.train.damage import DAMAGE_WORDINGS, TRAIN_STYLE, composite_damage, destroyed_pair
from geoseg.train.manifest import load_image, load_mask, read_manifest
from geoseg.train.queries import HELDOUT_WORDS, UNRELATED_TRAIN, draw_targets, queries_by_split
from geoseg.train.synth import vocab

log = logging.getLogger(__name__)

VAL_TAG = "area-split:val"

# Real concept (the manifest's expression) -> synthetic target whose synonyms it shares, plus
# wordings that only real data teaches.
REAL_CONCEPTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "buildings": ("building", ("building footprints",)),
    "roads": ("road", ()),
    "water": ("water", ()),
    "vegetation": ("tree", ("vegetation", "greenery", "green vegetation")),
    "bare land": ("bare", ("sand", "sandy ground")),
    "farmland": ("field", ()),
}
# Concepts a source never contains, asked as absent-target queries (their wordings come from the
# synthetic vocabulary's class names).
NEVER_PRESENT: dict[str, tuple[str, ...]] = {
    "dubai-hitl": ("field",),
}
# Real change pairs are made for these concepts: single-date concept -> (appeared, disappeared)
# change kinds of the synthetic vocabulary.
CHANGE_KINDS: dict[str, tuple[str, str | None]] = {
    "buildings": ("new_buildings", "demolished_buildings"),
    "roads": ("new_roads", None),
}


def wordings(target: str, extra: Sequence[str] = ()) -> list[str]:
    """Every wording of a synthetic class target (all synonym groups) plus `extra`, without the
    held-out words (so the held-out synonym evaluation stays held out)."""
    return without_heldout([w for group in vocab.SYNONYMS[target].values() for w in group] + list(extra))


def without_heldout(words: Sequence[str]) -> list[str]:
    return [w for w in dict.fromkeys(words) if not HELDOUT_WORDS & set(w.split())]


@dataclass
class RealImage:
    image: np.ndarray  # H x W x 3 uint8, stretched
    masks: dict[str, np.ndarray]  # concept -> H x W bool (an absent concept has an all-False mask)
    ignore: np.ndarray | None  # H x W bool, pixels the source did not label
    source: str
    gsd: float | None


@dataclass
class RealCrop:
    image: np.ndarray  # t x t x 3 float32 in [0, 1]
    masks: dict[str, np.ndarray]
    valid: np.ndarray  # t x t bool


@dataclass
class RealSet:
    """Every training image of one or more manifests, in memory."""

    images: list[RealImage] = field(default_factory=list)

    @classmethod
    def load(cls, manifests: Sequence[str | Path]) -> RealSet:
        out = cls()
        for path in manifests:
            out.images += _load_manifest(Path(path))
        if not out.images:
            raise InputError(f"{', '.join(map(str, manifests))}: no single-date training lines (val lines are never used)")
        log.info("real training images: %d from %d manifests", len(out.images), len(manifests))
        return out

    def by_source(self) -> dict[str, list[int]]:
        groups: dict[str, list[int]] = {}
        for i, im in enumerate(self.images):
            groups.setdefault(im.source, []).append(i)
        return groups


def _load_manifest(path: Path) -> list[RealImage]:
    import json

    path = path / "manifest.jsonl" if path.is_dir() else path
    extras = {}  # mask path -> (gsd, ignore mask path): keys the dataset reader ignores
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            extras[str(path.parent / rec["mask"])] = (rec.get("gsd"), rec.get("ignore_mask"))
    by_image: dict[Path, list] = {}
    for s in read_manifest(path):
        if s.is_change or VAL_TAG in s.tags:
            continue
        by_image.setdefault(s.shown, []).append(s)
    images = []
    for image_path, samples in by_image.items():
        gsd, ignore = extras[str(samples[0].mask)]
        images.append(RealImage(
            image=np.round(load_image(image_path) * 255).astype(np.uint8),
            masks={s.expression: load_mask(s.mask) for s in samples},
            ignore=load_mask(path.parent / ignore) if ignore else None,
            source=samples[0].tags[0] if samples[0].tags else path.parent.name,
            gsd=gsd,
        ))
    return images


# ---- augmentation ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ScaleRange:
    """Crops are resampled by a factor drawn log-uniformly in [low, high] (>1: coarser)."""

    low: float = 0.75
    high: float = 2.5


def _resize(a: np.ndarray, size: int, mode: str) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    t = t.permute(2, 0, 1)[None] if t.ndim == 3 else t[None, None]
    antialias = mode == "bilinear" and t.shape[-1] > size
    t = F.interpolate(t, size=(size, size), mode=mode, antialias=antialias, **({} if mode == "nearest" else {"align_corners": False}))
    return t[0].permute(1, 2, 0).numpy() if a.ndim == 3 else t[0, 0].numpy()


def random_crop(rng: np.random.Generator, im: RealImage, tile: int, scale: ScaleRange) -> RealCrop:
    """A tile x tile crop at a random scale, rotation and flip, with every mask resampled alike."""
    h, w = im.image.shape[:2]
    high = min(scale.high, min(h, w) / tile)
    low = min(scale.low, high)
    f = float(np.exp(rng.uniform(np.log(low), np.log(high))))
    side = min(h, w, max(8, int(round(tile * f))))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    win = (slice(y, y + side), slice(x, x + side))
    image = _resize(im.image[win].astype(np.float32) / 255, tile, "bilinear")
    masks = {k: _resize(m[win], tile, "bilinear") > 0.5 for k, m in im.masks.items()}
    valid = np.ones((tile, tile), bool) if im.ignore is None else _resize(im.ignore[win], tile, "bilinear") < 0.5
    if rng.random() < 0.25:  # any angle; the corners the rotation uncovers are not scored
        image, masks, valid = _rotate(rng, image, masks, valid)
    k, flip = int(rng.integers(4)), bool(rng.integers(2))

    def orient(a: np.ndarray) -> np.ndarray:
        a = np.rot90(a, k, axes=(0, 1))
        return np.ascontiguousarray(a[:, ::-1] if flip else a)

    return RealCrop(orient(image), {c: orient(m) for c, m in masks.items()}, orient(valid))


def _rotate(rng, image, masks, valid):
    from scipy import ndimage

    angle = float(rng.uniform(0, 360))
    image = np.clip(ndimage.rotate(image, angle, axes=(0, 1), reshape=False, order=1, mode="reflect"), 0, 1)
    inside = ndimage.rotate(np.ones(valid.shape, np.float32), angle, reshape=False, order=0, mode="constant") > 0.5
    masks = {c: ndimage.rotate(m.astype(np.uint8), angle, reshape=False, order=0, mode="constant") > 0 for c, m in masks.items()}
    valid = inside & (ndimage.rotate(valid.astype(np.uint8), angle, reshape=False, order=0, mode="constant") > 0)
    return image.astype(np.float32), masks, valid


def radiometric_jitter(rng: np.random.Generator, image: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """Gain, bias, gamma, saturation, haze, blur and JPEG artefacts, each drawn at random;
    `strength` > 1 makes them stronger (the "same place, other day" pairs of change training)."""
    s = strength
    x = image * rng.uniform(1 - 0.2 * s, 1 + 0.2 * s, 3).astype(np.float32) + rng.uniform(-0.06 * s, 0.06 * s, 3).astype(np.float32)
    x = np.clip(x, 0, 1) ** float(np.exp(rng.uniform(-0.3 * s, 0.3 * s)))
    grey = x.mean(axis=2, keepdims=True)
    x = grey + (x - grey) * rng.uniform(max(0.0, 1 - 0.5 * s), 1 + 0.3 * s)
    if rng.random() < 0.2 * s:  # haze: blend toward a bright, slightly blue-grey veil
        veil = np.array([0.8, 0.82, 0.86], np.float32) * rng.uniform(0.8, 1.1)
        a = rng.uniform(0.05, 0.3)
        x = x * (1 - a) + veil * a
    x = np.clip(x, 0, 1).astype(np.float32)
    if rng.random() < 0.2:
        from scipy import ndimage

        x = ndimage.gaussian_filter(x, sigma=(rng.uniform(0.4, 1.4),) * 2 + (0,))
    if rng.random() < 0.2:
        x = _jpeg(x, int(rng.integers(25, 85)))
    return x


# Colours of inland and coastal water besides sea blue: algae olive, dark green, silt brown,
# shallow turquoise, deep blue, near black (RGB in [0, 1]).
WATER_TINTS = np.array([
    [0.33, 0.36, 0.22], [0.16, 0.22, 0.15], [0.32, 0.27, 0.19],
    [0.20, 0.44, 0.48], [0.10, 0.18, 0.32], [0.08, 0.09, 0.10],
], np.float32)


def retint(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`image` with the pixels under `mask` moved to a random water tint, keeping their texture
    (the deviation from their mean colour), blended over a soft edge."""
    if not mask.any():
        return image
    tint = WATER_TINTS[int(rng.integers(len(WATER_TINTS)))] * np.float32(rng.uniform(0.8, 1.2))
    texture = image - image[mask].mean(axis=0)
    recoloured = np.clip(tint + texture * np.float32(rng.uniform(0.4, 1.0)), 0, 1)
    alpha = _soft_edge(mask) * np.float32(rng.uniform(0.7, 1.0))
    return (image * (1 - alpha) + recoloured * alpha).astype(np.float32)


def _soft_edge(mask: np.ndarray) -> np.ndarray:
    """H x W x 1 weights: 1 inside `mask`, 0 outside, blurred over about a pixel at its edge."""
    from scipy import ndimage

    return ndimage.gaussian_filter(mask.astype(np.float32), 1.0)[..., None]


# Colours (RGB) the blotches add where their noise is positive: algae green, olive, silt brown.
MOTTLE_HUES = np.array([[0.25, 0.45, 0.10], [0.35, 0.35, 0.12], [0.40, 0.30, 0.18]], np.float32)


def mottle(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`image` with blotchy, low-frequency algae or silt patterns laid over the water under `mask`:
    villa-community lakes are olive and mottled like the grass beside them, while the training
    water is smooth, so smoothness alone must not be what says "water"."""
    from scipy import ndimage

    if not mask.any():
        return image
    noise = ndimage.gaussian_filter(rng.standard_normal(mask.shape).astype(np.float32), rng.uniform(2.0, 8.0))
    noise /= noise.std() + 1e-6
    hue = MOTTLE_HUES[int(rng.integers(len(MOTTLE_HUES)))]
    blotches = np.clip(noise, 0, None)[..., None] * hue * np.float32(rng.uniform(0.1, 0.25))
    return np.clip(image + _soft_edge(mask) * blotches, 0, 1).astype(np.float32)


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf), dtype=np.float32) / 255


# ---- query choice ------------------------------------------------------------------------------
class RealVocabulary:
    """Wordings per real concept, per concept composited onto real chips (geoseg.train.damage),
    the absent-target wordings per source, and the unrelated concepts asked with empty masks."""

    def __init__(self) -> None:
        self.concepts = {c: wordings(t, extra) for c, (t, extra) in REAL_CONCEPTS.items()}
        self.composited = {c: without_heldout(ws) for c, ws in DAMAGE_WORDINGS.items()}
        self.unrelated = list(UNRELATED_TRAIN)
        self.never = {src: [w for t in targets for w in wordings(t)] for src, targets in NEVER_PRESENT.items()}
        self.change: dict[str, list[str]] = {}
        for q in queries_by_split()["change"]:
            self.change.setdefault(q.concept.removeprefix("change/"), []).append(q.text)
        # building damage between the dates is taught only by composited pairs (destroyed_pair);
        # in change mode, the single-date damage words mean the damage between the dates
        self.change["damaged_buildings"] = without_heldout(
            [*vocab.CHANGE_PHRASES["damaged_buildings"], *DAMAGE_WORDINGS["damaged buildings"]])
        self.change["demolished_buildings"] = [*self.change.get("demolished_buildings", []), "destroyed buildings"]

    def options(self, concept: str) -> list[str] | None:
        """The wordings a crop's concept is asked with (None: a concept this vocabulary skips)."""
        return self.concepts.get(concept) or self.composited.get(concept)

    @property
    def all_wordings(self) -> list[str]:
        words = [w for ws in (*self.concepts.values(), *self.composited.values(), *self.never.values()) for w in ws]
        return sorted(set(words) | set(self.unrelated) | {w for ws in self.change.values() for w in ws})

    def pick(self, rng: np.random.Generator, options: Sequence[str]) -> str:
        return options[int(rng.integers(len(options)))]


def choose_real_queries(
    rng: np.random.Generator, words: RealVocabulary, crop: RealCrop, source: str, n: int, empty_share: float,
    min_pixels: int = 16, unrelated_share: float = 0.0,
) -> list[tuple[str, np.ndarray]]:
    """n (wording, mask) pairs for a crop, about `empty_share` of them absent targets; each pair is
    replaced, with probability `unrelated_share`, by a concept the model must not know
    (UNRELATED_TRAIN) with an empty mask."""
    present, absent = [], []
    for concept, mask in crop.masks.items():
        options = words.options(concept)
        if options is None:
            continue
        area = int((mask & crop.valid).sum())
        if area >= min_pixels:
            present.append((options, mask))
        elif area == 0:
            absent.append((options, mask))
    empty = np.zeros_like(crop.valid)
    absent += [([w], empty) for w in words.never.get(source, ())]
    picks = [(words.pick(rng, options), mask) for options, mask in draw_targets(rng, present, absent, n, empty_share)]
    return [(words.pick(rng, words.unrelated), empty) if rng.random() < unrelated_share else pick for pick in picks]


def with_damage(rng: np.random.Generator, crop: RealCrop, share: float) -> RealCrop:
    """A crop whose buildings are labelled gets damage composited with probability `share`; the
    others say that none of their buildings is damaged (empty damage masks)."""
    buildings = crop.masks.get("buildings")
    if buildings is None:
        return crop
    if rng.random() < share and buildings.any():
        comp = composite_damage(rng, crop.image, buildings & crop.valid, TRAIN_STYLE)
        return RealCrop(comp.image, {**crop.masks, **comp.masks}, crop.valid)
    empty = np.zeros_like(buildings)
    return RealCrop(crop.image, {**crop.masks, **dict.fromkeys(DAMAGE_WORDINGS, empty)}, crop.valid)


# ---- batch sources -----------------------------------------------------------------------------
class RealSource:
    """Endless single-date batches from real images. Sources are drawn with equal weight unless
    `data.real_weights` says otherwise, so a large source does not drown a small one."""

    def __init__(self, config: TrainConfig, seed: int, data: RealSet | None = None) -> None:
        self.cfg = config.data
        self.batch_size = config.batch_size
        self.rng = np.random.default_rng(seed)
        self.data = data or RealSet.load(self.cfg.real)
        by_source = self.data.by_source()
        unknown = set(self.cfg.real_weights) - set(by_source)
        if unknown:
            raise InputError(f"data.real_weights names {', '.join(sorted(unknown))}, which no real manifest holds "
                             f"(sources: {', '.join(sorted(by_source))})")
        self._use_sources(by_source)
        self.words = RealVocabulary()
        self.vocabulary = self.words.all_wordings
        self.scale = ScaleRange(*self.cfg.real_scale)

    def _use_sources(self, by_source: dict[str, list[int]]) -> None:
        self.sources = list(by_source.values())
        weights = np.array([float(self.cfg.real_weights.get(name, 1.0)) for name in by_source])
        self.source_p = weights / weights.sum()

    def _group(self) -> list[int]:
        return self.sources[int(self.rng.choice(len(self.sources), p=self.source_p))]

    def _image(self) -> RealImage:
        group = self._group()
        return self.data.images[group[int(self.rng.integers(len(group)))]]

    def next_batch(self, size: int | None = None) -> Batch:
        """`size` images (default: the config's batch size)."""
        images, queries, index, masks, valid = [], [], [], [], []
        for b in range(size or self.batch_size):
            im = self._image()
            crop = with_damage(self.rng, random_crop(self.rng, im, self.cfg.tile, self.scale), self.cfg.damage_share)
            picks = choose_real_queries(self.rng, self.words, crop, im.source, self.cfg.queries_per_image,
                                        self.cfg.empty_share, unrelated_share=self.cfg.unrelated_share)
            image = crop.image
            if "water" in crop.masks and self.rng.random() < self.cfg.water_retint:
                water = crop.masks["water"] & crop.valid
                image = retint(self.rng, image, water)
                # only drawn when asked for, so configs without it keep their random stream
                if self.cfg.water_mottle and self.rng.random() < self.cfg.water_mottle:
                    image = mottle(self.rng, image, water)
            images.append(radiometric_jitter(self.rng, image))
            for text, mask in picks:
                queries.append(text)
                index.append(b)
                masks.append(mask)
                valid.append(crop.valid)
        return stack_batch(images, queries, index, masks, valid=valid)

    def close(self) -> None:
        pass


class RealChangeSource(RealSource):
    """Endless change batches made from single-date real masks (ChangeStar-style pairs)."""

    def __init__(self, config: TrainConfig, seed: int, data: RealSet | None = None) -> None:
        super().__init__(config, seed, data)
        keep = [i for i, im in enumerate(self.data.images) if set(im.masks) & set(CHANGE_KINDS)]
        by_source: dict[str, list[int]] = {}
        for i in keep:
            by_source.setdefault(self.data.images[i].source, []).append(i)
        self._use_sources(by_source)

    def next_batch(self, size: int | None = None) -> Batch:
        befores, afters, changes, queries, index, masks, valid = [], [], [], [], [], [], []
        t = self.cfg.tile
        for b in range(size or self.batch_size):
            group = self._group()
            a = self.data.images[group[int(self.rng.integers(len(group)))]]
            before = random_crop(self.rng, a, t, self.scale)
            buildings = before.masks.get("buildings")
            destroyed = buildings is not None and buildings.any() and self.rng.random() < self.cfg.damage_share
            if destroyed:  # the same place after a disaster: buildings damaged, destroyed or cleared
                before_img, after_img, typed = destroyed_pair(self.rng, before.image, buildings & before.valid)
                before_img, after_img = radiometric_jitter(self.rng, before_img), radiometric_jitter(self.rng, after_img)
                empty = np.zeros_like(buildings)
                typed = {**typed, "new_buildings": empty, "new_roads": empty}
                change = typed["damaged_buildings"]
                after = before
            elif self.rng.random() < 0.5:  # the same place on another day: nothing changed
                after = RealCrop(before.image, before.masks, before.valid)
                before_img = radiometric_jitter(self.rng, before.image)
                after_img = radiometric_jitter(self.rng, after.image, strength=2.0)
            else:  # two different places: the change of a concept is where its masks differ
                after = random_crop(self.rng, self.data.images[group[int(self.rng.integers(len(group)))]], t, self.scale)
                before_img, after_img = radiometric_jitter(self.rng, before.image), radiometric_jitter(self.rng, after.image)
            ok = before.valid & after.valid
            if not destroyed:
                typed, change = self._typed_changes(before, after)
            befores.append(before_img)
            afters.append(after_img)
            changes.append(change)
            for kind, mask in self._choose(typed, ok):
                queries.append(self.words.pick(self.rng, self.words.change[kind]))
                index.append(b)
                masks.append(mask)
                valid.append(ok)
        return stack_batch(afters, queries, index, masks, befores=befores, changes=changes, valid=valid)

    def _typed_changes(self, before: RealCrop, after: RealCrop) -> tuple[dict[str, np.ndarray], np.ndarray]:
        typed: dict[str, np.ndarray] = {}
        change = np.zeros(before.valid.shape, bool)
        for concept, (appeared, disappeared) in CHANGE_KINDS.items():
            if concept not in before.masks or concept not in after.masks:
                continue
            was, now = before.masks[concept], after.masks[concept]
            typed[appeared] = now & ~was
            if disappeared:
                typed[disappeared] = was & ~now
            change |= was ^ now
        return typed, change

    def _choose(self, typed: dict[str, np.ndarray], valid: np.ndarray) -> list[tuple[str, np.ndarray]]:
        present = [(k, m) for k, m in typed.items() if (m & valid).sum() >= 16 and self.words.change.get(k)]
        absent = [(k, m) for k, m in typed.items() if not m.any() and self.words.change.get(k)]
        return list(draw_targets(self.rng, present, absent, self.cfg.queries_per_image, self.cfg.empty_share))
