"""Would a calibrated existence head help? Score a compact checkpoint with its existence
probability shifted or gated, on the validation sets the card chooses checkpoints on.

    nice -n 19 .venv/bin/python docs/models/existence_sweep.py geoseg/models/compact/weights/compact \\
        --data data --offsets 0,-1 --gates 0,0.7

The compact model draws sigmoid(mask logit) x sigmoid(existence logit) (geoseg.models.compact.
segmenter). Each sample is predicted once, as `geoseg evaluate` predicts it, with the existence
logits recorded; every variant is then scored from those: existence sigmoid(logit + offset), and
zero where that is under the gate. Offset 0 / gate 0 is the checkpoint as it ships and reproduces
`geoseg evaluate <checkpoint> <set> [--tag area-split:val] --json` (gIoU, threshold 0.5).
Real sources use their area-split:val lines; validation-a/-b are `python -m geoseg.train.heldout
data/validation --validation` and the held-out sets `python -m geoseg.train.heldout data/heldout`,
both under --data; the held-out attribute set is reported, never chosen on.
The Markdown table goes to stdout (docs/models/compact.md, "Tried and left alone").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from geoseg.errors import InputError  # noqa: E402
from geoseg.models.compact.segmenter import CompactSegmenter  # noqa: E402
from geoseg.models.registry import load_segmenter  # noqa: E402
from geoseg.train.evaluate import manifest_samples, predict_sample  # noqa: E402
from geoseg.train.metrics import sample_counts  # noqa: E402

REAL = ROOT.parent / "shared" / "data" / "train-real"
VAL = ("area-split:val",)
SETS = {  # column -> (manifest under ../shared/data/train-real or --data, tags)
    "fAIr": (REAL / "hotosm-fair", VAL),
    "Dubai": (REAL / "dubai-hitl", VAL),
    "ETH": (REAL / "eth-cil-roads", VAL),
    "farmland": (REAL / "agoro-fields-naip", VAL),
    "Mass. roads": (REAL / "massachusetts-roads-parth1620", VAL),
    "S2 water": (REAL / "kaggle-waterbodies-s2-filtered", VAL),
    "validation-a": (Path("validation/validation-a"), ()),
    "validation-b": (Path("validation/validation-b"), ()),
    "attribute (held out)": (Path("heldout/attribute"), ()),
}
EGY_BCD = 0.629  # the seventh real source is compact-change's; counted as the card's tables count it


def recorded(segmenter: CompactSegmenter, manifest: Path, tags: tuple[str, ...]) -> list[tuple[float, np.ndarray, np.ndarray]]:
    """(existence logit, mask probabilities without existence, truth) per (sample, expression)."""
    model = segmenter.model
    logits: list[torch.Tensor] = []
    decode = model.decode

    def recording_decode(*args, **kwargs):
        out = decode(*args, **kwargs)
        logits.append(out.exist_logits.float())
        return out

    model.decode = recording_decode  # the existence logits are not part of a Prediction
    rows = []
    try:
        for sample in manifest_samples(manifest, tags):
            logits.clear()
            probs = predict_sample(segmenter, sample)
            exist = torch.cat(logits).numpy()  # one read per tile: main() checks inference_scales
            for q, truth in enumerate(sample.masks):
                rows.append((float(exist[q]), (probs[q] * (1 + np.exp(-exist[q]))).astype(np.float16), truth))
    finally:
        model.decode = decode
    return rows


def giou(rows: list[tuple[float, np.ndarray, np.ndarray]], offset: float, gate: float) -> float:
    """gIoU (an empty truth counts 1 when nothing is drawn) with the existence shifted and gated."""
    scores = []
    for logit, mask_probs, truth in rows:
        exist = 1 / (1 + np.exp(-(logit + offset)))
        scores.append(sample_counts(mask_probs * (exist if exist >= gate else 0.0) > 0.5, truth).iou)
    return float(np.mean(scores))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", type=Path, default=Path("data"), help="the folder of validation/ and heldout/")
    parser.add_argument("--offsets", default="0,-1")
    parser.add_argument("--gates", default="0,0.7")
    args = parser.parse_args()
    segmenter = load_segmenter(args.checkpoint, device="cpu")
    if not isinstance(segmenter, CompactSegmenter):
        raise InputError(f"{args.checkpoint} is not a compact checkpoint; only those have an existence head")
    if len(segmenter.model.config.inference_scales) != 1:  # one existence logit per (image, query)
        raise InputError(f"{args.checkpoint} reads each tile at several scales; the sweep assumes one read")
    data = {name: recorded(segmenter, path if path.is_absolute() else args.data / path, tags)
            for name, (path, tags) in SETS.items()}
    real = list(SETS)[:6]
    print("| offset | gate | " + " | ".join(SETS) + " | mean of 7 | synthetic val |")
    print("|---" * (len(SETS) + 4) + "|")
    for offset in (float(x) for x in args.offsets.split(",")):
        for gate in (float(x) for x in args.gates.split(",")):
            s = {name: giou(rows, offset, gate) for name, rows in data.items()}
            mean7 = (sum(s[n] for n in real) + EGY_BCD) / 7
            a, b = len(data["validation-a"]), len(data["validation-b"])
            synthetic = (s["validation-a"] * a + s["validation-b"] * b) / (a + b)
            cells = " | ".join(f"{s[n]:.4f}" for n in SETS)
            print(f"| {offset:g} | {gate:g} | {cells} | {mean7:.4f} | {synthetic:.4f} |", flush=True)


if __name__ == "__main__":
    main()
