"""Multi-turn dialogue over one scene (MIRAS), an application above the pipeline.

Answer-then-ground (geoseg.run.grounding): a generative model (SegEarth-R2 style) writes a text answer with k `[SEG]`, one per named target.
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

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, cast

from geoseg.errors import InputError
from geoseg.io import gpkg, raster
from geoseg.models.base import Dialogue
from geoseg.options import RunOptions
from geoseg.queries import layer_name_for, validate_queries
from geoseg.run.grounding import answer_scene
from geoseg.run.outputs import check_outputs

if TYPE_CHECKING:
    from geoseg.models.segearth.generate import Answer as SegEarthAnswer


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
        from geoseg.models.registry import load_segmenter

        self.options = options or RunOptions()
        self.scene_path = scene if isinstance(scene, Path) else str(scene)  # a URL stays a URL
        self.output = Path(output)
        if self.options.layer:
            raise InputError("--layer does not apply to chat: each turn gets its own layer (turn_N_...)")
        check_outputs(self.output, self.options, n_scenes=1, n_queries=1)
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
        from geoseg.run import pipeline

        query = validate_queries([query])[0]
        number = len(self.history) + 1
        view = cast(Dialogue, self.model).with_history(self.history)  # checked in __init__
        grounded = answer_scene(view, self.scene, [query])
        answer = grounded.answers[0]
        layer = gpkg.unique_layer_names([*self.layers, layer_name_for(f"turn {number} {query}")])[-1]
        first = not self.layers
        opts = replace(
            self.options, layer=layer,
            overwrite=self.options.overwrite and first, append=self.options.append or not first,
        )  # fmt: skip
        summary = pipeline.segment([self.scene], [query], self.output, opts, segmenter=grounded)  # opened once per session
        self.history.append(cast("SegEarthAnswer", answer).turn)  # dialogue answers are SegEarth's
        self.layers.append(layer)
        return TurnResult(number, query, answer.text, list(answer.phrases), layer, summary.layers[0].features)
