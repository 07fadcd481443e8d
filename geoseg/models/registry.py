"""Find and load a segmenter from `--model NAME|DIR|HUB_ID`.

- a registry name (`compact`, the embedded default; see `REGISTRY`),
- a local directory holding `config.json` + `*.safetensors` (+ tokenizer files),
- a Hugging Face hub id (`owner/name`), downloaded into the user's cache on first use.

The family of a directory is read from its `config.json` (`model_type`), never by running code
from the checkpoint: `trust_remote_code` is never used, and pickled weights need `allow_pickle`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from geoseg.errors import ModelLoadError
from geoseg.models.base import Segmenter

# The registry model each command runs when --model is not given (the one place that says so).
DEFAULT_MODELS = {"segment": "compact", "change": "compact-change"}
DEFAULT_MODEL = DEFAULT_MODELS["segment"]


def default_model(command: str) -> str:
    """The model `command` (segment, change; anything else: segment's) runs without --model."""
    return DEFAULT_MODELS.get(command, DEFAULT_MODEL)


@dataclass(frozen=True)
class Family:
    """A model family: how to load a directory of its checkpoints."""

    name: str
    model_types: tuple[str, ...]  # values of config.json's `model_type` that belong to it
    load_dir: Callable[..., Segmenter]  # (path, device=..., allow_pickle=...) -> Segmenter
    description: str
    license: str


def _load_compact(path: Path, **kw) -> Segmenter:
    from geoseg.models.compact import load_compact_segmenter

    return load_compact_segmenter(path, **kw)


def _load_segearth(path: Path, **kw) -> Segmenter:
    from geoseg.models.segearth import load_segearth_segmenter

    return load_segearth_segmenter(path, **kw)


FAMILIES: tuple[Family, ...] = (
    Family(
        "compact",
        ("geoseg_compact", "geoseg_compact_change"),
        _load_compact,
        "METRIS-style compact referring segmenter (CPU friendly, embedded default)",
        "Apache-2.0",
    ),
    Family(
        "segearth-r1",
        ("llava_phi", "segearth_r1", "segearth_r1_generative", "segearth_r1_bitemporal"),
        _load_segearth,
        "SegEarth-R1-compatible MLLM segmenter (Swin-B + Phi-1.5 + Mask2Former), GPU; "
        "generative multi-[SEG] and bi-temporal change variants",
        "Apache-2.0",
    ),
)


def embedded_dir(name: str) -> Path:
    """Directory of a model shipped inside the package."""
    return Path(__file__).parent / "compact" / "weights" / name


# Registry names -> directories shipped inside the package.
REGISTRY: dict[str, Callable[[], Path]] = {
    "compact": lambda: embedded_dir("compact"),
    "compact-change": lambda: embedded_dir("compact-change"),
}


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` picks cuda > mps > cpu; anything else is passed to torch."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise ModelLoadError(f"--device {device!r} is not a torch device: {e}") from None


def resolve_model_dir(spec: str | None) -> Path:
    """Turn `--model` into a local directory (downloading a hub id on the user's machine)."""
    spec = spec or DEFAULT_MODEL
    if spec in REGISTRY:
        path = REGISTRY[spec]()
        if not (path / "config.json").exists():
            raise ModelLoadError(
                f"model {spec!r}: its weights are not installed at {path}; reinstall geoseg "
                "or train them with `geoseg train` (see docs/models/compact.md)"
            )
        return path
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model directory {path} has no config.json; point --model at a checkpoint directory")
        return path
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return _download_from_hub(spec)
    raise ModelLoadError(
        f"model {spec!r} is neither a registry name ({', '.join(REGISTRY)}), an existing "
        "directory nor a hub id (owner/name); see `geoseg models`"
    )


def _download_from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.bin"]
        )
    except Exception as e:  # network, auth, missing repo: one line, not a stack of HTTP errors
        raise ModelLoadError(
            f"could not download {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {e}); "
            "download it yourself and pass the local directory to --model"
        ) from None
    return Path(local)


def family_of(path: Path) -> Family:
    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type", "")
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path / 'config.json'} is not readable JSON: {e}") from None
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise ModelLoadError(
        f"{path / 'config.json'}: model_type {model_type!r} is not a family geoseg knows "
        f"({', '.join(t for f in FAMILIES for t in f.model_types)})"
    )


def load_segmenter(
    spec: str | None = None, *, device: str = "auto", allow_pickle: bool = False
) -> Segmenter:
    """Load a segmenter by registry name, directory or hub id."""
    path = resolve_model_dir(spec)
    family = family_of(path)
    return family.load_dir(path, device=resolve_device(device), allow_pickle=allow_pickle)
