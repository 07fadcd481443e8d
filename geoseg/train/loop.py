"""The one training loop: every trainer (compact model, SegEarth MLLM) plugs a `TrainingTask` in.

`run_training(task, config)` owns what every run shares: threads and seed, the run directory, the
step and time budget (training seconds summed over resumes), the learning-rate schedule, logging,
checkpoint cadence, resuming, the final checkpoint and its export, and leaving a finished run as it
is. The task owns the model: its trainable parameters, the loss of a batch (and its gradients),
the batches, and how its checkpoints are written and read.

A run directory holds:
    train_config.json          the config the run was (last) started with
    log.jsonl                  one line per `log_every` steps (loss and its parts, lr, seconds);
                               appended across resumes, `seconds` counting the whole run
    checkpoints/last/          trainer_state.pt (optimizer, schedule, step, elapsed_s) and the
                               task's trained weights -- a run started again resumes from it
    checkpoints/final/         config.json + model.safetensors (+ what the task adds) of the
                               finished run; while it exists and the budget is spent, a run
                               started again takes no step and writes nothing

The schedule is linear warm-up from 1/warmup, then cosine to 5 % of `lr` over whichever budget
(steps or `time_limit_min`) is nearer its end, flat at 5 % past it. It is transformers'
`get_cosine_with_min_lr_schedule_with_warmup(min_lr_rate=0.05)` with two differences kept on
purpose: the position on the cosine is the budget's progress (the library counts steps only, and
a run stopped by its time limit must still have annealed), and past its end the library's factor
rises again while this one stays at 5 %; the warm-up starts one step later than the library's,
which would take a first step at learning rate 0. tests/test_train_loop.py compares the two.

This module imports torch and the standard library only (geoseg.train.gpu.run uses `lr_factor`
on a machine without the data stack).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:  # not at run time: geoseg.train.gpu.run imports this module without the data stack
    from geoseg.train.config import TrainConfig

__all__ = ["STATE_NAME", "Budget", "TrainingTask", "decay_groups", "lr_factor", "make_optimizer",
           "read_state", "run_training"]

log = logging.getLogger(__name__)

STATE_NAME = "trainer_state.pt"  # in checkpoints/last: optimizer, scheduler, step, elapsed_s
FINAL_WEIGHTS = "model.safetensors"  # a final checkpoint is complete once it is in place
MIN_LR_RATE = 0.05

Clock = Callable[[], float]


class TrainingTask(Protocol):
    """What a trainer supplies to `run_training`."""

    label: str  # shown on the progress bar

    def build(self) -> list[dict[str, Any]]:
        """Build (or load) the model to train; return its trainable parameters as AdamW parameter
        groups (each with its `weight_decay`)."""
        ...

    def load_last(self, directory: Path, state: dict[str, Any]) -> None:
        """Restore the weights `save_last` wrote to `directory` (`state`: trainer_state.pt, read)."""
        ...

    def save_last(self, directory: Path, state: dict[str, Any]) -> None:
        """Write the trained weights and `state` (optimizer, scheduler, step, elapsed_s) to
        `directory` so that a crash never leaves it half written; `state` goes to STATE_NAME."""
        ...

    def open_batches(self, start_step: int) -> None:
        """Start drawing training batches (a resumed run starts at `start_step`)."""
        ...

    def accumulate(self) -> tuple[float, dict[str, float]]:
        """Draw the next batch (or micro-batches), compute the loss and its gradients (backward);
        return the loss and its parts for the log."""
        ...

    def after_step(self) -> None:
        """Called after each optimizer step (e.g. to update a moving average of the weights)."""
        ...

    def close_batches(self) -> None: ...

    def save_final(self, directory: Path, step: int) -> Path:
        """Write the final checkpoint (config.json + FINAL_WEIGHTS) to `directory`, atomically."""
        ...

    def export(self, final: Path) -> None:
        """Ship the final checkpoint to the config's `export_to`."""
        ...


class Budget:
    """How far training has come: by steps, or by wall clock when `time_limit_min` is set.

    The learning-rate schedule follows whichever budget is nearer its end, so a run stopped by
    its time limit has still annealed its learning rate. Training time is summed over resumes."""

    def __init__(self, config: TrainConfig, elapsed_s: float = 0.0, clock: Clock = time.monotonic) -> None:
        self.steps = config.steps
        self.limit_s = 60 * config.time_limit_min if config.time_limit_min else None
        self.elapsed_before = elapsed_s
        self.clock = clock
        self.started = clock()

    def restart(self) -> None:
        """Count from now (the time spent loading and building is no training time)."""
        self.started = self.clock()

    @property
    def elapsed_s(self) -> float:
        return self.elapsed_before + self.clock() - self.started

    def progress(self, step: int) -> float:
        done = step / max(1, self.steps)
        if self.limit_s:
            done = max(done, self.elapsed_s / self.limit_s)
        return min(1.0, done)

    def out_of_time(self) -> bool:
        return self.limit_s is not None and self.elapsed_s >= self.limit_s

    def spent(self, step: int) -> bool:
        return step >= self.steps or self.out_of_time()


def lr_factor(step: int, warmup: int, steps: int, progress: float) -> float:
    """The learning-rate factor at `step`: linear warm-up from 1/warmup over `warmup` steps, then
    cosine from 1 to 5 % as `progress` (the budget's share done, 0..1) goes from the warm-up's
    share of `steps` to 1; 5 % from there on."""
    if step < warmup:
        return (step + 1) / warmup
    warm = warmup / max(1, steps)  # warm-up as a share of the budget
    t = min(1.0, max(0.0, progress - warm) / max(1e-6, 1 - warm))
    return MIN_LR_RATE + (1 - MIN_LR_RATE) * 0.5 * (1 + math.cos(math.pi * t))


def make_optimizer(
    groups: list[dict[str, Any]], config: TrainConfig, budget: Budget | None = None
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over `groups` at the config's `lr`, with the schedule (`lr_factor`) on `budget`."""
    opt = torch.optim.AdamW(groups, lr=config.lr)
    budget = budget or Budget(config)

    def schedule(step: int) -> float:
        return lr_factor(step, config.warmup, config.steps, budget.progress(step))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


def decay_groups(named: list[tuple[str, torch.nn.Parameter]], weight_decay: float,
                 no_decay: Callable[[str, torch.nn.Parameter], bool]) -> list[dict[str, Any]]:
    """Two AdamW groups: weight decay on the parameters `no_decay` does not pick, none on the rest."""
    decay = [p for n, p in named if not no_decay(n, p)]
    rest = [p for n, p in named if no_decay(n, p)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def read_state(last: Path, *, mmap: bool = False) -> dict[str, Any] | None:
    """checkpoints/last's trainer_state.pt, or None when there is none (`mmap`: for a glance at
    its step and seconds without reading its tensors)."""
    path = last / STATE_NAME
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def run_training(task: TrainingTask, config: TrainConfig, *, progress: bool = True, clock: Clock = time.monotonic) -> Path:
    """Run (or resume) training; returns the final checkpoint directory.

    A run whose step or time budget is spent and whose final checkpoint exists is left exactly as
    it is (nothing built, written, exported or logged). `clock` (seconds) is for tests."""
    from tqdm import tqdm  # here, not at the top: geoseg.train.gpu.run imports this module

    run = Path(config.run_dir)
    last = run / "checkpoints" / "last"
    final = run / "checkpoints" / "final"
    state = read_state(last, mmap=True)
    start = int(state["step"]) if state else 0
    budget = Budget(config, float(state.get("elapsed_s", 0.0)) if state else 0.0, clock)
    if budget.spent(start) and (final / FINAL_WEIGHTS).is_file():
        log.info("%s is already trained (step %d); keeping its final checkpoint", run, start)
        return final  # not written again: its export (the shipped weights) stays byte for byte

    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    run.mkdir(parents=True, exist_ok=True)
    (run / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    groups = task.build()
    params = [p for group in groups for p in group["params"]]
    opt, sched = make_optimizer(groups, config, budget)
    if state is not None:
        state = read_state(last)  # all of it now, into memory (the optimizer moments are updated in place)
        assert state is not None  # the glance above found it
        task.load_last(last, state)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        log.info("resuming %s from step %d (%.0f s trained)", run, start, budget.elapsed_before)
    del state

    task.open_batches(start)
    budget.restart()
    bar = tqdm(total=config.steps, initial=start, file=sys.stderr, disable=not progress,
               desc=task.label)
    step = start
    done = budget.spent(step)  # a resumed run may be at its end already
    try:
        with open(run / "log.jsonl", "a") as logf:
            while not done:
                opt.zero_grad(set_to_none=True)
                loss, parts = task.accumulate()
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                opt.step()
                sched.step()
                task.after_step()
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}")
                out_of_time = budget.out_of_time()  # read once: the checkpoint and the stop agree
                done = step >= config.steps or out_of_time
                if step % config.log_every == 0:
                    record = {"step": step, "loss": loss, **parts, "lr": sched.get_last_lr()[0],
                              "seconds": round(budget.elapsed_s, 1)}
                    logf.write(json.dumps(record) + "\n")
                    logf.flush()
                if step % config.checkpoint_every == 0 or done:
                    task.save_last(last, {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                          "step": step, "elapsed_s": budget.elapsed_s})
                if out_of_time:
                    log.warning("time limit of %s min reached at step %d", config.time_limit_min, step)
    finally:
        bar.close()
        task.close_batches()
    final = task.save_final(final, step)
    if config.export_to:
        task.export(final)
    return final
