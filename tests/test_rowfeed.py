"""RowFeed (rows handed between threads) and vectorize_rows (polygons built from the rows as they
are made): the same result as reading the finished raster back, bounded memory, clean failure."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from scipy import ndimage
from test_vectorize import ORIGIN, RES, same_result, write_probabilities

from geoseg.vectorize import VectorizeOptions, vectorize_probabilities, vectorize_rows
from geoseg.vectorize.rowfeed import FeedAbandoned, RowFeed


def feed_in_strips(feed: RowFeed, codes: np.ndarray, strip: int, pause: float = 0.0) -> threading.Thread:
    def write() -> None:
        for y0 in range(0, codes.shape[0], strip):
            feed.put(y0, codes[y0: y0 + strip])
            time.sleep(pause)
        feed.end()

    thread = threading.Thread(target=write)
    thread.start()
    return thread


@pytest.mark.parametrize("connectivity", [4, 8])
def test_rows_as_they_come_give_the_polygons_of_the_finished_raster(tmp_path, connectivity):
    from rasterio.transform import from_origin

    rng = np.random.default_rng(7)
    for trial, (h, w) in enumerate([(300, 170), (97, 260)]):
        prob = ndimage.gaussian_filter(rng.random((h, w)), 1.5 + trial)
        prob = (prob - prob.min()) / (prob.max() - prob.min())
        nodata = rng.random((h, w)) < 0.01
        path = write_probabilities(tmp_path / f"p{trial}.tif", prob, nodata_mask=nodata)
        codes = np.round(np.clip(prob, 0, 1) * 254).astype(np.uint8)
        codes[nodata] = 255
        for options in (VectorizeOptions(connectivity=connectivity, block_size=40),
                        VectorizeOptions(connectivity=connectivity, fill_holes=True, min_area_px=3)):
            expected = vectorize_probabilities(path, options)
            feed = RowFeed(h, w, max_rows=2 * options.block_size)
            writer = feed_in_strips(feed, codes, strip=23)
            streamed = vectorize_rows(feed, from_origin(*ORIGIN, RES, RES), expected.crs, options,
                                      scale=1 / 254, nodata=255)
            writer.join()
            assert len(expected) > 5 and same_result(expected, streamed), (trial, options)
            assert np.allclose(expected["area_m2"], streamed["area_m2"])


def test_the_writer_waits_while_the_buffer_is_full_and_the_reader_is_not_short():
    feed = RowFeed(1000, 8, max_rows=100)
    writer = feed_in_strips(feed, np.zeros((1000, 8), np.uint8), strip=30)
    time.sleep(0.3)
    assert feed._received - feed._top <= 100 + 30  # stopped at the bound, not at the raster's end
    most = 0
    for row0 in range(0, 1000, 50):
        assert feed.rows(row0, min(row0 + 50, 1000)).shape == (min(50, 1000 - row0), 8)
        most = max(most, feed._received - feed._top)
    writer.join()
    assert most <= 100 + 30


def test_a_reader_asking_for_more_than_the_bound_is_not_deadlocked():
    feed = RowFeed(400, 4, max_rows=10)
    writer = feed_in_strips(feed, np.arange(1600, dtype=np.int32).reshape(400, 4), strip=7)
    rows = feed.rows(0, 400)
    writer.join()
    assert rows[-1, -1] == 1599


def test_abandoned_and_short_feeds_stop_the_reader():
    feed = RowFeed(100, 4, max_rows=50)
    feed.put(0, np.zeros((10, 4)))
    feed.end(abandoned=True)
    with pytest.raises(FeedAbandoned):
        feed.rows(0, 20)
    feed.put(10, np.zeros((10, 4)))  # after the end: ignored, never blocks

    short = RowFeed(100, 4, max_rows=50)
    short.put(0, np.zeros((10, 4)))
    short.end()
    with pytest.raises(RuntimeError, match="ended at 10 of 100"):
        short.rows(0, 20)
    with pytest.raises(ValueError, match="do not follow"):
        RowFeed(100, 4, max_rows=50).put(5, np.zeros((10, 4)))


def test_a_failing_reader_lets_the_writer_go_on(monkeypatch):
    from affine import Affine

    from geoseg.vectorize import seams

    def broken(*args, **kwargs):
        raise MemoryError("no room")

    monkeypatch.setattr(seams, "_polygonise", broken)
    feed = RowFeed(3000, 16, max_rows=100)
    writer = feed_in_strips(feed, np.full((3000, 16), 200, np.uint8), strip=50)
    with pytest.raises(MemoryError):
        vectorize_rows(feed, Affine.identity(), None, VectorizeOptions(block_size=64), scale=1 / 254, nodata=255)
    writer.join(timeout=10)
    assert not writer.is_alive()  # not stuck waiting for room in the buffer
