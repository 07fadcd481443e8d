"""geoseg.train.synth scenes in the form training needs: stretched images, instance ids, truth tables.

Images are stretched to [0, 1] by each band's 2nd-98th percentile over the whole scene, which is
what the pipeline does with a real scene before cutting it into tiles. Every render draws its
ground sample distance from `gsds` and its season(s) at random, so the model sees objects at
several pixel sizes and in every season.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from geoseg.train.manifest import percentile_stretch
from geoseg.train.queries import InstanceTable


@dataclass
class Scene:
    image: np.ndarray  # H x W x 3 float32 in [0, 1]
    instance_ids: np.ndarray  # H x W int32 (0: no instance)
    table: InstanceTable  # (id, class, subclass, attributes) per instance


@dataclass
class PairScene:
    before: np.ndarray  # H x W x 3 float32 in [0, 1]
    after: np.ndarray
    change: np.ndarray  # H x W bool, class-agnostic change (union of every kind)
    change_by_type: dict[str, np.ndarray]  # change kind ("new_buildings", ...) -> H x W bool


def _table(instances) -> InstanceTable:
    return [(i.id, i.cls, i.subclass, i.attrs) for i in instances]


def _draw(seed: int, gsds: Sequence[float]) -> tuple[float, str]:
    from geoseg.train.synth.palette import SEASONS

    rng = np.random.default_rng([seed, 0x6E05])
    return float(gsds[int(rng.integers(len(gsds)))]), SEASONS[int(rng.integers(len(SEASONS)))]


def render_scene_for_training(seed: int, size: int, gsds: Sequence[float]) -> Scene:
    from geoseg.train.synth.render import render_scene

    gsd, season = _draw(seed, gsds)
    s = render_scene(seed, size, size, gsd, season=season)
    return Scene(percentile_stretch(s.image[..., :3]), s.labels, _table(s.instances))


def render_pair_scene(seed: int, size: int, gsds: Sequence[float]) -> PairScene:
    from geoseg.train.synth.change import render_pair
    from geoseg.train.synth.vocab import DEFAULT_CHANGE_KINDS

    gsd, season = _draw(seed, gsds)
    p = render_pair(seed, size, size, gsd, season_before=season)
    typed = {k: np.asarray(p.change[k], bool) for k in DEFAULT_CHANGE_KINDS}
    change = np.logical_or.reduce([np.asarray(m, bool) for m in p.change.values()])
    before, after = percentile_stretch(p.before.image[..., :3]), percentile_stretch(p.after.image[..., :3])
    return PairScene(before, after, change, typed)
