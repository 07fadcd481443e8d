from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.features import rasterize

sys.path.insert(0, str(Path(__file__).parent))  # test doubles

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    """Tests (and the commands they start) keep encoded queries in a cache of their own, never the
    user's ~/.cache/geoseg, and start from an empty one. Made here, not at import: Ray workers
    and other processes that import this module must not each leave a folder behind."""
    config._geoseg_text_cache = tempfile.TemporaryDirectory(prefix="geoseg-test-cache-")
    os.environ["GEOSEG_CACHE_DIR"] = config._geoseg_text_cache.name


def pytest_unconfigure(config: pytest.Config) -> None:
    cache = getattr(config, "_geoseg_text_cache", None)
    if cache is not None:
        cache.cleanup()


@pytest.fixture(scope="module")
def cluster():
    """A local 2-CPU Ray cluster whose workers import from tests/ (skipped without Ray)."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install \"geoseg[ray]\"); Ray tests skipped")
    path = os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


@pytest.fixture
def oracle(monkeypatch):
    """The pipeline's model replaced by a BandOracle (its probabilities are a band of the scene),
    so engine and output tests know the exact answer; a test module may override it."""
    from doubles import BandOracle
    from geoseg.run import pipeline

    model = BandOracle(tile_size=128, overlap=16)
    monkeypatch.setattr(pipeline, "load_segmenter", lambda *a, **k: model)
    return model


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (a fresh clone has no ../shared); real-file tests skipped")
    return SHARED_DATA


def write_truth_scene(
    path: Path,
    polygons: list,
    *,
    width: int,
    height: int,
    transform: Affine,
    crs: str | None = "EPSG:32633",
    dtype: str = "uint8",
    seed: int = 0,
    nodata: float | None = None,
    nodata_cols: int = 0,
) -> np.ndarray:
    """A 4-band raster: textured RGB + band 4 = ground truth (255 inside `polygons`)."""
    rng = np.random.default_rng(seed)
    truth = rasterize([(p, 1) for p in polygons], out_shape=(height, width), transform=transform, dtype="uint8")
    rgb = rng.integers(40, 200, size=(3, height, width)).astype(np.float32)
    rgb[:, truth > 0] += 40
    scale = 2047 / 255 if dtype == "uint16" else 1
    data = np.concatenate([rgb * scale, truth[None] * 255.0 * scale]).astype(dtype)
    if nodata_cols:
        data[:, :, :nodata_cols] = nodata
    with rasterio.open(
        path, "w", driver="GTiff", width=width, height=height, count=4, dtype=dtype,
        crs=crs, transform=transform, nodata=nodata, tiled=True, blockxsize=256, blockysize=256,
        photometric="minisblack",  # band 4 is data, not an alpha mask
    ) as dst:
        dst.write(data)
    return truth.astype(bool)


def smooth_field(height: int, width: int, seed: int = 0, scale: int = 24) -> np.ndarray:
    """A smooth random field in [0, 255] (blobs whose contours cross tile seams)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((height // scale + 2, width // scale + 2))
    ys = np.linspace(0, coarse.shape[0] - 1.001, height)
    xs = np.linspace(0, coarse.shape[1] - 1.001, width)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
    c = coarse
    top = c[y0][:, x0] * (1 - fx) + c[y0][:, x0 + 1] * fx
    bottom = c[y0 + 1][:, x0] * (1 - fx) + c[y0 + 1][:, x0 + 1] * fx
    return ((top * (1 - fy) + bottom * fy) * 255).astype(np.float32)


def write_rgb(path: Path, data: np.ndarray, transform: Affine, crs: str = "EPSG:32633", **kw) -> None:
    with rasterio.open(
        path, "w", driver="GTiff", width=data.shape[-1], height=data.shape[-2], count=data.shape[0],
        dtype=data.dtype, crs=crs, transform=transform, **kw,
    ) as dst:
        dst.write(data)


def smooth_scene(
    path: Path, width: int, height: int, seed: int,
    transform: Affine = Affine(0.5, 0, 500000, 0, -0.5, 5000120), crs: str = "EPSG:32633",
) -> None:
    """An RGB scene of smooth blobs (ConvOracle turns them into shapes that cross tile seams)."""
    rgb = np.stack([smooth_field(height, width, seed=seed + k) for k in range(3)]).astype(np.uint8)
    write_rgb(path, rgb, transform, crs=crs)


@pytest.fixture
def scenes(tmp_path, monkeypatch):
    """Two smooth scenes, a.tif (600 x 500) and b.tif (300 x 260), in a fresh working directory."""
    monkeypatch.chdir(tmp_path)
    smooth_scene(tmp_path / "a.tif", 600, 500, seed=1)
    smooth_scene(tmp_path / "b.tif", 300, 260, seed=7)
    return tmp_path
