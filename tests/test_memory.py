"""Bounded memory: peak RSS must not follow the scene size (subprocess, real RSS)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

SCRIPT = r"""
import json, sys
sys.path.insert(0, {tests!r})
import psutil
from doubles import BandOracle
from geoseg.run import pipeline
model = BandOracle(tile_size=256, overlap=32)
pipeline.segment([{small!r}], ["warm-up"], {warm!r}, pipeline.RunOptions(progress=False), segmenter=model)
base = psutil.Process().memory_info().rss
pipeline.segment([{scene!r}], ["q"], {out!r}, pipeline.RunOptions(progress=False), segmenter=model)
# VmHWM is this process's own high-water mark; ru_maxrss would include the parent's RSS at spawn
peak = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({{"base": base, "peak": peak}}))
"""


def write_sparse_scene(path: Path, side: int) -> None:
    import rasterio

    with rasterio.open(
        path, "w", driver="GTiff", width=side, height=side, count=4, dtype="uint8",
        crs="EPSG:32633", transform=Affine(0.5, 0, 500000, 0, -0.5, 5000000),
        tiled=True, blockxsize=256, blockysize=256, compress="deflate",
    ) as dst:
        rng = np.random.default_rng(0)
        for _, w in dst.block_windows(1):
            block = rng.integers(0, 255, (4, w.height, w.width), dtype=np.uint8)
            block[3] = 0
            block[3, 100:140, 100:160] = 255  # one "building" per block
            dst.write(block, window=w)


def peak_growth(tmp_path: Path, side: int) -> int:
    scene = tmp_path / f"s{side}.tif"
    write_sparse_scene(scene, side)
    small = tmp_path / "warm.tif"
    if not small.exists():
        write_sparse_scene(small, 512)
    code = SCRIPT.format(tests=str(Path(__file__).parent), small=str(small), warm=str(tmp_path / f"w{side}.gpkg"),
                         scene=str(scene), out=str(tmp_path / f"o{side}.gpkg"))
    env = {"GDAL_CACHEMAX": "64", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads(r.stdout.strip().splitlines()[-1])
    return m["peak"], m["base"]


@pytest.mark.slow
def test_peak_rss_flat_when_scene_grows_4x(tmp_path):
    peak_small, base_small = peak_growth(tmp_path, 2048)
    peak_big, base_big = peak_growth(tmp_path, 4096)
    # whole-process peak (imports, model, GDAL cache included) within 1.3x ...
    print(f"peak RSS {peak_small >> 20} MB -> {peak_big >> 20} MB; run growth {(peak_small - base_small) >> 20} MB -> {(peak_big - base_big) >> 20} MB")
    assert peak_big <= 1.3 * peak_small, (peak_small, peak_big)
    # ... and what the run itself adds over the warmed-up process grows far less than the area (4x)
    grow_small, grow_big = peak_small - base_small, peak_big - base_big
    assert grow_big <= 2.0 * max(grow_small, 32 << 20), (grow_small, grow_big)
