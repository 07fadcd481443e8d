"""The scaled-down SegEarth-R1 checkpoint through the whole pipeline (`--model DIR`), segment and change.

Random weights: the masks mean nothing; what is tested is that the family loads through the
registry and the tiled pipeline runs end to end and writes valid GeoPackage layers. The
checkpoints are written in the published layout (transformers 4.36.2's fused Phi attention).
"""

from __future__ import annotations

import json

import numpy as np
import pyogrio
import pytest
import torch
from affine import Affine
from click.testing import CliRunner
from test_segearth import (
    PUBLISHED_CONFIG,
    PUBLISHED_DIMS,
    TINY_CONFIG,
    TINY_DIMS,
    expand_inventory,
    random_state,
    write_checkpoint,
)

from conftest import smooth_field, write_rgb
from geoseg.run import pipeline
from geoseg_cli.main import cli


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    config = json.loads(json.dumps(TINY_CONFIG))
    config["geoseg"].update(gate_min_score=0.0, gate_min_area=0, overlap=32)  # keep every mask
    return write_checkpoint(
        tmp_path_factory.mktemp("pipe") / "SegEarth-R1-tiny", random_state(TINY_DIMS), config
    )


def scene(path, seed):
    data = np.stack([smooth_field(300, 260, seed=seed + i) for i in range(3)]).astype(np.uint8)
    write_rgb(path, data, Affine(0.5, 0, 500000, 0, -0.5, 5000120))
    return path


def opts(model_dir, **kw):
    return pipeline.RunOptions(model=str(model_dir), device="cpu", progress=False, **kw)


def test_segment_end_to_end(tmp_path, model_dir):
    out = tmp_path / "seg.gpkg"
    summary = pipeline.segment(
        [scene(tmp_path / "a.tif", 0)], ["red roofs", "the road"], out, opts(model_dir)
    )
    assert summary.tiles == 9  # 300 x 260 px in 128 px tiles with 32 px overlap
    layers = [name for name, geom in pyogrio.list_layers(out) if geom is not None]
    assert len(layers) == 2
    meta = pyogrio.read_info(out, layer=layers[0])
    assert {"query", "score", "model"} <= set(meta["fields"])


def test_change_end_to_end(tmp_path, model_dir):
    out = tmp_path / "change.gpkg"
    pipeline.change(
        scene(tmp_path / "before.tif", 0),
        scene(tmp_path / "after.tif", 7),
        ["new buildings"],
        out,
        opts(model_dir),
    )
    layers = [name for name, geom in pyogrio.list_layers(out) if geom is not None]
    assert len(layers) == 1
    assert "change_type" in pyogrio.read_info(out, layer=layers[0])["fields"]


def cli_segment(scene_path, model_dir, out):
    args = ["-q", "segment", str(scene_path), "buildings", "--model", str(model_dir), "--device", "cpu",
            "-o", str(out), "--json"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_cli_segment_on_a_published_layout_directory(tmp_path):
    """`geoseg segment scene.tif "buildings" --model DIR --device cpu` on a scaled-down directory
    in the published layout: fused query_key_value, bf16 on disk, int64 index buffers."""
    config = json.loads(json.dumps(TINY_CONFIG))
    config["geoseg"].update(gate_min_score=0.0, gate_min_area=0, overlap=32)
    model = write_checkpoint(
        tmp_path / "SegEarth-R1-tiny", random_state(TINY_DIMS), config, dtype=torch.bfloat16
    )
    summary = cli_segment(scene(tmp_path / "scene.tif", 3), model, tmp_path / "out.gpkg")
    assert summary["tiles"] == 9 and len(summary["layers"]) == 1
    assert [name for name, geom in pyogrio.list_layers(tmp_path / "out.gpkg") if geom is not None]


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 0


def full_size_published_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random bf16 weights for every key of the published full-size layout (935 tensors, 3.2 GB).
    Small weights (std 0.02, norms 1) keep 24 Phi layers finite."""
    g = torch.Generator().manual_seed(seed)
    window = PUBLISHED_DIMS["W"]
    state = {}
    for key, shape in expand_inventory(PUBLISHED_DIMS).items():
        if key.endswith("relative_position_index"):
            state[key] = torch.randint(0, (2 * window - 1) ** 2, shape, generator=g)
        elif key.endswith(("norm.weight", "norm1.weight", "norm2.weight", "layernorm.weight")):
            state[key] = torch.ones(shape, dtype=torch.bfloat16)
        else:
            state[key] = (0.02 * torch.randn(shape, generator=g)).to(torch.bfloat16)
    return state


# Peak RSS measured at 11 GB: the 3.2 GB file mapped + 6.4 GB of float32 parameters + one tile.
FULL_SIZE_RAM = 16 * 2**30


@pytest.mark.slow
@pytest.mark.skipif(
    _available_ram() < FULL_SIZE_RAM, reason="full-size SegEarth-R1 run needs ~16 GiB of free RAM"
)
def test_cli_segment_on_a_full_size_published_layout_directory(tmp_path):
    """The full-size architecture (Phi-1.5 + Swin-B, random weights) from a directory in the
    published layout, through the CLI on the CPU: one 1024 px tile (~80 s on one idle core)."""
    config = {**PUBLISHED_CONFIG, "geoseg": {"gate_min_score": 0.0, "gate_min_area": 0}}
    model = write_checkpoint(tmp_path / "SegEarth-R1-RRSIS-D", full_size_published_state(), config)
    summary = cli_segment(scene(tmp_path / "scene.tif", 5), model, tmp_path / "out.gpkg")
    assert summary["tiles"] == 1 and len(summary["layers"]) == 1
