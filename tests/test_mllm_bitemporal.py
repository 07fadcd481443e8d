"""The bi-temporal SegEarth model: stage 1 (vision-only change pretraining) and stage 2
(language-guided change) run through `train_mllm`, and the stage-2 checkpoint is a change-native
model that `geoseg change --model DIR` runs on its own (no per-date comparison)."""

from __future__ import annotations

import json

import numpy as np
import pyogrio
import pytest
import torch
from affine import Affine
from click.testing import CliRunner
from mllm_helpers import ListSource, pair_samples, write_tiny_checkpoint

from conftest import write_rgb
from geoseg.io import gpkg
from geoseg.models.base import ChangeAware
from geoseg.models.segearth import BitemporalSegmenter, load_segearth_segmenter
from geoseg.train.config import TrainConfig
from geoseg.train.metrics import sample_counts
from geoseg.train.mllm import train_mllm
from geoseg_cli.main import cli

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    root = tmp_path_factory.mktemp("bitemporal")
    start = write_tiny_checkpoint(root / "r1", model_type="segearth_r1")  # single-date start
    samples = pair_samples(3)

    def config(stage, init, run, **model):
        return TrainConfig(
            run_dir=str(root / run), stage=stage, steps=40, lr=3e-3, warmup=2, threads=1,
            checkpoint_every=100, log_every=10, init_from=str(init),
            model={"type": "segearth_r1_bitemporal", **model},
        )  # fmt: skip

    stage1 = train_mllm(config("change_pretrain", start, "stage1"), progress=False, source=ListSource(samples))
    stage2 = train_mllm(config("change", stage1, "stage2", finetune="full"), progress=False, source=ListSource(samples))
    return root, stage1, stage2, samples


def losses(run) -> list[dict]:
    return [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]


def test_stage1_learns_class_agnostic_change_without_the_llm(stages):
    root, stage1, _, samples = stages
    log = losses(root / "stage1")
    assert set(log[0]) >= {"change"} and "ce" not in log[0]
    assert log[-1]["change"] < log[0]["change"]
    seg = load_segearth_segmenter(stage1)
    assert json.loads((stage1 / "config.json").read_text())["model_type"] == "segearth_r1_bitemporal"
    s = samples[0]
    change = seg.change_probabilities(s.image[None], s.before[None])[0]
    assert sample_counts(change.numpy() > 0.5, s.change.numpy() > 0).iou > 0.5


def test_stage2_follows_the_query_on_both_dates(stages):
    root, stage1, stage2, samples = stages
    log = losses(root / "stage2")
    assert {"bce", "dice"} <= set(log[0]) and log[-1]["dice"] < log[0]["dice"]
    seg = load_segearth_segmenter(stage2)
    assert isinstance(seg, BitemporalSegmenter) and isinstance(seg, ChangeAware)
    # the fusion blocks were trained in stage 1 and carried into stage 2
    before = load_segearth_segmenter(stage1).net.temporal_fusion[0].fuse.weight
    assert before.abs().sum() > 0
    s = samples[1]
    p = seg.predict_change(s.image[None], s.before[None], [s.instruction], direction="appeared").probabilities[0, 0]
    assert sample_counts(p.numpy() > 0.5, s.masks[0].numpy() > 0).iou > 0.5


def test_stage2_checkpoint_runs_natively_in_geoseg_change(stages, tmp_path, monkeypatch):
    _, _, stage2, samples = stages
    s = samples[0]
    transform = Affine(0.5, 0, 500000, 0, -0.5, 5000120)
    for name, image in (("before", s.before), ("after", s.image)):
        data = (image.numpy() * 255).round().astype(np.uint8)
        write_rgb(tmp_path / f"{name}.tif", np.tile(data, (1, 2, 2)), transform)  # 128 px: 4 tiles

    calls = []
    original = BitemporalSegmenter.predict_change

    def spy(self, after, before, queries, *, direction="appeared"):
        calls.append(direction)
        return original(self, after, before, queries, direction=direction)

    monkeypatch.setattr(BitemporalSegmenter, "predict_change", spy)
    out = tmp_path / "change.gpkg"
    result = CliRunner().invoke(
        cli,
        ["change", str(tmp_path / "before.tif"), str(tmp_path / "after.tif"), "new blue circle",
         "-o", str(out), "--model", str(stage2), "--device", "cpu", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert calls and all(d == ["appeared"] for d in calls)  # both dates in one call per batch, the words' direction
    layers = [n for n, g in pyogrio.list_layers(out) if g is not None]
    assert len(layers) == 1
    record = gpkg.read_provenance(out, layers[0])
    assert "ChangeAware" in record["model"]["capabilities"]
    assert record["model"]["extra"]["variant"] == "bitemporal"
    assert "change_type" in pyogrio.read_info(out, layer=layers[0])["fields"]
