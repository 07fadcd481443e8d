"""The one training loop (geoseg.train.loop) under both trainers: a time limit counts the whole
run across resumes, a finished run takes no step and writes nothing, and the schedule."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from mllm_helpers import ListSource, generative_samples, write_tiny_checkpoint

from geoseg.models.compact import tiny_config
from geoseg.train.config import TrainConfig, train_config_from_dict
from geoseg.train.loop import STATE_NAME, lr_factor, run_training
from geoseg.train.mllm import MLLMTask
from geoseg.train.trainer import CompactTask

STEP_S = 60.0  # each step takes a minute of the fake clock
LIMIT_MIN = 3.5  # so a run stops after its 4th step (240 s >= 210 s), resumed or not


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Interrupted(Exception):
    """Stands for a killed process."""


class Clocked:
    """A task whose steps take STEP_S of the fake clock, interrupted before step `stop_before`."""

    def __init__(self, task, clock: FakeClock, stop_before: int | None = None) -> None:
        self.task, self.clock, self.stop_before = task, clock, stop_before
        self.label = task.label
        self.built = self.stepped = 0

    def __getattr__(self, name: str):
        return getattr(self.task, name)

    def build(self):
        self.built += 1
        return self.task.build()

    def accumulate(self) -> tuple[float, dict[str, float]]:
        if self.stop_before is not None and self.stepped + 1 == self.stop_before:
            raise Interrupted
        self.stepped += 1
        self.clock.now += STEP_S
        return self.task.accumulate()


def compact_run(tmp_path: Path) -> tuple[TrainConfig, Callable[[], object]]:
    model = {k: v for k, v in tiny_config().to_dict().items() if k not in ("model_type", "extra")}
    config = train_config_from_dict({
        "run_dir": str(tmp_path / "run"), "steps": 50, "batch_size": 2, "warmup": 1, "threads": 1,
        "checkpoint_every": 1, "log_every": 1, "time_limit_min": LIMIT_MIN, "model": model,
        "pretrained_encoder": None,
        "data": {"pool_scenes": 2, "scene_size": 96, "tile": 64, "queries_per_image": 2, "gsds": [0.5]},
    })  # fmt: skip
    return config, lambda: CompactTask(config)


def mllm_run(tmp_path: Path) -> tuple[TrainConfig, Callable[[], object]]:
    config = TrainConfig(
        run_dir=str(tmp_path / "run"), steps=50, lr=1e-3, warmup=1, threads=1, checkpoint_every=1,
        log_every=1, time_limit_min=LIMIT_MIN, init_from=str(write_tiny_checkpoint(tmp_path / "start")),
        model={"type": "segearth_r1_generative", "finetune": "lora", "lora": {"rank": 4}},
    )  # fmt: skip
    samples = generative_samples(2)
    return config, lambda: MLLMTask(config, ListSource(samples, batch=1))


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("make_run", [compact_run, mllm_run], ids=["compact", "mllm"])
def test_time_limit_holds_across_a_resume_and_a_finished_run_takes_no_step(tmp_path, one_thread, make_run):
    config, new_task = make_run(tmp_path)
    run = Path(config.run_dir)
    clock = FakeClock()

    first = Clocked(new_task(), clock, stop_before=3)  # killed during its 3rd step
    with pytest.raises(Interrupted):
        run_training(first, config, progress=False, clock=clock)
    assert first.stepped == 2 and not (run / "checkpoints" / "final").exists()
    clock.now += 3600  # the hour between kill and restart is no training time

    second = Clocked(new_task(), clock)
    final = run_training(second, config, progress=False, clock=clock)
    # 210 s in all: steps 3 and 4 after the resume (120 s + 120 s), not another 210 s
    assert second.stepped == 2
    state = torch.load(run / "checkpoints" / "last" / STATE_NAME, weights_only=True)
    assert state["step"] == 4 and state["elapsed_s"] == 4 * STEP_S
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert [r["seconds"] for r in log] == [60.0, 120.0, 180.0, 240.0]
    assert log[-1]["lr"] == pytest.approx(0.05 * config.lr)  # annealed by the time budget

    written = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file()}
    third = Clocked(new_task(), clock)
    assert run_training(third, config, progress=False, clock=clock) == final
    assert third.stepped == 0 and third.built == 0  # not even loaded
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file()} == written


def test_a_run_that_reached_its_steps_takes_no_step(tmp_path, one_thread):
    config, new_task = mllm_run(tmp_path)
    config.time_limit_min, config.steps = None, 2
    clock = FakeClock()
    first = Clocked(new_task(), clock)
    run_training(first, config, progress=False, clock=clock)
    assert first.stepped == 2
    again = Clocked(new_task(), clock)
    run_training(again, config, progress=False, clock=clock)
    assert again.stepped == 0 and again.built == 0
    config.steps = 3  # a longer budget continues from step 2
    more = Clocked(new_task(), clock)
    run_training(more, config, progress=False, clock=clock)
    assert more.stepped == 1


def test_schedule_is_transformers_cosine_with_min_lr_kept_flat_past_the_budget():
    """lr_factor = transformers' get_cosine_with_min_lr_schedule_with_warmup(min_lr_rate=0.05)
    on the step budget, its warm-up one step later (no step at lr 0), and flat at 5 % where the
    library's rises again; on a time budget it follows the time's progress."""
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    warmup, steps = 10, 100
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    library = get_cosine_with_min_lr_schedule_with_warmup(opt, warmup, steps, min_lr_rate=0.05).lr_lambdas[0]
    for step in range(warmup):
        assert lr_factor(step, warmup, steps, step / steps) == pytest.approx(library(step + 1))
    for step in range(warmup, steps + 1):
        assert lr_factor(step, warmup, steps, step / steps) == pytest.approx(library(step))
    for step in (steps + 20, 2 * steps):
        assert library(step) > 0.06 and lr_factor(step, warmup, steps, 1.0) == pytest.approx(0.05)
    # a time budget half spent at step 20 of 100: the cosine is where step 55 would put it
    assert lr_factor(20, warmup, steps, 0.55) == pytest.approx(library(55))
