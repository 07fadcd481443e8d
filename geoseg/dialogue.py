"""Answer-then-ground for generative segmenters, and multi-turn dialogue over one scene (MIRAS).

A generative model (SegEarth-R2 style) writes a text answer with k `[SEG]`, one per named target.
Over a tiled scene the answer is decided ONCE per scene and query, on an overview of the whole scene
(so relations like "far from the track field" see the whole scene, and the phrases and the text are
the same for every tile); then every tile grounds that answer: one mask per [SEG], blended per
target, so each polygon carries its phrase in `target` and the layer's provenance the answer.

    scene ──overview (longest side = model input)──▶ model.answer ──▶ Answer(text, phrases)
          ──tiles──▶ model.grounded([answer]).predict ──▶ one probability raster per phrase

`ChatSession` keeps the conversation: each turn's query is answered with the earlier turns in the
prompt ("buildings" -> "only the damaged ones" -> "the ones next to the river") and written as its
own layer, with turn number, query, history and answer in its provenance.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.enums import Resampling

from geoseg import gpkg, raster
from geoseg.errors import InputError
from geoseg.models.base import Dialogue, Generative, Grounded

log = logging.getLogger("geoseg")


def scene_overview(scene: raster.Scene, size: int) -> np.ndarray:
    """The whole scene (last input: the after date of a pair) at longest side <= `size`,
    normalised like the tiles (bands x h x w float32 in [0, 1])."""
    source = scene.inputs[-1]
    height, width = scene.grid.height, scene.grid.width
    scale = max(height, width) / size
    out_h, out_w = (height, width) if scale <= 1 else (max(1, round(height / scale)), max(1, round(width / scale)))
    with rasterio.open(source.path) as ds:
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


@dataclass
class TurnResult:
    turn: int
    query: str
    answer: str
    targets: list[str]
    layer: str
    features: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class ChatSession:
    """A conversation about one scene, written turn by turn into one GeoPackage."""

    def __init__(self, scene: str | Path, output: str | Path, options=None, *, segmenter=None):
        from geoseg import pipeline
        from geoseg.models.registry import load_segmenter

        self.options = options or pipeline.RunOptions()
        self.scene_path = Path(scene)
        self.output = Path(output)
        if self.options.layer:
            raise InputError("--layer does not apply to chat: each turn gets its own layer (turn_N_...)")
        pipeline.check_outputs(self.output, self.options, n_scenes=1, n_queries=1)
        # the input is validated before the (possibly large) model loads
        raster.open_input(self.scene_path, bands=self.options.bands, nodata=self.options.nodata,
                          pixel_coords=self.options.pixel_coords)  # fmt: skip
        self.model = segmenter or load_segmenter(
            self.options.model, device=self.options.device, allow_pickle=self.options.allow_pickle
        )
        if not isinstance(self.model, Dialogue):
            raise InputError(
                f"model {self.model.info.name!r} cannot hold a dialogue; use a generative SegEarth "
                "checkpoint (model_type segearth_r1_generative, see docs/models/mllm-training.md)"
            )
        self.scene = raster.open_scene(self.scene_path, bands=self.options.bands, nodata=self.options.nodata,
                                       pixel_coords=self.options.pixel_coords, model_bands=self.model.info.bands)  # fmt: skip
        self.history: list = []  # generate.Turn of every finished turn
        self.layers: list[str] = []

    def turn(self, query: str) -> TurnResult:
        from geoseg import pipeline

        query = pipeline.validate_queries([query])[0]
        number = len(self.history) + 1
        view = self.model.with_history(self.history)
        grounded = answer_scene(view, self.scene, [query])
        answer = grounded.answers[0]
        layer = gpkg.unique_layer_names([*self.layers, gpkg.layer_name_for(f"turn {number} {query}")])[-1]
        first = not self.layers
        opts = replace(
            self.options, layer=layer,
            overwrite=self.options.overwrite and first, append=self.options.append or not first,
        )  # fmt: skip
        summary = pipeline.segment([self.scene_path], [query], self.output, opts, segmenter=grounded)
        self.history.append(answer.turn)
        self.layers.append(layer)
        return TurnResult(number, query, answer.text, list(answer.phrases), layer, summary.layers[0].features)
