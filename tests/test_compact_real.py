"""The shipped `compact` weights on real imagery they never trained on: the `area-split:val`
lines of ../shared/data/train-real (whole areas held out of training). Floors are set a little
under what the shipped weights measured on these exact chips (docs/models/compact.md), so a
regression fails the suite; skipped with a reason when ../shared is absent."""

from itertools import islice

import numpy as np
import pytest

from geoseg.models.registry import load_segmenter
from geoseg.train.evaluate import evaluate_samples, manifest_samples, predict_sample

VAL = ("area-split:val",)


@pytest.fixture(scope="module")
def compact():
    return load_segmenter("compact", device="cpu")


@pytest.fixture
def train_real(shared_data):
    root = shared_data / "train-real"
    if not root.is_dir():
        pytest.skip(f"{root} is absent; real-chip tests skipped")
    return root


def _samples(path, n, keep=lambda s: True):
    return list(islice((s for s in manifest_samples(path, VAL) if keep(s)), n))


def _giou(segmenter, samples, group="all/non_empty") -> float:
    return evaluate_samples(segmenter, samples)[group]["gIoU"]


# (source, how many val images, concept group, floor gIoU on its non-empty targets); the shipped
# weights (compact 0.7.1) measured 0.554, 0.613, 0.493 and 0.763 on exactly these images
FLOORS = [
    ("hotosm-fair", 12, "buildings", 0.50),
    ("dubai-hitl", 2, "buildings", 0.55),
    ("dubai-hitl", 2, "water", 0.44),
    ("eth-cil-roads", 4, "roads", 0.70),
]


@pytest.mark.parametrize("source, n, concept, floor", FLOORS)
def test_real_validation_chips_reach_their_floor(compact, train_real, source, n, concept, floor):
    samples = _samples(train_real / source, n, lambda s: any(m.any() for m in s.masks))
    assert len(samples) == n
    giou = _giou(compact, samples, f"{concept}/non_empty")
    assert giou >= floor, f"{source} {concept}: gIoU {giou:.3f} on {n} val images (floor {floor})"


def test_absent_targets_on_real_chips_stay_empty(compact, train_real):
    """Building-free fAIr chips asked for buildings, and a Dubai scene asked for farmland
    (which that source does not have), come back empty: under 1 % of their pixels positive.

    Measured (compact 0.7.1): 7 of these 8 chips give 0 % and one 1.3 % (an earlier release: one
    7 % and one 57 %, a 0.07 m concrete road taken for a roof, see the model card); Dubai's
    farmland 0 %."""
    empty_chips = _samples(train_real / "hotosm-fair", 8, lambda s: not any(m.any() for m in s.masks))
    areas = [float((predict_sample(compact, s) > 0.5).mean()) for s in empty_chips]
    assert sum(a < 0.01 for a in areas) >= 7, f"positive area share on building-free chips: {[round(a, 4) for a in areas]}"
    dubai = _samples(train_real / "dubai-hitl", 1)[0]
    dubai.expressions, dubai.masks = ["farmland", "cropland"], [np.zeros(dubai.image.shape[:2], bool)] * 2
    farmland = [float(a.mean()) for a in predict_sample(compact, dubai) > 0.5]
    assert max(farmland) < 0.01, f"positive area share for farmland on a Dubai scene: {farmland}"
