"""Evaluate a segmenter on a dataset: a JSONL manifest, or samples made in memory.

Samples that share an image are predicted together, so each image is encoded once for all its
expressions (as in the pipeline). Images whose sides are not multiples of 32 are zero-padded on
the bottom/right and the prediction is cropped back. A pixel is predicted positive when its
probability exceeds `threshold` (0.5 by default, the pipeline's default).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from geoseg.errors import InputError
from geoseg.models.base import Segmenter
from geoseg.models.change import change_probabilities, change_view
from geoseg.options import EVAL_SCALE_MAX
from geoseg.train.manifest import ManifestSample, load_image, load_mask, read_manifest
from geoseg.train.metrics import MetricAccumulator, SampleCounts, sample_counts


@dataclass
class EvalSample:
    image: np.ndarray  # H x W x 3 float32 in [0, 1] (after date for change)
    expressions: list[str]
    masks: list[np.ndarray]  # one H x W bool per expression
    before: np.ndarray | None = None
    groups: list[tuple[str, ...]] = field(default_factory=list)  # per expression
    name: str = ""  # the image file (the after date's for change), as per-sample scores name it


@dataclass(frozen=True)
class SampleScore:
    """One (image, expression) scored: the counts behind every metric."""

    image: str
    expression: str
    groups: tuple[str, ...]
    counts: SampleCounts

    def row(self) -> dict:
        """The JSON row `geoseg evaluate --per-sample` prints for it."""
        c = self.counts
        return {"image": self.image, "expression": self.expression, "iou": c.iou, "precision": c.precision,
                "recall": c.recall, "truth_share": c.true_area / c.pixels, "predicted_share": c.pred_area / c.pixels}


def _to_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    h, w = image.shape[:2]
    ph, pw = -h % 32, -w % 32
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    if ph or pw:
        t = torch.nn.functional.pad(t, (0, pw, 0, ph))
    return t[None].to(device)


def _resampled(image: np.ndarray, scale: float) -> np.ndarray:
    """The image with `scale` times as many pixels per side (antialiased, as GDAL's averaging
    overviews are when --gsd reads a scene coarser)."""
    if scale == 1.0:
        return image
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    size = [max(1, round(n * scale)) for n in image.shape[:2]]
    t = torch.nn.functional.interpolate(t, size=size, mode="bilinear", antialias=scale < 1, align_corners=False)
    return t[0].permute(1, 2, 0).numpy()


def predict_sample(segmenter: Segmenter, sample: EvalSample, scale: float = 1.0) -> np.ndarray:
    """Q x H x W probabilities for the sample's expressions.

    A change sample (with `before`) is asked as `geoseg change` asks (geoseg.models.change).
    With `scale` != 1 the model reads the image(s) resampled by that factor (0.5: a ground
    resolution twice as coarse) and its probabilities are resampled back onto the truth's grid.
    """
    h, w = sample.image.shape[:2]
    after = _resampled(sample.image, scale)
    images = _to_tensor(after, segmenter.device)
    if sample.before is None:
        probs = segmenter.predict(images, sample.expressions).probabilities[0]
    else:  # a change sample: the query's change in any of the directions the model answers it with
        before = _to_tensor(_resampled(sample.before, scale), segmenter.device)
        probs = change_probabilities(change_view(segmenter), images, before, sample.expressions)[0]
    probs = probs[:, : after.shape[0], : after.shape[1]].float()
    if scale != 1.0:
        probs = torch.nn.functional.interpolate(probs[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    return probs.cpu().numpy()


def score_samples(
    segmenter: Segmenter,
    samples: Iterable[EvalSample],
    *,
    threshold: float = 0.5,
    scale: float = 1.0,
    progress: bool = False,
    total: int | None = None,
) -> Iterator[SampleScore]:
    """Every (image, expression) of `samples` predicted and scored, in order."""
    for sample in tqdm(samples, total=total, file=sys.stderr, disable=not progress, desc="evaluate"):
        probs = predict_sample(segmenter, sample, scale)
        for q, mask in enumerate(sample.masks):
            groups = sample.groups[q] if sample.groups else ()
            yield SampleScore(sample.name, sample.expressions[q], groups, sample_counts(probs[q] > threshold, mask))


def summarise_scores(scores: Iterable[SampleScore]) -> dict[str, dict[str, float]]:
    """The metric set over all scores and over each group (see geoseg.train.metrics)."""
    acc = MetricAccumulator()
    for score in scores:
        acc.add(score.counts, score.groups)
    return acc.compute()


def evaluate_samples(segmenter: Segmenter, samples: Iterable[EvalSample], *, threshold: float = 0.5,
                     scale: float = 1.0) -> dict[str, dict[str, float]]:
    """The metric set of `segmenter` on samples made in memory."""
    return summarise_scores(score_samples(segmenter, samples, threshold=threshold, scale=scale))


def _records(path: str | Path, tags: Sequence[str] = ()) -> list[ManifestSample]:
    """The manifest's samples that carry every tag in `tags`."""
    return [s for s in read_manifest(path) if set(tags) <= set(s.tags)]


def manifest_samples(path: str | Path, tags: Sequence[str] = ()) -> Iterator[EvalSample]:
    """Samples of a manifest (those carrying every tag in `tags`), grouped by image (or
    before/after pair) so each is encoded once."""
    records = _records(path, tags)

    def key(s: ManifestSample) -> tuple:
        return (str(s.image), str(s.before), str(s.after))

    records.sort(key=key)
    for _, members in groupby(records, key=key):
        group = list(members)
        first = group[0]
        image = load_image(first.shown)
        before = load_image(first.before_image) if first.is_change else None
        yield EvalSample(
            image=image,
            before=before,
            expressions=[s.expression for s in group],
            masks=[load_mask(s.mask) for s in group],
            groups=[s.tags + _vocabulary_tags(s.expression) for s in group],
            name=str(first.shown),
        )


def _vocabulary_tags(expression: str) -> tuple[str, ...]:
    """"split:train" / "split:synonym" / ... and the concept ("concept:change/new_roads", ...)
    for wordings of the synthetic vocabulary."""
    from geoseg.train.queries import split_of
    from geoseg.train.synth.vocab import PHRASE_INDEX, normalise

    phrase = PHRASE_INDEX.get(normalise(expression))
    return (f"split:{split_of(phrase)}", f"concept:{phrase.concept}") if phrase else ()


def count_images(path: str | Path, tags: Sequence[str] = ()) -> int:
    return len({(str(s.image), str(s.before), str(s.after)) for s in _records(path, tags)})


def evaluate_manifest(
    segmenter: Segmenter, path: str | Path, *, threshold: float = 0.5, tags: Sequence[str] = (),
    scale: float = 1.0, progress: bool = False, per_sample: bool = False,
) -> dict:
    """Metrics of `segmenter` on a JSONL manifest (its lines carrying every tag in `tags`), with
    the model and dataset named; `scale` as in predict_sample. With `per_sample`, also every
    (image, expression)'s IoU, precision, recall and areas under "samples" (images in path
    order, as manifest_samples reads them)."""
    if not 0 < scale <= EVAL_SCALE_MAX:
        raise InputError(f"scale {scale}: use a factor in (0, {EVAL_SCALE_MAX:g}], e.g. 0.5 to read images at half "
                         "their resolution")
    total = count_images(path, tags)
    if not total:
        raise InputError(f"{path}: no manifest lines carry the tag(s) {', '.join(tags)}; check the spelling")
    scores = list(score_samples(segmenter, manifest_samples(path, tags), threshold=threshold, scale=scale,
                                progress=progress, total=total))
    result: dict[str, Any] = {
        "model": segmenter.info.name,
        "model_version": segmenter.info.version,
        "weights_sha256": segmenter.info.weights_sha256,
        "dataset": str(path),
        "tags": list(tags),
        "threshold": threshold,
        "scale": scale,
        "metrics": summarise_scores(scores),
    }
    if per_sample:
        result["samples"] = [score.row() for score in scores]
    return result


REPORT_KEYS = ("count", "gIoU", "cIoU", "mIoU", "oIoU", "Pr@0.5", "Pr@0.7", "Pr@0.9", "fp_area")


def format_report(result: dict) -> str:
    """A plain table of `evaluate_manifest`'s result for people."""
    lines = [
        f"model {result['model']} {result['model_version']} (sha256 {str(result['weights_sha256'])[:12]}), "
        f"dataset {result['dataset']}, threshold {result['threshold']}, scale {result['scale']}",
        f"{'group':28s}" + "".join(f"{k:>9s}" for k in REPORT_KEYS) + f"{'gIoU 95%':>14s}",
    ]
    for group, m in result["metrics"].items():
        cells = [f"{m[k]:9d}" if k == "count" else (f"{m[k]:9.4f}" if k in m else f"{'-':>9s}") for k in REPORT_KEYS]
        interval = f"{m['gIoU_ci95_low']:.3f}-{m['gIoU_ci95_high']:.3f}" if "gIoU_ci95_low" in m else "-"
        lines.append(f"{group:28s}" + "".join(cells) + f"{interval:>14s}")
    if "samples" in result:
        lines += ["", f"{'iou':>6s} {'prec':>6s} {'recall':>6s} {'truth':>6s} {'pred':>6s}  expression | image"]
        lines += [_sample_line(row) for row in result["samples"]]
    return "\n".join(lines)


def _sample_line(row: dict) -> str:
    def cell(x: float | None) -> str:
        return f"{'-':>6s}" if x is None else f"{x:6.3f}"

    values = [row[k] for k in ("iou", "precision", "recall", "truth_share", "predicted_share")]
    return " ".join(cell(x) for x in values) + f"  {row['expression']} | {row['image']}"
