"""The training loop: build the model for a stage, draw batches, step, checkpoint, resume.

A run directory holds:
    train_config.json          the config the run was started with
    log.jsonl                  one line per `log_every` steps (losses, lr, seconds)
    checkpoints/last/          config.json + model.safetensors + trainer_state.pt (optimizer,
                               schedule, step) -- `geoseg train` resumes from it when it exists
    checkpoints/final/         config.json + model.safetensors of the finished run
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from geoseg.errors import InputError
from geoseg.fileio import replace_directory
from geoseg.models.compact.config import MODEL_TYPE, MODEL_TYPE_CHANGE, CompactConfig
from geoseg.models.compact.encoder import load_imagenet_weights
from geoseg.models.compact.model import WEIGHTS_NAME, CompactModel
from geoseg.models.compact.text import TextEncoder, shared_text_encoder
from geoseg.train.batch import Batch
from geoseg.train.config import TrainConfig, averaged_checkpoints
from geoseg.train.data import make_batch_source
from geoseg.train.inventory import export_inventory
from geoseg.train.losses import change_pretrain_loss, compact_loss

log = logging.getLogger(__name__)
STATE_NAME = "trainer_state.pt"


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


class Budget:
    """How far training has come: by steps, or by wall clock when `time_limit_min` is set.

    The learning-rate schedule follows whichever budget is nearer its end, so a run stopped by
    its time limit has still annealed its learning rate. Training time is summed over resumes."""

    def __init__(self, config: TrainConfig, elapsed_s: float = 0.0) -> None:
        self.steps = config.steps
        self.limit_s = 60 * config.time_limit_min if config.time_limit_min else None
        self.elapsed_before = elapsed_s
        self.started = time.monotonic()

    @property
    def elapsed_s(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started

    def progress(self, step: int) -> float:
        done = step / max(1, self.steps)
        if self.limit_s:
            done = max(done, self.elapsed_s / self.limit_s)
        return min(1.0, done)

    def out_of_time(self) -> bool:
        return self.limit_s is not None and self.elapsed_s >= self.limit_s


def make_optimizer(
    model: CompactModel, config: TrainConfig, budget: Budget | None = None
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".scale") else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )
    budget = budget or Budget(config)
    warm = config.warmup / max(1, config.steps)  # warm-up as a share of the budget

    def schedule(step: int) -> float:  # linear warm-up, then cosine to 5 %
        if step < config.warmup:
            return (step + 1) / config.warmup
        t = min(1.0, max(0.0, budget.progress(step) - warm) / max(1e-6, 1 - warm))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


def save_checkpoint(model: CompactModel, directory: Path, state: dict | None = None) -> Path:
    """Write a checkpoint directory atomically (build beside it, then swap)."""
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    if state is not None:
        torch.save(state, tmp / STATE_NAME)
    return replace_directory(tmp, directory)


def resume(model: CompactModel, opt, sched, directory: Path) -> tuple[int, float]:
    """Load model + optimizer + schedule from `directory`; returns (step, training seconds so far)."""
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(directory / WEIGHTS_NAME)), strict=True)
    state = torch.load(directory / STATE_NAME, map_location="cpu", weights_only=True)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    return int(state["step"]), float(state.get("elapsed_s", 0.0))


def batch_loss(model: CompactModel, text: TextEncoder, batch: Batch, config: TrainConfig) -> tuple[torch.Tensor, dict]:
    if config.stage == "change_pretrain":
        feats = model.encode_images(batch.images, batch.before)
        loss = change_pretrain_loss(feats.change_logits, batch.change_masks, config.loss)
        return loss, {"change": float(loss.detach())}
    feats = model.encode_images(batch.images, batch.before)
    out = model.decode(feats, text.encode(batch.queries), batch.image_index)
    return compact_loss(out, batch.masks, config.loss, batch.change_masks, batch.valid)


def train(config: TrainConfig, *, progress: bool = True) -> Path:
    """Run (or resume) training; returns the final checkpoint directory."""
    if config.model.get("type", "compact") != "compact":  # e.g. segearth_r1_generative: MLLM loop
        from geoseg.train.mllm import train_mllm

        return train_mllm(config, progress=progress)
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    run = Path(config.run_dir)
    last = run / "checkpoints" / "last"
    run.mkdir(parents=True, exist_ok=True)
    (run / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")

    model = build_model(config).train()
    budget = Budget(config)
    opt, sched = make_optimizer(model, config, budget)
    start = 0
    if (last / STATE_NAME).is_file():
        start, budget.elapsed_before = resume(model, opt, sched, last)
    if start:
        log.info("resuming %s from step %d", run, start)
    final = run / "checkpoints" / "final"
    if (start >= config.steps or budget.out_of_time()) and (final / WEIGHTS_NAME).is_file():
        log.info("%s is already trained (step %d); keeping its final checkpoint", run, start)
        return final  # not written again: its export (the shipped weights) stays byte for byte
    step = _train_steps(model, opt, sched, budget, config, start, progress)
    model.config.extra = {**model.config.extra, "trained_steps": step, "stage": config.stage}
    save_checkpoint(model.eval(), final)
    if config.export_to:
        export_final(final, config)
        # the concepts and wordings this config trained, with the unknown-query rule (inventory.py)
        export_inventory(Path(config.export_to), config)
    return final


def export_final(final: Path, config: TrainConfig) -> Path:
    """Copy the final checkpoint to `export_to`, or write its average with the `export_average_with`
    checkpoints there, each weighted `export_average_share` (float tensors averaged; counters such
    as BatchNorm's batch count kept from `final`).

    An average is also kept beside `final` as `exported`: the shipped weights are overwritten by
    the next phase's export, and a later phase may start from or average with this one's."""
    export = Path(config.export_to)
    export.mkdir(parents=True, exist_ok=True)
    others = averaged_checkpoints(config)
    if not others:
        for name in ("config.json", WEIGHTS_NAME):
            shutil.copy2(final / name, export / name)
        return export
    from safetensors.torch import load_file

    model = CompactModel.from_pretrained(final)
    own = model.state_dict()
    share = config.export_average_share
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
    kept = save_checkpoint(model, final.parent / "exported")
    for name in ("config.json", WEIGHTS_NAME):
        shutil.copy2(kept / name, export / name)
    return export


def _train_steps(model: CompactModel, opt: torch.optim.Optimizer,
                 sched: torch.optim.lr_scheduler.LambdaLR, budget: Budget, config: TrainConfig,
                 start: int, progress: bool) -> int:
    """Step from `start` until the step or time budget ends, logging and checkpointing to `last`;
    returns the step reached."""
    run = Path(config.run_dir)
    last = run / "checkpoints" / "last"
    text = shared_text_encoder(model.config.text_encoder, model.config.max_text_tokens)
    source = make_batch_source(config, start_step=start)
    if getattr(source, "vocabulary", None):  # encode every training wording once, up front
        text.encode(source.vocabulary)
    budget.started = time.monotonic()
    bar = tqdm(total=config.steps, initial=start, file=sys.stderr, disable=not progress, desc=config.stage)
    step = start
    with open(run / "log.jsonl", "a") as logf:
        while step < config.steps and not budget.out_of_time():  # a resumed run may be at its end
            batch = source.next_batch()
            loss, parts = batch_loss(model, text, batch, config)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            sched.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            out_of_time = budget.out_of_time()
            if step % config.log_every == 0:
                record = {"step": step, "loss": float(loss.detach()), **parts, "lr": sched.get_last_lr()[0],
                          "seconds": round(budget.elapsed_s, 1)}
                logf.write(json.dumps(record) + "\n")
                logf.flush()
            if step % config.checkpoint_every == 0 or step == config.steps or out_of_time:
                state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step,
                         "elapsed_s": budget.elapsed_s}
                save_checkpoint(model, last, state)
            if out_of_time:
                log.warning("time limit of %s min reached at step %d", config.time_limit_min, step)
                break
    bar.close()
    source.close()
    return step
