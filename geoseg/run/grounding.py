"""Grounding queries in a scene for generative segmenters: each query is answered once, on an
overview of the whole scene, and the answer names the targets the tiles are then segmented for.

Used by the pipeline (every generative run) and by the chat session above it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import rasterio
import torch
from rasterio.enums import Resampling

from geoseg.io import raster
from geoseg.models.base import Generative, Grounded

log = logging.getLogger("geoseg")


def scene_overview(scene: raster.Scene, size: int) -> np.ndarray:
    """The whole scene (last input: the after date of a pair) at longest side <= `size`,
    normalised like the tiles (bands x h x w float32 in [0, 1])."""
    source = scene.inputs[-1]
    height, width = scene.grid.height, scene.grid.width
    scale = max(height, width) / size
    out_h, out_w = (height, width) if scale <= 1 else (max(1, round(height / scale)), max(1, round(width / scale)))
    with rasterio.open(source.href) as ds:
        data = ds.read(
            list(source.bands), out_shape=(len(source.bands), out_h, out_w),
            resampling=Resampling.average, out_dtype="float32",
        )  # fmt: skip
        valid = ds.read_masks(1, out_shape=(out_h, out_w)) > 0
    if source.nodata is not None:
        valid &= ~np.all(data == source.nodata, axis=0)
    image = raster.to_model_bands(raster.normalise(data, scene.stats), scene.model_bands)
    return np.where(valid[None], image, 0.0).astype(np.float32)


def answer_scene(model: Generative, scene: raster.Scene, queries: Sequence[str]) -> Grounded:
    """A generative model's grounded view for this scene: each query answered once on the overview."""
    overview = torch.from_numpy(scene_overview(scene, model.info.tile_size))[None].to(model.device)
    answers = model.answer(overview, list(queries))[0]
    for a in answers:
        log.info("answer to %r: %s (%d target(s))", a.query, a.text, len(a.phrases))
        if not a.phrases:
            log.warning("the model named no target for %r (no [SEG] in its answer)", a.query)
    return model.grounded(answers)
