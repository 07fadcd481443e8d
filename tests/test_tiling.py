import numpy as np
import pytest
from affine import Affine

from conftest import write_rgb
from geoseg.errors import InputError
from geoseg.io import raster
from geoseg.run import tiling


@pytest.mark.parametrize("height,width", [(1000, 777), (256, 256), (100, 60), (513, 2000)])
def test_plan_covers_scene_with_full_size_tiles(height, width):
    plan = tiling.plan_tiles(height, width, 256, 64)
    cover = np.zeros((height, width), int)
    for t in plan.tiles:
        assert t.height == min(256, height) and t.width == min(256, width)  # never shrunk or skipped
        assert t.y >= 0 and t.y + t.height <= height and t.x >= 0 and t.x + t.width <= width
        cover[t.y : t.y + t.height, t.x : t.x + t.width] += 1
    assert cover.min() >= 1
    # row-major order: the blender relies on it
    keys = [(t.row, t.col) for t in plan.tiles]
    assert keys == sorted(keys)
    assert all(a.y <= b.y for a, b in zip(plan.tiles, plan.tiles[1:], strict=False))


def test_axis_starts_regular_then_flush_with_edge():
    assert tiling.axis_starts(1000, 256, 64) == [0, 192, 384, 576, 744]
    assert tiling.axis_starts(200, 256, 64) == [0]


def test_plan_rejects_bad_overlap():
    with pytest.raises(InputError, match="--overlap"):
        tiling.plan_tiles(1000, 1000, 256, 200)


def test_reader_returns_tiles_in_order_and_flags_nodata(tmp_path):
    data = np.full((3, 300, 300), 100, np.uint8)
    data[:, :, :150] = 0  # left half nodata
    path = tmp_path / "half.tif"
    write_rgb(path, data, Affine(1, 0, 0, 0, -1, 300), nodata=0)
    scene = raster.open_scene(path)
    plan = tiling.plan_tiles(300, 300, 128, 0)
    seen = list(tiling.read_tiles(scene, plan, workers=2, prefetch=3))
    assert [d.tile.index for d in seen] == list(range(len(plan.tiles)))
    for d in seen:
        assert d.empty == (d.tile.x + d.tile.width <= 150)
        assert d.arrays[0].shape == (3, d.tile.height, d.tile.width)


def test_pad_to():
    a = np.ones((3, 10, 7), np.float32)
    p = tiling.pad_to(a, 16)
    assert p.shape == (3, 16, 16) and p[:, :10, :7].all() and p.sum() == a.sum()
