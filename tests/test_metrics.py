"""Metrics on hand-made masks, checked against numbers computed by hand."""

import numpy as np
import pytest

from geoseg.train import metrics
from geoseg.train.metrics import MetricAccumulator, bootstrap_interval, sample_counts, summarise


def _mask(cells: list[tuple[int, int]], shape=(4, 4)) -> np.ndarray:
    m = np.zeros(shape, bool)
    for r, c in cells:
        m[r, c] = True
    return m


def test_per_sample_iou_and_both_empty_rule():
    pred = _mask([(0, 0), (0, 1), (1, 0)])
    truth = _mask([(0, 0), (1, 1)])
    c = sample_counts(pred, truth)
    assert (c.intersection, c.union, c.pred_area, c.true_area) == (1, 4, 3, 2)
    assert c.iou == pytest.approx(0.25)
    empty = sample_counts(_mask([]), _mask([]))
    assert empty.iou == 1.0
    fp_on_empty = sample_counts(_mask([(2, 2)]), _mask([]))
    assert fp_on_empty.iou == 0.0


def test_summary_matches_hand_computation():
    # sample A: I=1, U=4 -> 0.25; sample B: I=3, U=4 -> 0.75; sample C: both empty -> 1.0
    # sample D: empty truth, 2 false-positive pixels -> 0.0
    acc = MetricAccumulator()
    acc.add(sample_counts(_mask([(0, 0), (0, 1), (1, 0)]), _mask([(0, 0), (1, 1)])))
    acc.add(sample_counts(_mask([(2, 0), (2, 1), (2, 2)]), _mask([(2, 0), (2, 1), (2, 2), (2, 3)])))
    acc.add(sample_counts(_mask([]), _mask([])))
    acc.add(sample_counts(_mask([(3, 3), (3, 2)]), _mask([])))
    r = acc.compute()
    allm = r["all"]
    assert allm["count"] == 4
    assert allm["gIoU"] == pytest.approx((0.25 + 0.75 + 1.0 + 0.0) / 4)
    # cIoU = sum I / sum U = (1 + 3 + 0 + 0) / (4 + 4 + 0 + 2)
    assert allm["cIoU"] == pytest.approx(4 / 10)
    assert allm["oIoU"] == allm["cIoU"]
    # background IoU = (pixels - U) / (pixels - I) = (64 - 10) / (64 - 4)
    assert allm["mIoU"] == pytest.approx((0.4 + 54 / 60) / 2)
    # strict ">": IoU 0.75 counts for 0.5 and 0.7, IoU 1.0 for all, 0.25 and 0.0 for none
    assert allm["Pr@0.5"] == pytest.approx(2 / 4)
    assert allm["Pr@0.7"] == pytest.approx(2 / 4)
    assert allm["Pr@0.9"] == pytest.approx(1 / 4)
    ne = r["all/non_empty"]
    assert ne["count"] == 2 and ne["gIoU"] == pytest.approx(0.5)
    assert ne["cIoU"] == pytest.approx(4 / 8)
    em = r["all/empty"]
    assert em["count"] == 2 and em["gIoU"] == pytest.approx(0.5)
    assert em["fp_area"] == pytest.approx((0 + 2 / 16) / 2)


def test_strict_threshold_at_exact_boundary():
    # IoU exactly 0.5 does not count for Pr@0.5
    s = summarise([sample_counts(_mask([(0, 0), (0, 1)]), _mask([(0, 0)]))])
    assert s["gIoU"] == pytest.approx(0.5)
    assert s["Pr@0.5"] == 0.0


def test_all_empty_pooled_ratios_are_one():
    s = summarise([sample_counts(_mask([]), _mask([]))] * 3)
    assert s["cIoU"] == 1.0 and s["gIoU"] == 1.0 and s["mIoU"] == 1.0


def test_groups_are_reported_separately():
    acc = MetricAccumulator()
    acc.add(sample_counts(_mask([(0, 0)]), _mask([(0, 0)])), groups=("heldout_synonym",))
    acc.add(sample_counts(_mask([]), _mask([(0, 0)])))
    r = acc.compute()
    assert r["all"]["gIoU"] == pytest.approx(0.5)
    assert r["heldout_synonym"]["gIoU"] == 1.0
    assert r["heldout_synonym/empty"] == {"count": 0}


def test_giou_interval_matches_the_normal_approximation_and_repeats():
    # 50 hits and 50 misses: gIoU 0.5 with standard error sqrt(0.25 / 100) = 0.05, so the 95 %
    # interval is about 0.5 +- 0.098; the bootstrap's seed is fixed, so it is the same twice.
    hit, miss = sample_counts(_mask([(0, 0)]), _mask([(0, 0)])), sample_counts(_mask([]), _mask([(0, 0)]))
    low, high = _interval([hit, miss] * 50)
    assert low == pytest.approx(0.402, abs=0.015) and high == pytest.approx(0.598, abs=0.015)
    assert _interval([hit, miss] * 50) == (low, high)
    # the same spread over 10 samples cannot be read as finely
    few_low, few_high = _interval([hit, miss] * 5)
    assert few_high - few_low > 2 * (high - low)
    assert _interval([hit]) == (1.0, 1.0)


def test_giou_interval_does_not_depend_on_the_draw_blocks(monkeypatch):
    values = np.random.default_rng(3).random(37)
    whole = bootstrap_interval(values)
    monkeypatch.setattr(metrics, "BOOTSTRAP_BLOCK", 37 * 7)  # 7 draws per block, the last one short
    assert bootstrap_interval(values) == whole


def _interval(samples: list) -> tuple[float, float]:
    s = summarise(samples)
    return s["gIoU_ci95_low"], s["gIoU_ci95_high"]
