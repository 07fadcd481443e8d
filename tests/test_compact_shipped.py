"""The weights shipped inside the package: they load by name and do their job on synthetic data.

The scenes here are rendered with seeds and settings fixed before the model was evaluated; they
are not in the training stream (training seeds start at data.seed * 1_000_003, see data.py).
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from geoseg.models.base import ChangeAware
from geoseg.models.registry import load_segmenter
from geoseg.provenance import sha256_file
from geoseg.train.manifest import percentile_stretch

WEIGHTS = Path(__file__).parents[1] / "geoseg" / "models" / "compact" / "weights"


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(percentile_stretch(image[..., :3])).permute(2, 0, 1)[None].float()


def _iou(pred: np.ndarray, truth: np.ndarray) -> float:
    union = np.count_nonzero(pred | truth)
    return 1.0 if union == 0 else np.count_nonzero(pred & truth) / union


@pytest.fixture(scope="module")
def compact():
    return load_segmenter("compact", device="cpu")


def test_shipped_weights_are_small_safetensors():
    for name in ("compact", "compact-change"):
        weights = WEIGHTS / name / "model.safetensors"
        assert (WEIGHTS / name / "config.json").is_file()
        assert weights.stat().st_size <= 25 * 1024 * 1024


def test_compact_loads_by_name_with_its_hash(compact):
    assert compact.info.name == "compact"
    assert compact.info.weights_sha256 == sha256_file(WEIGHTS / "compact" / "model.safetensors")
    assert not isinstance(compact, ChangeAware)
    assert compact.info.tile_size % 32 == 0


@pytest.mark.parametrize("name", ["compact", "compact-change"])
def test_shipped_models_carry_their_wordings_embeddings(name):
    # computed at export for exactly these wordings (a stale file is ignored): a cold run does not
    # encode every trained wording before its first tile
    seg = load_segmenter(name, device="cpu")
    assert seg._wording_vectors is not None and len(seg._wording_vectors) == len(seg.inventory.wordings())


def test_compact_segments_buildings_on_a_synthetic_tile(compact):
    from geoseg.train.synth.render import render_scene

    scene = render_scene(20261121, 256, 256, 0.5)
    probs = compact.predict(_tensor(scene.image), ["buildings", "water"]).probabilities[0].numpy()
    iou = _iou(probs[0] > 0.5, scene.mask("buildings"))
    assert iou >= 0.7, f"IoU of 'buildings' on the shipped test tile is {iou:.3f} (< 0.7)"


def test_compact_change_finds_a_new_building_and_ignores_an_unchanged_one():
    from geoseg.train.synth.change import render_pair

    seg = load_segmenter("compact-change", device="cpu")
    assert isinstance(seg, ChangeAware)
    # the first pair from seed 7070 on with a new building of at least 150 pixels (chosen by
    # the data alone, never by the model's answer)
    for seed in range(7070, 7200):
        pair = render_pair(seed, 256, 256, 0.5, change_kinds=("new_buildings",))
        if any(i.geometry.area >= 150 for i in pair.change_instances):
            break
    else:  # without it the test would go on with the last pair, which has no such building
        pytest.fail("no seed in 7070..7199 renders a new building of at least 150 pixels")
    new = pair.change["new_buildings"]
    after, before = _tensor(pair.after.image), _tensor(pair.before.image)
    probs = seg.predict_change(after, before, ["new buildings"], direction="appeared").probabilities[0, 0].numpy()
    hit = probs > 0.5
    # the largest new building is found (most of its pixels) ...
    largest = max((i for i in pair.change_instances if i.attrs["change"] == "new_buildings"), key=lambda i: i.geometry.area)
    from geoseg.train.synth.render import ids_mask, rasterize_labels

    new_one = ids_mask(rasterize_labels([largest], 256, 256), [largest.id])
    assert hit[new_one].mean() > 0.5, f"only {hit[new_one].mean():.2f} of the new building was flagged"
    # ... and a building standing on both dates is not
    unchanged = pair.before.mask("buildings") & pair.after.mask("buildings") & ~new
    assert unchanged.sum() > 50
    assert hit[unchanged].mean() < 0.1, f"{hit[unchanged].mean():.2f} of unchanged buildings flagged as new"
