"""The scaled-down SegEarth-R1 checkpoint through the whole pipeline (`--model DIR`), segment and change.

Random weights: the masks mean nothing; what is tested is that the family loads through the
registry and the tiled pipeline runs end to end and writes valid GeoPackage layers.
"""

from __future__ import annotations

import json

import numpy as np
import pyogrio
import pytest
from affine import Affine
from test_segearth import TINY_CONFIG, TINY_DIMS, random_state, write_checkpoint

from conftest import smooth_field, write_rgb
from geoseg import pipeline


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
