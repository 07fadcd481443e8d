"""Training configuration: one YAML or TOML file -> `TrainConfig`.

Example (configs/compact-real.yaml has the full set):

    run_dir: runs/compact
    stage: segment            # segment | change_pretrain | change
    steps: 6000
    batch_size: 8
    model: {tile_size: 256}   # CompactConfig overrides
    data: {seed: 0, tile: 128}
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from geoseg.errors import InputError
from geoseg.train.losses import LossWeights

STAGES = ("segment", "change_pretrain", "change")


@dataclass
class DataConfig:
    source: str = "synth"  # synth (drawn on the fly) or a path to a JSONL manifest
    seed: int = 0
    tile: int = 128  # training crop size in pixels (multiple of 32)
    scene_size: int = 512  # synthetic scenes are rendered at this size, then cropped
    gsds: tuple[float, ...] = (0.3, 0.5, 1.0, 2.0)  # ground sample distances drawn per scene
    pool_scenes: int = 48  # scenes kept in memory; crops and queries are drawn from them
    refresh_every: int = 50  # steps between replacing one pooled scene by a fresh render
    queries_per_image: int = 3
    empty_share: float = 0.25  # share of queries whose target is absent from the crop
    # Share of a synthetic crop's empty queries asked about a class it shows with an attribute or
    # relation it lacks ("red roofs" where every roof is grey; train.queries.choose_queries).
    near_miss_share: float = 0.0
    real: tuple[str, ...] = ()  # manifests of real labelled imagery (their area-split:val lines are never used)
    real_share: float = 0.0  # share of batches drawn from `real`
    real_scale: tuple[float, float] = (0.75, 2.5)  # crops of real images are resampled by a factor in this range
    real_weights: dict[str, float] = field(default_factory=dict)  # source name -> draw weight (others 1.0)
    # Draw each image of a batch from real or synthetic (by real_share) instead of each batch
    # whole from one: BatchNorm then trains under the same mixture statistics inference uses
    # (geoseg.train.data.MixedSource). Off in the configs written before it, which it would change.
    mix_within_batch: bool = False
    # Share of real crops showing water whose water is recoloured (geoseg.train.real.WATER_TINTS):
    # lagoons and ponds are rarely sea blue, and one source's water must not teach a colour.
    water_retint: float = 0.0
    # Share of those recoloured crops whose water also gets algae or silt blotches (geoseg.train.
    # real.mottle): olive, mottled lakes were missed where only smooth water was trained.
    water_mottle: float = 0.0
    # Share of real crops with labelled buildings that get building damage composited onto them
    # (geoseg.train.damage); the other such crops are asked the damage queries with empty masks.
    damage_share: float = 0.0
    # Share of real queries replaced by a concept the model must not know (train.queries.
    # UNRELATED_TRAIN) with an empty mask: the existence head learns to answer "nothing".
    unrelated_share: float = 0.0


@dataclass
class TrainConfig:
    run_dir: str = "runs/compact"
    stage: str = "segment"
    steps: int = 2000
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 0.02
    warmup: int = 100
    grad_clip: float = 1.0
    threads: int = 2
    checkpoint_every: int = 250
    log_every: int = 10
    seed: int = 0
    init_from: str | None = None  # checkpoint directory to start from (weights only)
    pretrained_encoder: str | None = "imagenet"  # without init_from: start the encoder from ImageNet weights
    export_to: str | None = None  # copy the final checkpoint (config + weights) here
    # Export the average of the final weights and these checkpoints' (e.g. earlier phases' finals;
    # one path or a list), each with this share (the final keeps the rest): chosen on validation
    # sets like any checkpoint.
    export_average_with: str | list[str] | None = None
    export_average_share: float = 0.3
    # Re-estimate BatchNorm's statistics on this many training batches before exporting (0: keep
    # the running averages the run ended with); trainer.reestimate_batchnorm says why.
    export_bn_batches: int = 0
    # Keep an exponential moving average of the trained weights (this decay per step; horizon about
    # 1 / (1 - decay) steps): the run writes it as checkpoints/ema beside checkpoints/final, a
    # candidate like any other; `export_ema` exports it instead of the final weights.
    ema_decay: float | None = None
    export_ema: bool = False
    time_limit_min: float | None = None  # stop (and checkpoint) after this much wall clock
    model: dict = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossWeights = field(default_factory=LossWeights)

    def to_dict(self) -> dict:
        return asdict(self)


def _build(cls, data: dict, where: str):
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise InputError(f"{where}: unknown training option(s) {', '.join(sorted(unknown))}")
    return cls(**data)


def train_config_from_dict(data: dict, where: str = "config") -> TrainConfig:
    data = dict(data)
    nested = {
        "data": _build(DataConfig, data.pop("data", {}) or {}, f"{where} [data]"),
        "loss": _build(LossWeights, data.pop("loss", {}) or {}, f"{where} [loss]"),
    }
    config = _build(TrainConfig, data, where)
    config.data, config.loss = nested["data"], nested["loss"]
    config.data.real = tuple(config.data.real)
    config.data.real_scale = tuple(config.data.real_scale)
    config.data.gsds = tuple(config.data.gsds)
    if config.stage not in STAGES:
        raise InputError(f"{where}: stage must be one of {', '.join(STAGES)}, not {config.stage!r}")
    others = averaged_checkpoints(config)
    if others and not 0 < config.export_average_share * len(others) < 1:
        raise InputError(f"{where}: export_average_share x {len(others)} checkpoint(s) must lie between 0 and 1 "
                         f"(the final weights keep the rest), not {config.export_average_share}")
    for name in ("real_share", "empty_share", "near_miss_share", "water_retint", "water_mottle", "damage_share", "unrelated_share"):
        if not 0 <= getattr(config.data, name) <= 1:
            raise InputError(f"{where}: data.{name} is a share between 0 and 1, not {getattr(config.data, name)}")
    if config.ema_decay is not None and not 0 <= config.ema_decay < 1:
        raise InputError(f"{where}: ema_decay is a decay per step, at least 0 and under 1, not {config.ema_decay}")
    if config.export_ema and config.ema_decay is None:
        raise InputError(f"{where}: export_ema exports the moving average ema_decay keeps; set ema_decay (e.g. 0.999)")
    if config.export_bn_batches < 0:
        raise InputError(f"{where}: export_bn_batches counts batches (0: keep the run's statistics), not {config.export_bn_batches}")
    if config.data.tile % 32:
        raise InputError(f"{where}: data.tile must be a multiple of 32, not {config.data.tile}")
    return config


def averaged_checkpoints(config: TrainConfig) -> list[Path]:
    """The checkpoints `export_average_with` names, as a list (one path is a list of one)."""
    others = config.export_average_with or []
    return [Path(p) for p in ([others] if isinstance(others, str) else others)]


def load_train_config(path: str | Path) -> TrainConfig:
    """Read a YAML (.yaml/.yml) or TOML (.toml) training config."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"training config {path} does not exist")
    text = path.read_text()
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        tomllib = None
    try:
        if path.suffix == ".toml":
            if tomllib is None:
                raise InputError(f"{path}: TOML configs need Python >= 3.11; use YAML")
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml", ".json"):
            data = yaml.safe_load(text) if path.suffix != ".json" else json.loads(text)
        else:
            raise InputError(f"{path}: use a .yaml, .yml or .toml training config")
    except (yaml.YAMLError, ValueError) as e:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise InputError(f"{path} is not valid {path.suffix[1:].upper()}: {e}") from None
    return train_config_from_dict(data or {}, str(path))
