"""The compact model's configuration: one dataclass, written as `config.json` beside the weights."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from geoseg.models.concepts import Inventory

MODEL_TYPE = "geoseg_compact"
MODEL_TYPE_CHANGE = "geoseg_compact_change"
DEFAULT_TEXT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass
class CompactConfig:
    """Architecture hyper-parameters (and the facts a loader needs) of a compact segmenter."""

    model_type: str = MODEL_TYPE
    version: str = "0.8.0"  # 0.2: EfficientNet-Lite0 encoder, real data; 0.3: a second phase, averaged; 0.4: a third on 256 px tiles; 0.5: a fourth, thirds averaged; 0.6: a fifth (compact only), quarters; 0.7: a sixth, half and half with 0.6; 0.7.1: the same weights read at 1 and 0.75x, averaged; 0.8: a seventh phase (farmland, rural roads, inland water, composited damage, unrelated concepts), read at 1.25x
    # vision encoder: EfficientNet-Lite0 (ImageNet-initialised), features at strides 4, 8, 16, 32;
    # encoder_width < 1 shrinks it for tiny test models
    encoder: str = "efficientnet_lite0"
    encoder_width: float = 1.0
    mlp_ratio: float = 3.0  # decoder conv blocks
    # language side and guidance
    text_encoder: str = DEFAULT_TEXT_ENCODER
    text_dim: int = 384
    max_text_tokens: int = 24
    dim: int = 128  # width of guidance tokens and of the decoder at strides 32/16
    heads: int = 4
    top_ratio: float = 0.15  # share of vision tokens curated per linguistic token
    min_top: int = 4
    decoder_widths: tuple[int, int] = (64, 32)  # decoder width at strides 8 and 4
    # inference facts
    tile_size: int = 256
    overlap: int = 64
    # EfficientNet-Lite's own input convention, (x - 127) / 128 on 0-255 values
    mean: tuple[float, float, float] = (127 / 255, 127 / 255, 127 / 255)
    std: tuple[float, float, float] = (128 / 255, 128 / 255, 128 / 255)
    # ground sample distances (m/px) the weights were trained on; the engine reads scenes far
    # finer than the lower bound at a resolution inside the range
    gsd_range: tuple[float, float] = (0.07, 2.0)
    # the probabilities are the mean over reads of each tile resampled by these factors (chosen
    # on validation, docs/models/compact.md); (1.0,) reads the tile as it is
    inference_scales: tuple[float, ...] = (1.0,)
    # the concepts and wordings the weights were trained on and the rule a query is judged known
    # by (geoseg.models.concepts; written by geoseg.train.inventory); None: none declared, not checked
    inventory: Inventory | None = None
    extra: dict = field(default_factory=dict)  # training provenance (data, steps, metrics)

    def __post_init__(self) -> None:
        # predict averages over the reads: an empty list or a factor <= 0 could only fail there
        if not self.inference_scales or not all(float(f) > 0 for f in self.inference_scales):
            raise ValueError(f"inference_scales {list(self.inference_scales)} must list read factors > 0, e.g. [1.0]")

    @property
    def change(self) -> bool:
        return self.model_type == MODEL_TYPE_CHANGE

    def to_dict(self) -> dict:
        out = asdict(self)
        out["inventory"] = self.inventory.to_dict() if self.inventory else None
        return out

    @classmethod
    def from_dict(cls, data: dict) -> CompactConfig:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        for key in ("decoder_widths", "mean", "std", "gsd_range", "inference_scales"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        if isinstance(kwargs.get("inventory"), dict):
            kwargs["inventory"] = Inventory.from_dict(kwargs["inventory"])
        return cls(**kwargs)

    def save(self, directory: str | Path) -> None:
        path = Path(directory) / "config.json"
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> CompactConfig:
        return cls.from_dict(json.loads((Path(directory) / "config.json").read_text()))


def tiny_config(change: bool = False) -> CompactConfig:
    """A very small configuration for unit tests (runs in milliseconds)."""
    return CompactConfig(
        model_type=MODEL_TYPE_CHANGE if change else MODEL_TYPE,
        encoder_width=0.25,
        dim=32,
        heads=2,
        decoder_widths=(16, 8),
        tile_size=64,
        overlap=16,
    )
