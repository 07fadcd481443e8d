"""How every kind of model answers a change question between two dates, one direction per channel.

The engine asks all of them the same way (geoseg.models.base.ChangeAware): `change_types(query)`
for the layer's channels, then `predict_change(after, before, queries, direction=...)`, and only
indexes what comes back. A ChangeAware model answers itself: compact-change asks itself with each
direction's wording ("new ..." / "removed ...", geoseg.models.compact.segmenter), SegEarth-R1
segments both dates and combines them (geoseg.models.segearth.segmenter), the bi-temporal SegEarth
reads the direction from the query's words alone and says so (`changed`). A single-date model
gets `PerDateChange`. Every per-date comparison uses the one formula here (`combine`), a soft
`after AND NOT dilate(before)` (the minimum, so a clear new object keeps its own probability):

    appeared    = min(after,  1 - dilate(before))
    disappeared = min(before, 1 - dilate(after))

where the dilation forgives a misregistration of that many pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from geoseg.models.base import ChangeAware, ModelInfo, Prediction, Segmenter
from geoseg.queries import change_direction

APPEARED, DISAPPEARED = "appeared", "disappeared"
UNDIRECTED = "changed"  # the change type of a model that cannot tell the directions apart
DIRECTIONS = (APPEARED, DISAPPEARED)


def directed_change_types(query: str) -> tuple[str, ...]:
    """The change types of a model that tells directions apart: the one the query's words name,
    else both."""
    said = change_direction(query)
    return DIRECTIONS if said == "both" else (said,)


def per_query(direction: str | Sequence[str], queries: Sequence[str]) -> list[str]:
    """`predict_change`'s direction argument as one direction per query (one string: all of them)."""
    directions = [direction] * len(queries) if isinstance(direction, str) else list(direction)
    if len(directions) != len(queries):
        raise ValueError(f"{len(directions)} directions for {len(queries)} queries")
    return directions


def dilate(prob: torch.Tensor, radius: int) -> torch.Tensor:
    """Grey dilation (max filter, a (2r+1)^2 square) of ... x H x W maps."""
    if radius <= 0:
        return prob
    flat = prob.reshape(-1, 1, *prob.shape[-2:])
    out = F.max_pool2d(flat, kernel_size=2 * radius + 1, stride=1, padding=radius)
    return out.reshape(*prob.shape[:-2], *out.shape[-2:])


def combine(after: torch.Tensor, before: torch.Tensor, direction: str, radius: int) -> torch.Tensor:
    """The change of one direction from the two dates' probabilities of the same query."""
    if direction == DISAPPEARED:
        after, before = before, after
    elif direction != APPEARED:
        raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
    return torch.minimum(after, 1 - dilate(before, radius))


def change_view(model: Segmenter, dilate_px: int = 2) -> ChangeAware:
    """`model` as the engine asks it about a pair of dates: itself when it is ChangeAware, else
    PerDateChange."""
    return model if isinstance(model, ChangeAware) else PerDateChange(model, dilate_px)


def change_probabilities(view: ChangeAware, after: torch.Tensor, before: torch.Tensor, queries: Sequence[str]) -> torch.Tensor:
    """B x Q x H x W: the probability that each query's change happened in any of its change
    types (their maximum), e.g. to score a model on change samples."""
    asked = [(qi, kind) for qi, q in enumerate(queries) for kind in view.change_types(q)]
    p = view.predict_change(after, before, [queries[qi] for qi, _ in asked], direction=[k for _, k in asked]).probabilities
    out = torch.zeros(p.shape[0], len(queries), *p.shape[-2:], dtype=p.dtype, device=p.device)
    for channel, (qi, _) in enumerate(asked):
        out[:, qi] = torch.maximum(out[:, qi], p[:, channel])
    return out


class PerDateChange:
    """A single-date model in change mode: each date segmented once for all the batch's queries,
    then each direction by `combine`; the dilation (`--dilate`, px) forgives misregistration."""

    info: ModelInfo
    device: torch.device

    def __init__(self, model: Segmenter, dilate_px: int) -> None:
        self.model_behind = model
        self.info, self.device = model.info, model.device
        self.dilate_px = dilate_px

    def predict(self, images: torch.Tensor, queries: Sequence[str]) -> Prediction:
        return self.model_behind.predict(images, queries)

    def change_types(self, query: str) -> tuple[str, ...]:
        return directed_change_types(query)

    def predict_change(self, after: torch.Tensor, before: torch.Tensor, queries: Sequence[str], *,
                       direction: str | Sequence[str] = APPEARED) -> Prediction:
        directions = per_query(direction, queries)
        unique = list(dict.fromkeys(queries))
        p_before = self.model_behind.predict(before, unique).probabilities.float()
        p_after = self.model_behind.predict(after, unique).probabilities.float()
        return Prediction(torch.stack([
            combine(p_after[:, unique.index(q)], p_before[:, unique.index(q)], d, self.dilate_px)
            for q, d in zip(queries, directions, strict=True)
        ], dim=1))
