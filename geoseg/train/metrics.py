"""Referring-segmentation metrics, as SegEarth-R1 defines them, plus the empty-target view.

Per sample (one image, one query) with binary prediction P and truth G:
    I = |P & G|, U = |P | G|, IoU = I / U, and IoU = 1 when U == 0 (both empty).
Over a set of samples:
    gIoU  = mean of per-sample IoU                               (SegEarth-R1 "gIoU")
    cIoU  = sum(I) / sum(U)                                      (SegEarth-R1 "cIoU", iou_class[1])
    oIoU  = sum(I) / sum(U), the RRSIS name of the same number; equal to cIoU by definition
    mIoU  = mean over the two classes {background, target} of the pooled class IoU,
            i.e. (cIoU + background IoU) / 2, as SegEarth-R1's intersectionAndUnion yields it
    Pr@t  = share of samples with IoU > t (strict), t in {0.5, 0.7, 0.9}
    fp_area = mean share of pixels predicted positive (reported for empty targets: the false-
            positive area per target-free tile)
    gIoU_ci95_low, gIoU_ci95_high = a 95 % percentile-bootstrap interval of gIoU: the samples
            drawn with replacement 2,000 times (fixed seed: the same scores, the same interval). A
            validation source of 9-22 samples moves its gIoU by several hundredths when one
            sample flips; the interval says how far a number can be read. Samples are drawn
            independently, so several queries of one image count as independent (narrower).
A pooled ratio whose denominator is 0 (no pixel positive anywhere) is 1.0, like the per-sample rule.
Every number is reported for all samples, for non-empty targets and for empty targets.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

THRESHOLDS = (0.5, 0.7, 0.9)
BOOTSTRAP_DRAWS = 2000
BOOTSTRAP_SEED = 0
BOOTSTRAP_BLOCK = 1_000_000  # sample indices drawn at once


@dataclass
class SampleCounts:
    intersection: int
    union: int
    pred_area: int
    true_area: int
    pixels: int

    @property
    def iou(self) -> float:
        return 1.0 if self.union == 0 else self.intersection / self.union

    @property
    def precision(self) -> float | None:
        """Share of the predicted pixels that are true; None when nothing was predicted."""
        return self.intersection / self.pred_area if self.pred_area else None

    @property
    def recall(self) -> float | None:
        """Share of the true pixels that were predicted; None for an empty truth."""
        return self.intersection / self.true_area if self.true_area else None


def sample_counts(pred: np.ndarray, truth: np.ndarray) -> SampleCounts:
    pred = np.asarray(pred, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    return SampleCounts(
        intersection=int(np.count_nonzero(pred & truth)),
        union=int(np.count_nonzero(pred | truth)),
        pred_area=int(np.count_nonzero(pred)),
        true_area=int(np.count_nonzero(truth)),
        pixels=int(pred.size),
    )


def _ratio(num: float, den: float) -> float:
    return 1.0 if den == 0 else num / den


def summarise(samples: list[SampleCounts]) -> dict[str, float]:
    """The metric set over a list of samples (empty list: count 0 and no other keys)."""
    if not samples:
        return {"count": 0}
    ious = np.array([s.iou for s in samples])
    inter = sum(s.intersection for s in samples)
    union = sum(s.union for s in samples)
    pixels = sum(s.pixels for s in samples)
    # background IoU: |~P & ~G| / |~P | ~G| = (pixels - U) / (pixels - I)
    background = _ratio(pixels - union, pixels - inter)
    ciou = _ratio(inter, union)
    out = {
        "count": len(samples),
        "gIoU": float(ious.mean()),
        "cIoU": ciou,
        "oIoU": ciou,
        "mIoU": (ciou + background) / 2,
    }
    for t in THRESHOLDS:
        out[f"Pr@{t}"] = float((ious > t).mean())
    out["fp_area"] = float(np.mean([_ratio(s.pred_area - s.intersection, s.pixels) for s in samples]))
    out["gIoU_ci95_low"], out["gIoU_ci95_high"] = bootstrap_interval(ious)
    return out


def bootstrap_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """(low, high) percentile-bootstrap interval of the mean of `values` (see the module's
    gIoU_ci95_*); a single value is its own interval."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    # drawn in blocks, so a manifest of 100,000 samples needs tens of MB, not gigabytes; the
    # generator's stream is the same as one draw of all of them
    n = len(values)
    per_block = max(1, BOOTSTRAP_BLOCK // n)
    means = np.concatenate([
        values[rng.integers(0, n, size=(min(per_block, BOOTSTRAP_DRAWS - start), n))].mean(axis=1)
        for start in range(0, BOOTSTRAP_DRAWS, per_block)
    ])
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


@dataclass
class MetricAccumulator:
    """Collect per-sample counts (optionally tagged with groups) and summarise them."""

    samples: list[SampleCounts] = field(default_factory=list)
    groups: dict[str, list[SampleCounts]] = field(default_factory=lambda: defaultdict(list))

    def add(self, counts: SampleCounts, groups: tuple[str, ...] = ()) -> None:
        self.samples.append(counts)
        for g in groups:
            self.groups[g].append(counts)

    def compute(self) -> dict[str, dict[str, float]]:
        result = split_by_emptiness("all", self.samples)
        for name in sorted(self.groups):
            result.update(split_by_emptiness(name, self.groups[name]))
        return result


def split_by_emptiness(name: str, samples: list[SampleCounts]) -> dict[str, dict[str, float]]:
    return {
        name: summarise(samples),
        f"{name}/non_empty": summarise([s for s in samples if s.true_area > 0]),
        f"{name}/empty": summarise([s for s in samples if s.true_area == 0]),
    }
