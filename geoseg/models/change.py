"""How every kind of model answers a change question between two dates, one direction per channel.

The engine asks all of them the same way, `predict_change(after, before, queries,
direction=...)` (geoseg.models.base.ChangeAware), and only indexes what comes back; the change
formulas live here and in the models:

- a ChangeAware model answers itself: compact-change asks itself with each direction's wording
  ("new ..." / "removed ...", geoseg.models.compact.segmenter), SegEarth-R1 (also in its generative
  variant) segments both dates and combines them (geoseg.models.segearth.change);
- a single-date model gets `PerDateChange`: each date segmented with the same query, then
  appeared = after x (1 - dilate(before)) and disappeared = before x (1 - dilate(after));
- a change-native model that only reads a direction from the query's words (`ModelInfo.change_native`
  without `predict_change`, e.g. the bi-temporal SegEarth) gets `WordedChange`: it cannot be asked
  for a direction, so a query that names none gets one set of polygons, `change_type` "changed"
  (UNDIRECTED), never one mask written as both directions.

`change_types(view, query)` says which change types a query's layer gets from such a view.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from geoseg.models.base import ChangeAware, ModelInfo, Prediction, Segmenter
from geoseg.queries import change_direction

APPEARED, DISAPPEARED = "appeared", "disappeared"
UNDIRECTED = "changed"  # the change_type of a model that cannot tell the directions apart
DIRECTIONS = (APPEARED, DISAPPEARED)


def per_query(direction: str | Sequence[str], queries: Sequence[str]) -> list[str]:
    """`predict_change`'s direction argument as one direction per query (one string: all of them)."""
    directions = [direction] * len(queries) if isinstance(direction, str) else list(direction)
    if len(directions) != len(queries):
        raise ValueError(f"{len(directions)} directions for {len(queries)} queries")
    return directions


def change_view(model: Segmenter, dilate_px: int = 2) -> ChangeAware:
    """`model` as the engine asks it about a pair of dates: itself when it is ChangeAware, else the
    adapter its kind needs (WordedChange for a change-native model, PerDateChange otherwise)."""
    if isinstance(model, ChangeAware):
        return model
    if model.info.change_native:
        return WordedChange(model)
    return PerDateChange(model, dilate_px)


def change_types(view: ChangeAware, query: str) -> tuple[str, ...]:
    """The change types a query's layer gets: the one its words name, else both directions, or
    UNDIRECTED from a model that cannot tell them apart."""
    direction = change_direction(query)
    if direction != "both":
        return (direction,)
    return (UNDIRECTED,) if isinstance(view, WordedChange) else DIRECTIONS


class _Adapter:
    """What an adapter shares with the model it adapts."""

    info: ModelInfo
    device: torch.device

    def __init__(self, model: Segmenter) -> None:
        self.model_behind = model
        self.info, self.device = model.info, model.device

    def predict(self, images: torch.Tensor, queries: Sequence[str], *, before: torch.Tensor | None = None) -> Prediction:
        return self.model_behind.predict(images, queries, before=before)


class PerDateChange(_Adapter):
    """A single-date model in change mode: each date segmented once for all the batch's queries,
    then appeared = after x (1 - dilate(before)), disappeared = before x (1 - dilate(after)); the
    dilation (`--dilate`, px) forgives a misregistration of that many pixels."""

    def __init__(self, model: Segmenter, dilate_px: int) -> None:
        super().__init__(model)
        self.dilate_px = dilate_px

    def predict_change(self, after: torch.Tensor, before: torch.Tensor, queries: Sequence[str], *,
                       direction: str | Sequence[str] = APPEARED) -> Prediction:
        directions = per_query(direction, queries)
        unique = list(dict.fromkeys(queries))
        p_before = self.model_behind.predict(before, unique).probabilities.float()
        p_after = self.model_behind.predict(after, unique).probabilities.float()
        out = []
        for q, d in zip(queries, directions, strict=True):
            a, b = p_after[:, unique.index(q)], p_before[:, unique.index(q)]
            if d == DISAPPEARED:
                a, b = b, a
            elif d != APPEARED:
                raise ValueError(f"direction must be one of {DIRECTIONS}, not {d!r}")
            out.append(a * (1 - dilate(b, self.dilate_px)))
        return Prediction(torch.stack(out, dim=1))


class WordedChange(_Adapter):
    """A change-native model that reads the direction from the query's words alone: asked once
    with both dates; a query that names no direction can only be answered as UNDIRECTED."""

    def predict_change(self, after: torch.Tensor, before: torch.Tensor, queries: Sequence[str], *,
                       direction: str | Sequence[str] = APPEARED) -> Prediction:
        for q, d in zip(queries, per_query(direction, queries), strict=True):
            said = change_direction(q)
            if d != (UNDIRECTED if said == "both" else said):
                raise ValueError(f"{self.info.name} reads the direction from the query's words: {q!r} "
                                 f"cannot be asked for {d!r}")
        unique = list(dict.fromkeys(queries))
        p = self.model_behind.predict(after, unique, before=before).probabilities.float()
        return Prediction(p[:, [unique.index(q) for q in queries]])


def dilate(prob: torch.Tensor, radius: int) -> torch.Tensor:
    """Grey dilation (max filter) of B x H x W maps that forgives a misregistration of `radius` pixels."""
    if radius <= 0:
        return prob
    return F.max_pool2d(prob[:, None], 2 * radius + 1, stride=1, padding=radius)[:, 0]
