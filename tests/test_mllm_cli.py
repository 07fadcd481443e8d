"""`geoseg train CONFIG` routes a SegEarth MLLM config (model.type) to geoseg.train.mllm with the
compact model's config and dataset format, and `geoseg evaluate` scores the result."""

from __future__ import annotations

import json

import numpy as np
import torch
import yaml
from click.testing import CliRunner
from mllm_helpers import pair_samples, shapes_image, write_tiny_checkpoint

from geoseg.models.registry import load_segmenter
from geoseg.train.evaluate import EvalSample, evaluate_samples
from geoseg_cli.main import cli

torch.set_num_threads(1)


def write_manifest(root, n=3):
    """A JSONL manifest with .npy images and masks (docs/dataset-format.md)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    with open(root / "manifest.jsonl", "w") as f:
        for i in range(n):
            image, masks = shapes_image(300 + i)
            np.save(root / "images" / f"{i}.npy", image.permute(1, 2, 0).numpy())
            for j, (query, mask) in enumerate(masks.items()):
                np.save(root / "masks" / f"{i}_{j}.npy", mask.numpy().astype(np.uint8))
                f.write(json.dumps({"image": f"images/{i}.npy", "mask": f"masks/{i}_{j}.npy", "expression": query}) + "\n")
    return root / "manifest.jsonl"


def test_geoseg_train_routes_mllm_configs_and_evaluate_scores_them(tmp_path):
    manifest = write_manifest(tmp_path / "data")
    start = write_tiny_checkpoint(tmp_path / "start")
    config = {
        "run_dir": str(tmp_path / "run"), "stage": "segment", "steps": 2, "batch_size": 2, "lr": 1e-3,
        "warmup": 1, "threads": 1, "checkpoint_every": 1, "log_every": 1, "init_from": str(start),
        "export_to": str(tmp_path / "export"),
        "model": {"type": "segearth_r1_generative", "finetune": "lora", "lora": {"rank": 4}, "max_targets": 2},
        "data": {"source": str(manifest), "tile": 64},
    }  # fmt: skip
    path = tmp_path / "mllm.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(cli, ["-q", "train", str(path)])
    assert result.exit_code == 0, result.output
    final = result.stdout.strip().splitlines()[-1]
    assert final.endswith("checkpoints/final")
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and {"ce", "bce", "dice"} <= set(log[0])
    saved = json.loads((tmp_path / "export" / "config.json").read_text())
    assert saved["model_type"] == "segearth_r1_generative"

    result = CliRunner().invoke(cli, ["-q", "evaluate", str(tmp_path / "export"), str(manifest), "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["metrics"]["all"]["count"] == 6
    assert 0.0 <= report["metrics"]["all"]["gIoU"] <= 1.0


def test_evaluate_scores_a_bitemporal_model(tmp_path):
    seg = load_segmenter(str(write_tiny_checkpoint(tmp_path / "bt", model_type="segearth_r1_bitemporal")), device="cpu")
    samples = [
        EvalSample(
            image=s.image.permute(1, 2, 0).numpy(), before=s.before.permute(1, 2, 0).numpy(),
            expressions=[s.instruction], masks=[s.change.numpy() > 0],
        )
        for s in pair_samples(2)
    ]  # fmt: skip
    metrics = evaluate_samples(seg, samples)
    assert metrics["all"]["count"] == 2 and 0.0 <= metrics["all"]["cIoU"] <= 1.0
