"""SegEarth-R1-compatible MLLM segmenter (Swin-B + Phi-1.5 + Mask2Former), loading the published
checkpoints (`earth-insights/SegEarth-R1-RRSIS-D`, `earth-insights/SegEarth-R1-EarthReason`).

Entry point: `load_segearth_segmenter(path, device=..., allow_pickle=False)`; the registry dispatches
config.json `model_type` "llava_phi" / "segearth_r1" here. See docs/models/segearth-r1.md.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from geoseg.errors import ModelLoadError
from geoseg.models.base import ModelInfo
from geoseg.models.segearth.checkpoint import load_weights, weight_files, weights_sha256
from geoseg.models.segearth.config import SegEarthConfig, parse_config
from geoseg.models.segearth.model import SegEarthR1
from geoseg.models.segearth.preprocess import PadInfo, preprocess, unpad
from geoseg.models.segearth.prompt import guess_task, prepare_tokenizer
from geoseg.models.segearth.segmenter import EncodedTiles, SegEarthSegmenter, gate

__all__ = [
    "EncodedTiles",
    "PadInfo",
    "SegEarthSegmenter",
    "gate",
    "load_segearth_segmenter",
    "preprocess",
    "read_config",
    "unpad",
]

LICENSE = "Apache-2.0"


def read_config(path: Path) -> SegEarthConfig:
    config_file = Path(path) / "config.json"
    try:
        raw = json.loads(config_file.read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{config_file} is not readable JSON: {e}") from None
    return parse_config(raw, where=str(config_file))


def checkpoint_name(path: Path) -> str:
    """`owner/name` for a Hugging Face cache snapshot, else the directory name."""
    for part in Path(path).resolve().parts:
        if part.startswith("models--"):
            return part[len("models--") :].replace("--", "/")
    return Path(path).resolve().name


def _load_tokenizer(path: Path):
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    # transformers warns that it does not know model_type "llava_phi" while it only reads the
    # tokenizer files; that is expected here, so keep stderr for messages that matter.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=False
        )
    except Exception as e:  # missing files, unknown class: one line naming the directory
        raise ModelLoadError(
            f"{path}: cannot load the tokenizer files ({type(e).__name__}: {e}); the checkpoint "
            "directory must contain the tokenizer published with it (vocab.json, merges.txt, ...)"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)


def load_segearth_segmenter(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    allow_pickle: bool = False,
    dtype: torch.dtype | None = None,
    compile: bool = False,
    task: str | None = None,
    gate_min_score: float | None = None,
    gate_min_area: int | None = None,
) -> SegEarthSegmenter:
    """Build the network from `path/config.json`, load its weights and tokenizer.

    dtype: parameter dtype (default bfloat16 on CUDA, float32 elsewhere). task: "referring" or
    "reasoning" prompt wording (default: config `geoseg.task`, else guessed from the name).
    gate_*: empty-tile gating thresholds (default: config `geoseg.gate_*`, else GeosegOptions).
    """
    path = Path(path)
    device = torch.device(device)
    cfg = read_config(path)
    overrides = {
        k: v
        for k, v in {
            "task": task,
            "gate_min_score": gate_min_score,
            "gate_min_area": gate_min_area,
        }.items()
        if v is not None
    }
    name = checkpoint_name(path)
    options = dataclasses.replace(cfg.options, **overrides)
    options = dataclasses.replace(options, task=options.task or guess_task(name))
    cfg = dataclasses.replace(cfg, options=options)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)

    files, pickled = weight_files(path, allow_pickle)
    tokenizer = _load_tokenizer(path)
    prompt = prepare_tokenizer(tokenizer, options.task, cfg.vocab_size, str(path))
    with torch.device("meta"):  # no random init of 1.6 B parameters that are overwritten anyway
        net = SegEarthR1(cfg)
    load_weights(net, files, pickled, device, dtype, path)
    net.reset_runtime_buffers(device)
    net.eval().requires_grad_(False)

    sha = weights_sha256(files)
    info = ModelInfo(
        name=name,
        version=sha[:12],
        tile_size=options.image_size,
        overlap=options.overlap,
        bands=3,
        weights_sha256=sha,
        license=LICENSE,
        change_native=False,
        extra={
            "family": "segearth-r1",
            "task": options.task,
            "gate_min_score": options.gate_min_score,
            "gate_min_area": options.gate_min_area,
            "change_dilate_px": options.change_dilate_px,
            "change_min_angle_deg": options.change_min_angle_deg,
            "dtype": str(dtype).removeprefix("torch."),
            "visual_tokens": cfg.num_visual_tokens,
            # Estimate of peak activation memory per tile (bf16, 1024 px; both dates double it):
            # Swin stage-1 MLP + deformable-attention samples dominate. See docs/performance.md.
            "bytes_per_tile": int(0.75 * 2**30 * (options.image_size / 1024) ** 2),
        },
    )
    return SegEarthSegmenter(net, tokenizer, prompt, info, device, options, compile=compile)
