"""The compact model's configuration: one dataclass, written as `config.json` beside the weights."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

MODEL_TYPE = "geoseg_compact"
MODEL_TYPE_CHANGE = "geoseg_compact_change"
DEFAULT_TEXT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass
class CompactConfig:
    """Architecture hyper-parameters (and the facts a loader needs) of a compact segmenter."""

    model_type: str = MODEL_TYPE
    version: str = "0.1.0"
    # vision encoder: 4 stages at strides 4, 8, 16, 32
    widths: tuple[int, int, int, int] = (32, 64, 160, 320)
    depths: tuple[int, int, int, int] = (1, 2, 4, 3)
    attn_blocks: tuple[int, int, int, int] = (0, 0, 1, 3)  # last n blocks of a stage are attention
    mlp_ratio: float = 3.0
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
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    extra: dict = field(default_factory=dict)  # training provenance (data, steps, metrics)

    @property
    def change(self) -> bool:
        return self.model_type == MODEL_TYPE_CHANGE

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CompactConfig:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        for key in ("widths", "depths", "attn_blocks", "decoder_widths", "mean", "std"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
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
        widths=(8, 16, 32, 32),
        depths=(1, 1, 1, 1),
        attn_blocks=(0, 0, 1, 1),
        dim=32,
        heads=2,
        decoder_widths=(16, 8),
        tile_size=64,
        overlap=16,
    )
