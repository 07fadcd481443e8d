"""The compact model's trainer: its model, loss, batches and checkpoints, as a `TrainingTask` of
the one training loop (geoseg.train.loop, which owns budget, schedule, log, resume and the run
directory).

A run directory holds:
    train_config.json          the config the run was started with
    log.jsonl                  one line per `log_every` steps (losses, lr, seconds)
    checkpoints/last/          config.json + model.safetensors + trainer_state.pt (optimizer,
                               schedule, step, training seconds) -- `geoseg train` resumes from it
    checkpoints/final/         config.json + model.safetensors of the finished run
    checkpoints/ema/           with `ema_decay`: the moving average of its weights (BatchNorm
                               statistics the final's), a candidate beside the final
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from geoseg.errors import InputError
from geoseg.io.fileio import replace_directory
from geoseg.models.compact.config import MODEL_TYPE, MODEL_TYPE_CHANGE, CompactConfig
from geoseg.models.compact.encoder import load_imagenet_weights
from geoseg.models.compact.model import WEIGHTS_NAME, CompactModel, ImageFeatures, ModelOutput
from geoseg.models.compact.segmenter import write_inventory_vectors
from geoseg.models.compact.text import TextEncoder, shared_text_encoder
from geoseg.train.batch import Batch
from geoseg.train.config import TrainConfig, averaged_checkpoints
from geoseg.train.data import make_batch_source
from geoseg.train.inventory import export_inventory
from geoseg.train.loop import STATE_NAME, Budget, decay_groups, run_training
from geoseg.train.loop import make_optimizer as _loop_optimizer
from geoseg.train.losses import change_pretrain_loss, compact_loss

__all__ = ["STATE_NAME", "Budget", "CompactTask", "batch_loss", "build_model", "export_final",
           "init_weights", "make_optimizer", "save_checkpoint", "train"]

log = logging.getLogger(__name__)

EMA_DIR = "ema"  # beside checkpoints/final: the moving average of the weights (ema_decay)


def build_model(config: TrainConfig) -> CompactModel:
    """A fresh model for the config's stage, optionally initialised from another checkpoint."""
    model_type = MODEL_TYPE if config.stage == "segment" else MODEL_TYPE_CHANGE
    cfg = CompactConfig.from_dict({**config.model, "model_type": model_type})
    model = CompactModel(cfg)
    if config.init_from:
        init_weights(model, Path(config.init_from))
    elif config.pretrained_encoder == "imagenet":
        n = load_imagenet_weights(model.encoder)
        log.info("encoder initialised from ImageNet (%d tensors)", n)
    elif config.pretrained_encoder is not None:
        raise InputError(f"pretrained_encoder must be 'imagenet' or null, not {config.pretrained_encoder!r}")
    return model


def init_weights(model: CompactModel, directory: Path) -> None:
    """Copy every tensor of a checkpoint whose name and shape fit (e.g. single-date -> change)."""
    from safetensors.torch import load_file

    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise InputError(f"init_from: {weights} does not exist; point it at a checkpoint directory")
    source = load_file(str(weights))
    own = model.state_dict()
    fitting = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(fitting, strict=False)
    log.info("initialised %d of %d tensors from %s", len(fitting), len(own), directory)


def no_decay(name: str, p: torch.nn.Parameter) -> bool:
    """Biases, norms and the learned scales are not decayed."""
    return p.ndim <= 1 or name.endswith(".scale")


def make_optimizer(
    model: CompactModel, config: TrainConfig, budget: Budget | None = None
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with the loop's schedule over the model's trainable parameters."""
    return _loop_optimizer(param_groups(model, config), config, budget)


def param_groups(model: CompactModel, config: TrainConfig) -> list[dict[str, Any]]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return decay_groups(named, config.weight_decay, no_decay)


def save_checkpoint(model: CompactModel, directory: Path, state: dict | None = None) -> Path:
    """Write a checkpoint directory atomically (build beside it, then swap)."""
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    if state is not None:
        torch.save(state, tmp / STATE_NAME)
    return replace_directory(tmp, directory)


def forward_batch(model: CompactModel, text: TextEncoder, batch: Batch, stage: str) -> tuple[ImageFeatures, ModelOutput | None]:
    """The model on a training batch: image features, and the decoded queries except in
    change_pretrain (which trains the class-agnostic change head alone)."""
    feats = model.encode_images(batch.images, batch.before)
    if stage == "change_pretrain":
        return feats, None
    return feats, model.decode(feats, text.encode(batch.queries), batch.image_index)


def batch_loss(model: CompactModel, text: TextEncoder, batch: Batch, config: TrainConfig) -> tuple[torch.Tensor, dict]:
    feats, out = forward_batch(model, text, batch, config.stage)
    if out is None:
        assert feats.change_logits is not None and batch.change_masks is not None  # a change batch
        loss = change_pretrain_loss(feats.change_logits, batch.change_masks, config.loss)
        return loss, {"change": float(loss.detach())}
    return compact_loss(out, batch.masks, config.loss, batch.change_masks, batch.valid)


class CompactTask:
    """The compact model (stages segment, change_pretrain, change) for geoseg.train.loop."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.label = config.stage
        self.model: CompactModel | None = None
        self.text: TextEncoder | None = None
        self.source: Any = None  # make_batch_source's (duck-typed) source while batches are open
        self.ema: torch.optim.swa_utils.AveragedModel | None = None  # with ema_decay

    def _built(self) -> CompactModel:
        assert self.model is not None, "build() runs first"
        return self.model

    def build(self) -> list[dict[str, Any]]:
        self.model = build_model(self.config).train()
        if self.config.ema_decay is not None:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            # parameters only: BatchNorm's statistics are the final's (or re-estimated on export)
            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(self.config.ema_decay))
        return param_groups(self.model, self.config)

    def load_last(self, directory: Path, state: dict[str, Any]) -> None:
        from safetensors.torch import load_file

        self._built().load_state_dict(load_file(str(directory / WEIGHTS_NAME)), strict=True)
        if self.ema is not None:
            if "ema" not in state:
                raise InputError(f"{directory}: this run was started without ema_decay; resume it without, "
                                 "or start a new run_dir")
            self.ema.load_state_dict(state["ema"])

    def save_last(self, directory: Path, state: dict[str, Any]) -> None:
        if self.ema is not None:  # in the trainer state, so weights, moments and average swap together
            state = {**state, "ema": self.ema.state_dict()}
        save_checkpoint(self._built(), directory, state)

    def after_step(self) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self._built())

    def open_batches(self, start_step: int) -> None:
        cfg = self._built().config
        self.text = text = shared_text_encoder(cfg.text_encoder, cfg.max_text_tokens)
        self.source = make_batch_source(self.config, start_step=start_step)
        if getattr(self.source, "vocabulary", None):  # encode every training wording once, up front
            text.encode(self.source.vocabulary)

    def accumulate(self) -> tuple[float, dict[str, float]]:
        assert self.text is not None, "open_batches() runs first"
        loss, parts = batch_loss(self._built(), self.text, self.source.next_batch(), self.config)
        loss.backward()
        return float(loss.detach()), parts

    def close_batches(self) -> None:
        if self.source is not None:
            self.source.close()
            self.source = None

    def save_final(self, directory: Path, step: int) -> Path:
        model = self._built()
        model.config.extra = {**model.config.extra, "trained_steps": step, "stage": self.config.stage}
        final = save_checkpoint(model.eval(), directory)
        if self.ema is not None:
            save_checkpoint(self._ema_model(), directory.parent / EMA_DIR)
        return final

    def _ema_model(self) -> CompactModel:
        """The moving average as a model, with the final weights' BatchNorm statistics."""
        assert self.ema is not None
        averaged = self.ema.module
        assert isinstance(averaged, CompactModel)
        with torch.no_grad():
            for own, final in zip(averaged.buffers(), self._built().buffers(), strict=True):
                own.copy_(final)
        averaged.config.extra = {**self._built().config.extra, "ema_decay": self.config.ema_decay}
        return averaged.eval()

    def export(self, final: Path) -> None:
        export_final(final, self.config)
        assert self.config.export_to is not None  # the loop exports only when it is set
        # the concepts and wordings this config trained, with the unknown-query rule (inventory.py)
        export_inventory(Path(self.config.export_to), self.config)
        write_inventory_vectors(self.config.export_to)  # the wordings' embeddings, for cold runs


def export_final(final: Path, config: TrainConfig) -> Path:
    """Copy the final checkpoint (with `export_ema`, the moving average beside it) to `export_to`;
    or write there its average with the `export_average_with` checkpoints, each weighted
    `export_average_share` (float tensors averaged; counters such as BatchNorm's batch count kept
    from `final`), and/or the weights with their BatchNorm statistics re-estimated on
    `export_bn_batches` training batches.

    Such a changed export is also kept beside `final` as `exported`: the shipped weights are
    overwritten by the next phase's export, and a later phase may start from or average with it."""
    assert config.export_to is not None  # the loop exports only when it is set
    export = Path(config.export_to)
    export.mkdir(parents=True, exist_ok=True)
    if config.export_ema:
        final = final.parent / EMA_DIR
    others = averaged_checkpoints(config)
    if not others and not config.export_bn_batches:
        for name in ("config.json", WEIGHTS_NAME):
            shutil.copy2(final / name, export / name)
        return export
    model = CompactModel.from_pretrained(final)
    if others:
        average_into(model, others, config.export_average_share, final)
    if config.export_bn_batches:
        reestimate_batchnorm(model, config, config.export_bn_batches)
    kept = save_checkpoint(model, final.parent / "exported")
    for name in ("config.json", WEIGHTS_NAME):
        shutil.copy2(kept / name, export / name)
    return export


def average_into(model: CompactModel, others: list[Path], share: float, final: Path) -> None:
    """`model` (loaded from `final`) becomes its average with `others`, each weighted `share`."""
    from safetensors.torch import load_file

    own = model.state_dict()
    averaged = {k: (1 - share * len(others)) * v if v.is_floating_point() else v for k, v in own.items()}
    for other_dir in others:
        other = load_file(str(other_dir / WEIGHTS_NAME)) if (other_dir / WEIGHTS_NAME).is_file() else {}
        if other.keys() != own.keys() or any(other[k].shape != v.shape for k, v in own.items()):
            raise InputError(f"export_average_with: {other_dir} is not a checkpoint of the model in {final}; "
                             "point it at an earlier phase's checkpoint directory")
        for k, v in own.items():
            if v.is_floating_point():
                averaged[k] = averaged[k] + share * other[k]
    model.load_state_dict(averaged)
    model.config.extra = {**model.config.extra, "averaged_with": [str(p) for p in others], "average_share": share}


# Batches for re-estimating BatchNorm are drawn as a run resumed at this step would draw them:
# from the training sources, but not the batches the run itself trained on.
BATCHNORM_DRAW_STEP = 1_000_000


def reestimate_batchnorm(model: CompactModel, config: TrainConfig, batches: int) -> None:
    """Replace every BatchNorm's running statistics by their plain average over `batches` batches of
    the config's training mix (torch's `update_bn`, as after stochastic weight averaging): the
    running averages a run ends with follow its last few dozen batches, and an average of two
    checkpoints' statistics is not the statistics of their averaged weights."""
    from torch.optim.swa_utils import update_bn

    cfg = model.config
    text = shared_text_encoder(cfg.text_encoder, cfg.max_text_tokens)
    source = make_batch_source(config, start_step=BATCHNORM_DRAW_STEP)

    class Forward(torch.nn.Module):  # update_bn calls module(batch) and finds the BatchNorms in it
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, batch: Batch) -> None:
            forward_batch(model, text, batch, config.stage)

    try:
        update_bn((source.next_batch() for _ in range(batches)), Forward())  # under no_grad
    finally:
        source.close()
    model.eval()  # update_bn leaves the wrapper, and so the model, in training mode
    model.config.extra = {**model.config.extra, "batchnorm_reestimated_on": batches}


def train(config: TrainConfig, *, progress: bool = True) -> Path:
    """`geoseg train`: the compact model, or a SegEarth MLLM when `model.type` names one; both run
    in the one loop (geoseg.train.loop), which knows neither."""
    if config.model.get("type", "compact") != "compact":
        from geoseg.train.mllm import MLLMTask

        return run_training(MLLMTask(config), config, progress=progress)
    return run_training(CompactTask(config), config, progress=progress)
