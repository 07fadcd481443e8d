"""`geoseg evaluate`: manifests (as geoseg.train.synth exports them), grouped metrics, the CLI command."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from geoseg.errors import InputError
from geoseg.models.compact import CompactModel, tiny_config
from geoseg.train.evaluate import (
    EvalSample,
    evaluate_manifest,
    evaluate_samples,
    manifest_samples,
    score_samples,
)
from geoseg.train.manifest import read_manifest


class OracleSegmenter:
    """Answers with a fixed probability map per query, to test the evaluation arithmetic."""

    def __init__(self, answers: dict[str, np.ndarray]):
        self.answers = answers
        self.device = torch.device("cpu")

    def predict(self, images, queries):
        from geoseg.models.base import Prediction

        h, w = images.shape[-2:]
        probs = torch.zeros(images.shape[0], len(queries), h, w)
        for q, text in enumerate(queries):
            a = torch.from_numpy(self.answers[text]).float()
            probs[:, q, : a.shape[0], : a.shape[1]] = a
        return Prediction(probs)


def test_evaluate_samples_pads_and_crops_odd_sizes():
    truth = np.zeros((40, 50), bool)
    truth[5:15, 5:25] = True  # 200 px
    pred = np.zeros((40, 50))
    pred[5:15, 5:15] = 0.9  # 100 px, all inside the truth
    seg = OracleSegmenter({"a": pred, "b": np.zeros((40, 50))})
    sample = EvalSample(np.zeros((40, 50, 3), np.float32), ["a", "b"], [truth, np.zeros((40, 50), bool)])
    m = evaluate_samples(seg, [sample])
    assert m["all/non_empty"]["gIoU"] == pytest.approx(0.5)
    assert m["all/empty"]["gIoU"] == 1.0
    assert m["all"]["gIoU"] == pytest.approx(0.75)
    assert m["all"]["cIoU"] == pytest.approx(100 / 200)


def test_per_sample_scores_say_what_was_missed_and_what_was_overdrawn():
    truth = np.zeros((40, 50), bool)
    truth[5:15, 5:25] = True  # 200 px
    pred = np.zeros((40, 50))
    pred[5:15, 5:15] = 0.9  # 100 px, all inside the truth: precision 1, recall 0.5
    seg = OracleSegmenter({"a": pred, "b": np.zeros((40, 50)), "c": pred})
    empty = np.zeros((40, 50), bool)
    sample = EvalSample(np.zeros((40, 50, 3), np.float32), ["a", "b", "c"], [truth, empty, empty], name="chip.tif")
    a, b, c = (score.row() for score in score_samples(seg, [sample]))
    assert a == {"image": "chip.tif", "expression": "a", "iou": 0.5, "precision": 1.0, "recall": 0.5,
                 "truth_share": 0.1, "predicted_share": 0.05}
    assert (b["iou"], b["precision"], b["recall"]) == (1.0, None, None)  # nothing asked for, nothing drawn
    assert (c["iou"], c["precision"], c["recall"], c["predicted_share"]) == (0.0, 0.0, None, 0.05)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from geoseg.train.synth.export import export_dataset

    out = tmp_path_factory.mktemp("ds")
    return export_dataset(out, 2, seed=5, size=64, gsd_choices=(0.5,), queries_per_image=3)


def test_reads_synth_export_and_groups_by_image(exported):
    records = list(read_manifest(exported))
    assert len(records) == 6 and all(r.image and r.mask.is_file() for r in records)
    samples = list(manifest_samples(exported.parent))
    assert len(samples) == 2 and all(len(s.expressions) == 3 for s in samples)
    assert samples[0].image.dtype == np.float32 and samples[0].image.max() <= 1
    assert any(g.startswith("split:") for s in samples for gs in s.groups for g in gs)
    assert any(g.startswith("concept:") for s in samples for gs in s.groups for g in gs)


def test_bad_manifest_line_is_an_input_error(tmp_path):
    (tmp_path / "manifest.jsonl").write_text('{"mask": "m.png", "expression": "x"}\n')
    with pytest.raises(InputError, match="manifest.jsonl:1"):
        list(read_manifest(tmp_path))


def test_evaluate_command_json(exported, tmp_path, monkeypatch):
    from geoseg_cli.train import evaluate_command

    torch.manual_seed(0)
    CompactModel(tiny_config()).save_pretrained(tmp_path / "ckpt")
    result = CliRunner().invoke(evaluate_command, [str(tmp_path / "ckpt"), str(exported), "--json"], obj={"quiet": 1})
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data["metrics"]["all"]) >= {"gIoU", "cIoU", "mIoU", "oIoU", "Pr@0.5", "Pr@0.7", "Pr@0.9"}
    assert data["metrics"]["all"]["count"] == 6
    text = CliRunner().invoke(evaluate_command, [str(tmp_path / "ckpt"), str(exported)], obj={"quiet": 1})
    assert text.exit_code == 0 and "gIoU" in text.output and "all/empty" in text.output

    rows = json.loads(CliRunner().invoke(evaluate_command, [str(tmp_path / "ckpt"), str(exported), "--json",
                                                            "--per-sample"], obj={"quiet": 1}).output)["samples"]
    manifest = read_manifest(exported)
    assert sorted((r["image"], r["expression"]) for r in rows) == sorted((str(m.shown), m.expression) for m in manifest)
    assert np.mean([r["iou"] for r in rows]) == pytest.approx(data["metrics"]["all"]["gIoU"])
    table = CliRunner().invoke(evaluate_command, [str(tmp_path / "ckpt"), str(exported), "--per-sample"],
                               obj={"quiet": 1}).output
    assert all(f"{m.expression} | {m.shown}" in table for m in manifest)


def test_evaluate_manifest_names_model_and_weights(exported, tmp_path):
    from geoseg.models.compact import load_compact_segmenter

    CompactModel(tiny_config()).save_pretrained(tmp_path / "ckpt")
    seg = load_compact_segmenter(tmp_path / "ckpt")
    r = evaluate_manifest(seg, exported)
    assert r["weights_sha256"] == seg.info.weights_sha256 and r["metrics"]["all"]["count"] == 6


class BrightnessSegmenter:
    """The probability of a pixel is its brightness; records the size of every image it reads."""

    def __init__(self):
        self.device = torch.device("cpu")
        self.seen: list[tuple[int, int]] = []

    def predict(self, images, queries):
        from geoseg.models.base import Prediction

        self.seen.append(tuple(images.shape[-2:]))
        return Prediction(images.mean(dim=1, keepdim=True).expand(-1, len(queries), -1, -1))


def test_scale_reads_the_image_resampled_and_scores_on_the_truth_grid():
    truth = np.zeros((96, 128), bool)
    truth[20:60, 40:100] = True
    image = np.repeat(truth[..., None], 3, axis=2).astype(np.float32)
    seg = BrightnessSegmenter()
    sample = EvalSample(image, ["bright"], [truth])

    assert evaluate_samples(seg, [sample])["all"]["gIoU"] == 1.0
    half = evaluate_samples(seg, [sample], scale=0.5)["all"]["gIoU"]
    assert seg.seen == [(96, 128), (64, 64)]  # 48 x 64, padded to multiples of 32
    assert 0.95 < half <= 1.0  # edges blur a little through the round trip, the square stays


def test_scale_out_of_range_is_refused(exported):
    with pytest.raises(InputError, match="scale 0.0"):
        evaluate_manifest(BrightnessSegmenter(), exported, scale=0.0)
    from geoseg_cli.main import cli

    result = CliRunner().invoke(cli, ["evaluate", "compact", str(exported), "--scale", "0"])
    assert result.exit_code == 2 and "--scale" in result.output
