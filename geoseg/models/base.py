"""The model contract: what every segmenter gives the pipeline and what it gets from it.

The pipeline never knows which model runs. It reads `info` to plan tiles (native size, overlap,
bands) and calls `predict` with batches of tiles that are already normalised to [0, 1] with
statistics computed once per scene. Models apply their own normalisation (ImageNet mean/std, ...)
on top, return per-pixel probabilities at the tile's size, and must be deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class ModelInfo:
    """What the pipeline and the provenance record need to know about a model."""

    name: str
    version: str
    tile_size: int  # native square input size in pixels; tiles are cut at this size
    overlap: int  # default overlap between neighbouring tiles, in pixels
    bands: int = 3  # number of input channels the model expects (RGB order)
    weights_sha256: str | None = None
    license: str = "unknown"
    change_native: bool = False  # True: predict(after, before=before) returns change probabilities
    extra: dict = field(default_factory=dict)  # family-specific facts for provenance

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Target:
    """One named target of a multi-target answer (e.g. SegEarth-R2's `<p>phrase</p>[SEG]`)."""

    phrase: str
    probabilities: torch.Tensor  # H x W in [0, 1]


@dataclass
class Prediction:
    """Output of `Segmenter.predict` for B tiles and Q queries."""

    probabilities: torch.Tensor  # B x Q x H x W, float32 in [0, 1], on any device
    targets: list[list[list[Target]]] | None = None  # [b][q] -> targets, when the model names them
    text: list[str] | None = None  # one text answer per query, when the model writes one


@runtime_checkable
class Segmenter(Protocol):
    """A language-guided segmenter.

    `images` is a float32 tensor B x C x H x W with values in [0, 1] (C == info.bands), already on
    `device`. `queries` are the natural-language queries of the run; implementations encode each
    image once and reuse its features for every query. With `before` (same shape as `images`) a
    change-native model returns the probability of the queried change between `before` and
    `images` (the after date). Pixels outside the valid data are handled by the pipeline.
    """

    info: ModelInfo
    device: torch.device

    def predict(
        self,
        images: torch.Tensor,
        queries: Sequence[str],
        *,
        before: torch.Tensor | None = None,
    ) -> Prediction: ...
