"""Training batches: drawn on the fly from geoseg.train.synth (seeded), or read from a JSONL manifest.

A batch holds B images and M = B x K (image, query, mask) pairs: each image is encoded once and
queried K times, as at inference. Synthetic scenes are rendered at `scene_size`, stretched per
scene to [0, 1] by their 2nd-98th percentiles (what the pipeline does per scene), kept in a pool
and cut into random crops; one pooled scene is replaced by a fresh render every `refresh_every`
batches, so the data never repeats exactly while rendering costs little.
"""

from __future__ import annotations

import logging
from functools import partial

import numpy as np
import torch

from geoseg.errors import InputError
from geoseg.train.batch import Batch, concat_batches, stack_batch, to_tensor_images
from geoseg.train.config import TrainConfig
from geoseg.train.manifest import load_image, load_mask, read_manifest
from geoseg.train.queries import (
    Query,
    by_concept,
    choose_queries,
    concept_mask,
    draw_targets,
    queries_by_split,
)
from geoseg.train.synthdata import PairScene, Scene, render_pair_scene, render_scene_for_training

log = logging.getLogger(__name__)


def _render_skipping_failures(render, next_seed, size, gsds, tries: int = 5):
    """Render the scene of the next seed; a seed whose geometry fails (a rare GEOS topology
    error in the generator) is skipped rather than ending a long training run."""
    last: Exception | None = None
    for _ in range(tries):
        seed = next_seed()
        try:
            return render(seed, size, gsds)
        except Exception as e:  # noqa: BLE001 - any failure of one procedural scene
            log.warning("synthetic scene %d failed (%s: %s); skipping it", seed, type(e).__name__, e)
            last = e
    raise RuntimeError(f"{tries} synthetic scenes in a row failed to render") from last


def _augment(rng: np.random.Generator, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """The same random flip / 90-degree rotation for every array of a sample (H x W [x C])."""
    k = int(rng.integers(4))
    flip = bool(rng.integers(2))
    out = []
    for a in arrays:
        a = np.rot90(a, k, axes=(0, 1))
        out.append(np.ascontiguousarray(a[:, ::-1] if flip else a))
    return out


def _jitter(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Mild photometric jitter: real scenes differ from synthetic ones in contrast and colour."""
    gain = rng.uniform(0.85, 1.15, size=3).astype(np.float32)
    bias = rng.uniform(-0.06, 0.06, size=3).astype(np.float32)
    return np.clip(image * gain + bias, 0, 1)


def _crop_box(rng: np.random.Generator, h: int, w: int, tile: int) -> tuple[int, int]:
    return int(rng.integers(0, h - tile + 1)), int(rng.integers(0, w - tile + 1))


class SynthSource:
    """Endless single-date batches from a pool of synthetic scenes."""

    def __init__(self, config: TrainConfig, seed: int, queries: list[Query] | None = None) -> None:
        self.cfg = config.data
        self.batch_size = config.batch_size
        self.rng = np.random.default_rng(seed)
        self.concepts = by_concept(queries if queries is not None else queries_by_split()["train"])
        self.vocabulary = sorted({q.text for qs in self.concepts.values() for q in qs})
        self.next_seed = seed * 1_000_003 + 17
        self.pool: list[Scene] = [self._render() for _ in range(self.cfg.pool_scenes)]
        self.batches = 0

    def _seed(self) -> int:
        self.next_seed += 1
        return self.next_seed

    def _render(self) -> Scene:
        return _render_skipping_failures(render_scene_for_training, self._seed, self.cfg.scene_size, self.cfg.gsds)

    def next_batch(self, size: int | None = None) -> Batch:
        """`size` images (default: the config's batch size)."""
        self.batches += 1
        if self.cfg.refresh_every and self.batches % self.cfg.refresh_every == 0:
            self.pool[int(self.rng.integers(len(self.pool)))] = self._render()
        images, queries, index, masks = [], [], [], []
        for b in range(size or self.batch_size):
            scene = self.pool[int(self.rng.integers(len(self.pool)))]
            image, ids = self._crop(scene.image, scene.instance_ids)
            picks = choose_queries(
                self.rng,
                self.concepts,
                partial(concept_mask, instance_ids=ids, table=scene.table),
                self.cfg.queries_per_image,
                self.cfg.empty_share,
                near_miss_share=self.cfg.near_miss_share,
            )
            images.append(_jitter(self.rng, image))
            for query, mask in picks:
                queries.append(query.text)
                index.append(b)
                masks.append(mask)
        return Batch(
            images=to_tensor_images(images),
            queries=queries,
            image_index=torch.tensor(index, dtype=torch.long),
            masks=torch.from_numpy(np.stack(masks)).float(),
        )

    def _crop(self, image: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = self.cfg.tile
        h, w = ids.shape
        y, x = _crop_box(self.rng, h, w, t)
        image, ids = _augment(self.rng, [image[y : y + t, x : x + t], ids[y : y + t, x : x + t]])
        return image, ids

    def close(self) -> None:
        self.pool.clear()


class ChangeSource:
    """Endless change batches (before, after, class-agnostic change, change queries)."""

    def __init__(self, config: TrainConfig, seed: int, split: str = "change") -> None:
        self.cfg = config.data
        self.batch_size = config.batch_size
        self.rng = np.random.default_rng(seed)
        # change kind ("new_buildings") -> its wordings in this split
        self.wordings: dict[str, list[str]] = {}
        for q in queries_by_split()[split]:
            self.wordings.setdefault(q.concept.removeprefix("change/"), []).append(q.text)
        self.vocabulary = sorted({t for ts in self.wordings.values() for t in ts})
        self.next_seed = seed * 1_000_003 + 29
        self.pool: list[PairScene] = [self._render() for _ in range(self.cfg.pool_scenes)]
        self.batches = 0

    def _seed(self) -> int:
        self.next_seed += 1
        return self.next_seed

    def _render(self) -> PairScene:
        return _render_skipping_failures(render_pair_scene, self._seed, self.cfg.scene_size, self.cfg.gsds)

    def next_batch(self, size: int | None = None) -> Batch:
        """`size` pairs (default: the config's batch size)."""
        self.batches += 1
        if self.cfg.refresh_every and self.batches % self.cfg.refresh_every == 0:
            self.pool[int(self.rng.integers(len(self.pool)))] = self._render()
        t = self.cfg.tile
        befores, afters, changes, queries, index, masks = [], [], [], [], [], []
        for b in range(size or self.batch_size):
            pair = self.pool[int(self.rng.integers(len(self.pool)))]
            h, w = pair.change.shape
            y, x = _crop_box(self.rng, h, w, t)
            win = (slice(y, y + t), slice(x, x + t))
            kinds = list(pair.change_by_type)
            crops = _augment(self.rng, [pair.before[win], pair.after[win], pair.change[win]] + [pair.change_by_type[k][win] for k in kinds])
            before, after, change, typed = crops[0], crops[1], crops[2], dict(zip(kinds, crops[3:], strict=True))
            befores.append(_jitter(self.rng, before))
            afters.append(_jitter(self.rng, after))
            changes.append(change)
            for kind, mask in self._choose(typed):
                options = self.wordings[kind]
                queries.append(options[int(self.rng.integers(len(options)))])
                index.append(b)
                masks.append(mask)
        return stack_batch(afters, queries, index, masks, befores=befores, changes=changes)

    def _choose(self, typed: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
        present = [(k, m) for k, m in typed.items() if m.sum() >= 16 and self.wordings.get(k)]
        absent = [(k, m) for k, m in typed.items() if m.sum() == 0 and self.wordings.get(k)]
        return list(draw_targets(self.rng, present, absent, self.cfg.queries_per_image, self.cfg.empty_share))

    def close(self) -> None:
        self.pool.clear()


class ManifestSource:
    """Endless batches cut from the samples of a JSONL manifest (images loaded lazily).

    For the change stages the query's mask doubles as the class-agnostic change mask."""

    def __init__(self, config: TrainConfig, seed: int) -> None:
        self.cfg = config.data
        self.batch_size = config.batch_size
        self.rng = np.random.default_rng(seed)
        self.samples = list(read_manifest(self.cfg.source))
        self.change = config.stage != "segment"
        self.samples = [s for s in self.samples if s.is_change == self.change]
        if not self.samples:
            kind = "change (before/after)" if self.change else "single-date (image)"
            raise InputError(f"{self.cfg.source}: no {kind} samples for stage {config.stage}")

    def next_batch(self) -> Batch:
        t = self.cfg.tile
        images, befores, queries, masks = [], [], [], []
        for _ in range(self.batch_size):
            s = self.samples[int(self.rng.integers(len(self.samples)))]
            image = load_image(s.shown)
            mask = load_mask(s.mask)
            arrays = [image, mask] + ([load_image(s.before_image)] if s.is_change else [])
            arrays = [_pad_to(a, t) for a in arrays]
            h, w = arrays[1].shape
            y, x = _crop_box(self.rng, h, w, t)
            arrays = _augment(self.rng, [a[y : y + t, x : x + t] for a in arrays])
            images.append(arrays[0])
            masks.append(arrays[1])
            if s.is_change:
                befores.append(arrays[2])
            queries.append(s.expression)
        masks_t = torch.from_numpy(np.stack(masks)).float()
        return Batch(
            images=to_tensor_images(images),
            queries=queries,
            image_index=torch.arange(len(queries)),
            masks=masks_t,
            before=to_tensor_images(befores) if befores else None,
            change_masks=masks_t.clone() if befores else None,
        )

    def close(self) -> None:
        pass


def _pad_to(a: np.ndarray, size: int) -> np.ndarray:
    ph, pw = max(0, size - a.shape[0]), max(0, size - a.shape[1])
    if not ph and not pw:
        return a
    pad = [(0, ph), (0, pw)] + [(0, 0)] * (a.ndim - 2)
    return np.pad(a, pad)


class MixedSource:
    """Batches drawn from several sources with the given shares: each batch whole from one source,
    or, `within_batch`, each image of a batch from a source drawn for it.

    Why within: BatchNorm normalises a training batch by its own statistics, so whole-source
    batches teach the model real imagery under real-only statistics and synthetic imagery under
    synthetic-only ones, while inference normalises everything by the running mixture of both,
    which matches neither (docs/models/compact.md, "Release 0.12.0")."""

    def __init__(self, sources: list, shares: list[float], seed: int, *, within_batch: bool = False,
                 batch_size: int = 0) -> None:
        self.sources = sources
        self.shares = np.asarray(shares, float) / sum(shares)
        self.rng = np.random.default_rng(seed)
        self.vocabulary = sorted({w for s in sources for w in getattr(s, "vocabulary", ())})
        self.within_batch = within_batch
        self.batch_size = batch_size

    def next_batch(self) -> Batch:
        if not self.within_batch:
            return self.sources[int(self.rng.choice(len(self.sources), p=self.shares))].next_batch()
        counts = self.rng.multinomial(self.batch_size, self.shares)
        return concat_batches([s.next_batch(int(n)) for s, n in zip(self.sources, counts, strict=True) if n])

    def close(self) -> None:
        for s in self.sources:
            s.close()


def make_batch_source(config: TrainConfig, start_step: int = 0):
    """The batch source for a config; a resumed run draws fresh data (seed moves with the step).

    With `data.real` manifests and `data.real_share` > 0, that share of the batches comes from
    real imagery (geoseg.train.real) and the rest from the synthetic (or manifest) source."""
    seed = config.data.seed + 7919 * start_step
    main: ManifestSource | SynthSource | ChangeSource
    if config.data.source != "synth":
        main = ManifestSource(config, seed)
    elif config.stage == "segment":
        main = SynthSource(config, seed)
    else:
        main = ChangeSource(config, seed)
    share = config.data.real_share if config.data.real else 0.0
    if share <= 0:
        return main
    from geoseg.train.real import RealChangeSource, RealSource

    real = (RealSource if config.stage == "segment" else RealChangeSource)(config, seed + 1)
    if share >= 1:
        main.close()
        return real
    within = config.data.mix_within_batch
    if within and not isinstance(main, SynthSource | ChangeSource):
        raise InputError("data.mix_within_batch mixes synthetic and real crops or pairs; "
                         "it needs source: synth")
    return MixedSource([real, main], [share, 1 - share], seed + 2, within_batch=within, batch_size=config.batch_size)

