"""The model contract: what every segmenter gives the pipeline and what it gets from it.

The pipeline never knows which model runs. It reads `info` to plan tiles (native size, overlap,
bands) and calls `predict` with batches of tiles that are already normalised to [0, 1] with
statistics computed once per scene. Models apply their own normalisation (ImageNet mean/std, ...)
on top, return per-pixel probabilities at the tile's size, and must be deterministic.

What a model can do beyond `predict` is declared here as capabilities (`ChangeAware`,
`Generative`, `Dialogue`, `Grounded`, `ProvenanceSource`, `EncodesQueries`, `KnowsConcepts`): the pipeline asks `isinstance(model,
ChangeAware)`, never `hasattr`, and every wrapper (geoseg.batch.executors: batch jobs, Ray replicas)
exposes exactly the capabilities of the model it wraps (`capabilities(model)`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from geoseg.models.concepts import QueryKnowledge


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
    # Ground resolutions (metres per pixel, finest, coarsest) the weights were trained on; scenes
    # far finer are read at the finest (geoseg.io.gsd). None: no declared range, scenes read as they are.
    gsd_range: tuple[float, float] | None = None
    extra: dict = field(default_factory=dict)  # family-specific facts for provenance

    def __post_init__(self) -> None:
        if self.gsd_range is not None:
            low, high = (float(v) for v in self.gsd_range)
            if not 0 < low <= high:
                raise ValueError(f"{self.name}: gsd_range {self.gsd_range} must be (finest, coarsest) metres > 0")
            object.__setattr__(self, "gsd_range", (low, high))  # frozen: normalise lists from JSON

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

    @staticmethod
    def concat(parts: Sequence[Prediction]) -> Prediction:
        """One prediction from the predictions of consecutive batches of tiles (same queries)."""
        all_targets = [p.targets for p in parts if p.targets is not None]
        targets = [t for p in all_targets for t in p] if len(all_targets) == len(parts) else None
        text = None
        all_text = [p.text for p in parts if p.text is not None]
        if len(all_text) == len(parts):
            text = ["\n".join(dict.fromkeys(t[q] for t in all_text)) for q in range(len(all_text[0]))]
        return Prediction(torch.cat([p.probabilities for p in parts]), targets, text)


@runtime_checkable
class Segmenter(Protocol):
    """A language-guided segmenter.

    `images` is a float32 tensor B x C x H x W with values in [0, 1] (C == info.bands), already on
    `device`. `queries` are the natural-language queries of the run; implementations encode each
    image once and reuse its features for every query. Pixels outside the valid data are handled
    by the pipeline. Two dates are a capability of their own (`ChangeAware`): a model that only
    answers about pairs raises InputError here, naming `geoseg change`.
    """

    info: ModelInfo
    device: torch.device

    def predict(self, images: torch.Tensor, queries: Sequence[str]) -> Prediction: ...


# ---------------------------------------------------------------- capabilities


class Answer(Protocol):
    """A generative model's answer to one query, decided once per scene (e.g.
    geoseg.models.segearth.generate.Answer)."""

    query: str
    text: str  # the answer for people, without markup
    phrases: tuple[str, ...]  # one per named target, in order


@runtime_checkable
class ChangeAware(Segmenter, Protocol):
    """Answers a change question about two dates, one direction at a time. The one declaration of
    "this model reads pairs": models without it are asked through geoseg.models.change.PerDateChange.

    `change_types(query)` says which change types the query's layer gets: the direction its words
    name, else both `appeared` and `disappeared`, or `changed` from a model that cannot tell the
    directions apart (it reads them from the query's words alone). `predict_change` is then asked,
    per query, for exactly those (one for every query or one per query; the engine asks each batch
    once, a (query, change type) per channel, so a query may come twice). How the model tells the
    directions apart is its own (compact-change: each direction's wording; SegEarth-R1: both dates
    segmented and compared, with a feature-change test against misregistration and lighting)."""

    def change_types(self, query: str) -> tuple[str, ...]: ...

    def predict_change(
        self, after: torch.Tensor, before: torch.Tensor, queries: Sequence[str], *,
        direction: str | Sequence[str] = "appeared",
    ) -> Prediction: ...


@runtime_checkable
class Generative(Segmenter, Protocol):
    """Writes an answer per query (`answer`, e.g. once on a scene overview), then grounds fixed
    answers on every tile (`grounded`), one probability raster per target the answer names."""

    def answer(self, images: torch.Tensor, queries: Sequence[str]) -> list[list[Answer]]: ...  # [b][q]
    def grounded(self, answers: Sequence[Answer]) -> Grounded: ...


@runtime_checkable
class Dialogue(Generative, Protocol):
    """A generative model that answers inside a conversation (the earlier turns in its prompt)."""

    def with_history(self, history: Sequence[Any]) -> Dialogue: ...


@runtime_checkable
class Grounded(Segmenter, Protocol):
    """Grounds fixed answers (one per query) on every tile: `predict` fills Prediction.targets with
    the phrases of `answers`, so the pipeline writes one channel per named target."""

    answers: Sequence[Answer]


@runtime_checkable
class ProvenanceSource(Segmenter, Protocol):
    """Adds its own record (e.g. the answer) to the provenance of query `query_index`'s layer."""

    def provenance(self, query_index: int) -> dict: ...


@runtime_checkable
class EncodesQueries(Segmenter, Protocol):
    """Encodes a run's queries ahead of its first `predict`. The pipeline calls it in a thread
    while the scene opens, so a query never asked before has its text encoder loaded meanwhile;
    `predict` finds the encoding ready (or waits for it)."""

    def encode_queries(self, queries: Sequence[str]) -> None: ...


@runtime_checkable
class KnowsConcepts(Segmenter, Protocol):
    """Declares the concepts and wordings it was trained on (geoseg.models.concepts.Inventory) and
    says, per query, whether the query is close to one of them and which trained concepts are
    nearest. The pipeline asks before any tile runs; a model without this capability (an
    open-vocabulary model) is not checked."""

    def check_queries(self, queries: Sequence[str]) -> list[QueryKnowledge]: ...


@runtime_checkable
class TorchBacked(Protocol):
    """Keeps its weights in one torch module, `model` (the dry run reports their memory). Not a
    capability a wrapper forwards: the dry run reads it from a model it loaded itself."""

    model: torch.nn.Module


CAPABILITIES: tuple[type, ...] = (
    ChangeAware, Generative, Dialogue, Grounded, ProvenanceSource, EncodesQueries, KnowsConcepts,
)


def capabilities(model: object) -> tuple[type, ...]:
    """The capabilities (in CAPABILITIES order) that `model` declares beyond `predict`."""
    return tuple(c for c in CAPABILITIES if isinstance(model, c))


# The data members each capability declares (methods are forwarded call by call): what a wrapper
# copies to expose the same capabilities. tests/test_capabilities.py checks it against the Protocols.
DATA_MEMBERS: dict[type, tuple[str, ...]] = {Grounded: ("answers",)}


def declared_members(model: object, caps: Sequence[type]) -> dict[str, Any]:
    """The data members that capabilities `caps` declare (DATA_MEMBERS), read from `model`."""
    return {name: getattr(model, name) for c in caps for name in DATA_MEMBERS.get(c, ())}
