"""The JSONL dataset manifest (documented in docs/dataset-format.md): read and write samples.

One JSON object per line, one (image, expression, mask) sample per line:

    {"image": "images/000001.tif", "mask": "masks/000001_0.tif", "expression": "red-roofed houses",
     "empty": false, "tags": ["heldout:synonym"]}
    {"before": "before/000001.tif", "after": "after/000001.tif", "mask": "masks/000001_0.tif",
     "expression": "new buildings", "empty": false}

Paths are relative to the manifest's folder. "expressions" (a list of equivalent wordings) may
stand in for "expression"; every wording then counts as one sample with the same mask. Optional
"tags" (list of strings), "kind" and "gsd" become evaluation groups ("kind:attribute", "gsd:0.5").
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geoseg.errors import InputError


@dataclass
class ManifestSample:
    expression: str
    mask: Path
    image: Path | None = None  # single-date sample
    before: Path | None = None  # change sample (with `after`)
    after: Path | None = None
    empty: bool = False
    tags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_change(self) -> bool:
        return self.before is not None

    @property
    def shown(self) -> Path:
        """The image the mask belongs to: `after` for a change sample, `image` otherwise."""
        path = self.after if self.is_change else self.image
        assert path is not None  # read_manifest checks every sample has its images
        return path

    @property
    def before_image(self) -> Path:
        """A change sample's `before` image."""
        assert self.before is not None, "a single-date sample has no before image"
        return self.before


def read_manifest(path: str | Path) -> Iterator[ManifestSample]:
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.jsonl"
    if not path.is_file():
        raise InputError(f"dataset manifest {path} does not exist; give a manifest.jsonl or its folder")
    root = path.parent
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                yield from _samples_of(rec, root)
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise InputError(f"{path}:{lineno}: not a valid manifest record ({e}); see docs/dataset-format.md") from None


def _samples_of(rec: dict, root: Path) -> Iterator[ManifestSample]:
    texts = rec.get("expressions") or [rec["expression"]]
    paths = {k: root / rec[k] for k in ("image", "before", "after") if rec.get(k)}
    if "image" not in paths and not ("before" in paths and "after" in paths):
        raise KeyError("image (or before + after)")
    tags = list(rec.get("tags", ()))
    # geoseg.train.synth exports describe each query; turn that into evaluation groups
    if rec.get("kind"):
        tags.append(f"kind:{rec['kind']}")
    if rec.get("gsd") is not None:
        tags.append(f"gsd:{rec['gsd']}")
    for text in texts:
        yield ManifestSample(
            expression=str(text),
            mask=root / rec["mask"],
            image=paths.get("image"),
            before=paths.get("before"),
            after=paths.get("after"),
            empty=bool(rec.get("empty", False)),
            tags=tuple(tags),
        )


def percentile_stretch(image: np.ndarray, low: float = 2.0, high: float = 98.0) -> np.ndarray:
    """H x W x C -> float32 in [0, 1], each band stretched between its 2nd and 98th percentile
    (the same normalisation the pipeline applies per scene)."""
    image = image.astype(np.float32)
    out = np.empty_like(image)
    for c in range(image.shape[-1]):
        lo, hi = np.percentile(image[..., c], [low, high])
        out[..., c] = np.clip((image[..., c] - lo) / max(hi - lo, 1e-6), 0, 1)
    return out


def read_array(path: Path) -> np.ndarray:
    """An image (H x W x C) or mask (H x W) from .npy, or any raster GDAL reads (.tif, .png)."""
    if not path.is_file():
        raise InputError(f"{path} does not exist (listed in the dataset manifest)")
    if path.suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
    else:
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                arr = src.read()
        arr = arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)
    return arr


def load_image(path: Path) -> np.ndarray:
    """Image as float32 H x W x 3 in [0, 1]; integer images are percentile-stretched per band."""
    arr = read_array(path)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    arr = arr[..., :3]
    if np.issubdtype(arr.dtype, np.floating) and arr.min() >= 0 and arr.max() <= 1:
        return arr.astype(np.float32)
    return percentile_stretch(arr)


def load_mask(path: Path) -> np.ndarray:
    arr = read_array(path)
    return (arr[..., 0] if arr.ndim == 3 else arr) > 0
