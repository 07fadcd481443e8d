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
# weights (compact 0.9.0) measured 0.555, 0.633, 0.415, 0.748, 0.883, 0.201 and 0.606 on exactly
# these images (0.8.0: 0.566, 0.643, 0.490, 0.714, 0.891, 0.153, 0.629; the first six
# Massachusetts crops are the hard ones: 0.346 over all 22). Dubai water's floor went down with
# 0.9.0, which trades it for ETH, the rural roads and the synthetic sets (model card, "Release 0.9.0").
FLOORS = [
    ("hotosm-fair", 12, "buildings", 0.52),
    ("dubai-hitl", 2, "buildings", 0.59),
    ("dubai-hitl", 2, "water", 0.37),
    ("eth-cil-roads", 4, "roads", 0.66),
    ("agoro-fields-naip", 3, "farmland", 0.80),
    ("massachusetts-roads-parth1620", 6, "roads", 0.12),
    ("kaggle-waterbodies-s2-filtered", 6, "water", 0.57),
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

    Measured (compact 0.9.0): 7 of these 8 chips give 0 %, one 11 % (0.8.0: 6 at 0 %, two 26 % and
    11 %; 0.7.1: 7 at 0 % and
    one 1.3 %; an earlier release: one 7 % and one 57 %, a 0.07 m concrete road taken for a roof,
    see the model card); Dubai's farmland 0 %."""
    empty_chips = _samples(train_real / "hotosm-fair", 8, lambda s: not any(m.any() for m in s.masks))
    areas = [float((predict_sample(compact, s) > 0.5).mean()) for s in empty_chips]
    assert sum(a < 0.01 for a in areas) >= 6, f"positive area share on building-free chips: {[round(a, 4) for a in areas]}"
    dubai = _samples(train_real / "dubai-hitl", 1)[0]
    dubai.expressions, dubai.masks = ["farmland", "cropland"], [np.zeros(dubai.image.shape[:2], bool)] * 2
    farmland = [float(a.mean()) for a in predict_sample(compact, dubai) > 0.5]
    assert max(farmland) < 0.01, f"positive area share for farmland on a Dubai scene: {farmland}"


def test_composited_damage_on_unseen_chips_is_found_and_intact_buildings_are_not_damaged(compact, train_real):
    """Damage composited in the VALIDATION style (palettes, grain, tarps and spill the training
    never drew) onto fAIr chips of the held-out island: "damaged buildings" finds the damaged
    footprints, and "damaged buildings" on the same chips before compositing stays nearly empty.

    Measured (compact 0.9.0): damaged gIoU 0.589 on these 10 chips (0.8.0: 0.579), every building
    composited; 8 of the 10 chips before compositing under 1 % positive."""
    from geoseg.train.damage import VALIDATION_STYLE, composite_damage
    from geoseg.train.evaluate import EvalSample

    chips = _samples(train_real / "hotosm-fair", 10, lambda s: any(m.any() for m in s.masks))
    damaged, intact_area = [], []
    for i, chip in enumerate(chips):
        comp = composite_damage(np.random.default_rng(i), chip.image, chip.masks[0], VALIDATION_STYLE,
                                p_damaged=0.5, p_destroyed=0.5)
        damaged.append(EvalSample(comp.image, ["damaged buildings"], [comp.masks["damaged buildings"]],
                                  groups=[("damaged",)]))
        before = EvalSample(chip.image, ["damaged buildings"], [np.zeros(chip.image.shape[:2], bool)])
        intact_area.append(float((predict_sample(compact, before) > 0.5).mean()))
    giou = evaluate_samples(compact, damaged)["all"]["gIoU"]
    assert giou >= DAMAGE_FLOOR, f"damaged buildings gIoU {giou:.3f} (floor {DAMAGE_FLOOR})"
    assert sum(a < 0.01 for a in intact_area) >= 8, f"damage drawn on intact chips: {[round(a, 4) for a in intact_area]}"


DAMAGE_FLOOR = 0.50  # measured 0.589 (compact 0.9.0; 0.8.0 0.579; 0.7.1 found no damage at all)


def test_unrelated_concepts_draw_little_on_real_chips(compact, train_real):
    """Concepts the model was never shown (UNRELATED_EVAL, fixed before training; never trained
    on and never used to choose anything) asked on held-out real chips: the existence head keeps
    most of them empty."""
    from geoseg.train.queries import UNRELATED_EVAL

    chips = _samples(train_real / "dubai-hitl", 2) + _samples(train_real / "hotosm-fair", 2)
    drawn = []
    for chip in chips:
        chip.expressions = list(UNRELATED_EVAL)
        chip.masks = [np.zeros(chip.image.shape[:2], bool)] * len(UNRELATED_EVAL)
        drawn += [float(a.mean()) for a in predict_sample(compact, chip) > 0.5]
    share = sum(a >= 0.01 for a in drawn) / len(drawn)
    assert share <= UNRELATED_CEILING, f"{share:.0%} of (chip, unrelated concept) runs draw >= 1 % of the chip"


UNRELATED_CEILING = 0.25  # measured 17 % (compact 0.9.0; 0.8.0 19 %); the unknown-query warning covers most of the rest


@pytest.fixture(scope="module")
def compact_change():
    return load_segmenter("compact-change", device="cpu")


def test_compact_change_finds_new_buildings_on_real_pairs(compact_change, train_real):
    """The five held-out EGY-BCD pairs (Egypt, real new buildings), asked as `geoseg change` asks."""
    pairs = _samples(train_real / "egy-bcd", 5)
    assert len(pairs) == 5 and all(p.before is not None for p in pairs)
    giou = _giou(compact_change, pairs, "all")
    assert giou >= CHANGE_FLOORS["new buildings"], f"new buildings gIoU {giou:.3f} on the egy-bcd val pairs"


def test_compact_change_finds_composited_destruction_and_draws_no_new_buildings(compact_change, train_real):
    """fAIr chips of the held-out island made into disaster pairs in the VALIDATION style
    (geoseg.train.damage.destroyed_pair: before = the chip, after = buildings damaged, destroyed
    or cleared): "destroyed buildings" and "damaged buildings" find the footprints, and "new
    buildings" on the same pairs stays nearly empty (rubble is not a new building)."""
    from geoseg.train.damage import VALIDATION_STYLE, destroyed_pair
    from geoseg.train.evaluate import EvalSample

    chips = _samples(train_real / "hotosm-fair", 10, lambda s: any(m.any() for m in s.masks))
    pairs, new_area = [], []
    for i, chip in enumerate(chips):
        before, after, changes = destroyed_pair(np.random.default_rng(i), chip.image, chip.masks[0], VALIDATION_STYLE)
        asked = {"destroyed buildings": changes["demolished_buildings"], "damaged buildings": changes["damaged_buildings"]}
        pairs.append(EvalSample(after, list(asked), list(asked.values()), before=before, groups=[(q,) for q in asked]))
        new = EvalSample(after, ["new buildings"], [np.zeros(after.shape[:2], bool)], before=before)
        new_area.append(float((predict_sample(compact_change, new) > 0.5).mean()))
    result = evaluate_samples(compact_change, pairs)
    for query in ("destroyed buildings", "damaged buildings"):
        giou = result[f"{query}/non_empty"]["gIoU"]
        assert giou >= CHANGE_FLOORS[query], f"{query}: gIoU {giou:.3f} on 10 composited pairs"
    assert sum(a < 0.01 for a in new_area) >= 8, f"new buildings drawn on disaster pairs: {[round(a, 4) for a in new_area]}"


# floors a little under what compact-change 0.6.0 measured on exactly these samples: new buildings
# 0.613 (0.5.0: 0.629), destroyed 0.512 (0.481), damaged 0.488 (0.436); new buildings on the 10
# disaster pairs: all 10 under 1 % (0.5.0 too). The shipped 0.7.0: 0.673, 0.547, 0.549, all 10
# under 1 %; the floors were kept, not raised after the fact.
CHANGE_FLOORS = {"new buildings": 0.58, "destroyed buildings": 0.47, "damaged buildings": 0.45}
