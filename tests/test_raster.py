"""Opening, validating and aligning inputs; normalisation statistics; real files."""

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window

from conftest import write_rgb
from geoseg.errors import InputError
from geoseg.io import raster

UTM = Affine(0.5, 0, 500000, 0, -0.5, 5000000)


def rgb(h=64, w=64, value=120, dtype=np.uint8, bands=3):
    return np.full((bands, h, w), value, dtype)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"nope\.tif: no such file"):
        raster.open_scene(tmp_path / "nope.tif")


def test_not_a_raster(tmp_path):
    p = tmp_path / "notes.tif"
    p.write_text("hello")
    with pytest.raises(InputError, match=r"notes\.tif: not a readable raster"):
        raster.open_scene(p)


def test_truncated_geotiff(tmp_path):
    p = tmp_path / "full.tif"
    rng = np.random.default_rng(0)
    write_rgb(p, rng.integers(0, 255, (3, 512, 512), dtype=np.uint8), UTM)
    cut = tmp_path / "cut.tif"
    cut.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
    with pytest.raises(InputError, match=r"cut\.tif"):
        scene = raster.open_scene(cut)
        scene.read_tile(Window(0, 0, 512, 512))


def test_no_georeferencing_refused_unless_pixel_coords(tmp_path):
    p = tmp_path / "plain.tif"
    with rasterio.open(p, "w", driver="GTiff", width=32, height=32, count=3, dtype="uint8") as dst:
        dst.write(rgb(32, 32))
    with pytest.raises(InputError, match="no CRS or geotransform.*--pixel-coords"):
        raster.open_scene(p)
    assert raster.open_scene(p, pixel_coords=True).grid.crs is None


def test_degenerate_geotransform_refused(tmp_path):
    # Rotated and sheared grids are fine (tests/test_rotated.py); a zero-area pixel is not.
    p = tmp_path / "flat.tif"
    write_rgb(p, rgb(), Affine(0.5, 0.5, 500000, 0.5, 0.5, 5000000))
    with pytest.raises(InputError, match=r"flat\.tif: its geotransform is degenerate"):
        raster.open_scene(p)


def test_all_nodata(tmp_path):
    p = tmp_path / "empty.tif"
    write_rgb(p, rgb(value=0), UTM, nodata=0)
    with pytest.raises(InputError, match="every pixel is nodata"):
        raster.open_scene(p)


def test_band_selection_and_errors(tmp_path):
    p = tmp_path / "four.tif"
    data = np.stack([np.full((32, 32), v, np.uint8) for v in (10, 20, 30, 40)])
    write_rgb(p, data, UTM)
    assert raster.open_scene(p).inputs[0].bands == (1, 2, 3)
    assert raster.open_scene(p, bands=[4, 3, 2]).inputs[0].bands == (4, 3, 2)
    with pytest.raises(InputError, match="has 4 band.*-b 5"):
        raster.open_scene(p, bands=[5])


@pytest.mark.parametrize("dtype,bands", [(np.uint16, 4), (np.float32, 3), (np.uint8, 1)])
def test_16bit_float_and_single_band_are_handled(tmp_path, dtype, bands):
    p = tmp_path / "x.tif"
    rng = np.random.default_rng(1)
    data = (rng.random((bands, 64, 64)) * (2047 if dtype == np.uint16 else 1 if dtype == np.float32 else 255)).astype(dtype)
    write_rgb(p, data, UTM)
    scene = raster.open_scene(p)
    arrays, valid = scene.read_tile(Window(0, 0, 64, 64))
    assert arrays[0].shape == (3, 64, 64) and arrays[0].dtype == np.float32
    assert arrays[0].min() >= 0 and arrays[0].max() <= 1 and valid.all()
    assert arrays[0].std() > 0.1  # stretched to the model's range, not squashed


def test_stats_are_global_not_per_tile(tmp_path):
    # left half dark, right half bright: a per-tile stretch would make both look the same
    data = np.zeros((3, 64, 128), np.uint8)
    data[:, :, :64], data[:, :, 64:] = 50, 200
    p = tmp_path / "halves.tif"
    write_rgb(p, data, UTM)
    scene = raster.open_scene(p)
    left, _ = scene.read_tile(Window(0, 0, 64, 64))
    right, _ = scene.read_tile(Window(64, 0, 64, 64))
    assert left[0].mean() < 0.05 and right[0].mean() > 0.95


def test_pair_that_does_not_overlap(tmp_path):
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    write_rgb(a, rgb(), UTM)
    write_rgb(b, rgb(), Affine(0.5, 0, 600000, 0, -0.5, 5000000))
    with pytest.raises(InputError, match=r"b\.tif does not overlap .*a\.tif"):
        raster.open_pair(a, b)


def test_pair_with_different_band_counts(tmp_path):
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    write_rgb(a, rgb(), UTM)
    write_rgb(b, rgb(bands=4), UTM)
    with pytest.raises(InputError, match=r"b\.tif: has 4 band.*has 3.*-b"):
        raster.open_pair(a, b)


def test_pair_in_other_crs_is_warped_onto_reference_grid(tmp_path):
    from rasterio.warp import calculate_default_transform, reproject

    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    data = np.zeros((3, 200, 200), np.uint8)
    data[:, 50:150, 60:140] = 200
    write_rgb(a, data, Affine(1, 0, 500000, 0, -1, 5000000))
    t, w, h = calculate_default_transform("EPSG:32633", "EPSG:4326", 200, 200, 500000, 4999800, 500200, 5000000)
    warped = np.zeros((3, h, w), np.uint8)
    reproject(data, warped, src_transform=Affine(1, 0, 500000, 0, -1, 5000000), src_crs="EPSG:32633",
              dst_transform=t, dst_crs="EPSG:4326")
    write_rgb(b, warped, t, crs="EPSG:4326")
    scene = raster.open_pair(a, b)
    assert scene.grid.crs.to_epsg() == 32633 and scene.inputs[1].warp_to == scene.grid
    (before, after), valid = scene.read_tile(Window(0, 0, 200, 200))
    inner = valid.copy()
    inner[:3], inner[-3:], inner[:, :3], inner[:, -3:] = False, False, False, False
    agree = ((before[0] > 0.5) == (after[0] > 0.5))[inner].mean()
    assert agree > 0.98 and 0.9 < scene.overlap_fraction <= 1.0


# ------------------------------------------------------------------ real files (../shared/data)


def test_rgb_byte_nodata_is_honoured(shared_data):
    scene = raster.open_scene(shared_data / "georef-rasterio" / "RGB.byte.tif")
    _, valid = scene.read_tile(Window(0, 0, scene.grid.width, scene.grid.height))
    # the rotated Landsat footprint leaves nodata (0) corners
    assert not valid[0, 0] and valid[scene.grid.height // 2, scene.grid.width // 2]
    assert 0.5 < valid.mean() < 0.8
    assert scene.stats.low[0] > 0  # nodata kept out of the statistics


def test_naip_pair_aligned_across_its_grid_offset(shared_data):
    d = shared_data / "georef-naip-pair"
    scene = raster.open_pair(d / "m_4709963_se_14_1_20090818.tif", d / "m_4709963_se_14_1_20200831.tif")
    assert (scene.grid.width, scene.grid.height) == (934, 724)
    assert scene.inputs[1].warp_to is not None  # 934x723 on an offset grid -> warped
    assert 0.99 < scene.overlap_fraction < 1.0
    (before, after), valid = scene.read_tile(Window(0, 0, 934, 724))
    assert before.shape == after.shape == (3, 724, 934)
    # aligned: the dates agree best with no shift at all (fields change between 2009 and 2020,
    # so the correlation is low in absolute terms; its peak is what says the grids line up)
    def corr(dy, dx):
        shifted = np.roll(before[1], (dy, dx), (0, 1))
        return np.corrcoef(shifted[valid], after[1][valid])[0, 1]

    centre = corr(0, 0)
    assert all(centre > corr(dy, dx) for dy, dx in [(-1, 0), (1, 0), (0, -1), (0, 1)])
    assert not valid[-1].all()  # the after date is one row short: that row is not valid


def test_pair_align_to_after(shared_data):
    d = shared_data / "georef-naip-pair"
    scene = raster.open_pair(d / "m_4709963_se_14_1_20090818.tif", d / "m_4709963_se_14_1_20200831.tif", align_to="after")
    assert scene.grid.height == 723 and scene.inputs[0].warp_to is not None


def test_spacenet_uint16_single_band(shared_data):
    scene = raster.open_scene(shared_data / "spacenet-roads-solaris" / "road_mask_input.tif")
    arrays, _ = scene.read_tile(Window(0, 0, 256, 256))
    assert arrays[0].shape == (3, 256, 256) and np.allclose(arrays[0][0], arrays[0][2])
