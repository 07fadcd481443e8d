"""SegEarth-R1-compatible MLLM segmenter (Swin-B + Phi-1.5 + Mask2Former), loading the published
checkpoints (`earth-insights/SegEarth-R1-RRSIS-D`, `earth-insights/SegEarth-R1-EarthReason`), and the
variants geoseg trains from them:

    model_type "llava_phi" / "segearth_r1"  -> SegEarthSegmenter   (one [SEG] from the refer span)
    "segearth_r1_generative"                -> GenerativeSegmenter (SegEarth-R2-style k [SEG] answers)
    "segearth_r1_bitemporal"                -> BitemporalSegmenter (MTRefSeg-style, change-native)

Entry point: `load_segearth_segmenter(path, device=..., allow_pickle=False)`; the registry dispatches
those model types here. See docs/models/segearth-r1.md and docs/models/mllm-training.md.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from geoseg.errors import ModelLoadError
from geoseg.models.base import ModelInfo
from geoseg.models.segearth.bitemporal import MODEL_TYPE as BITEMPORAL_TYPE
from geoseg.models.segearth.bitemporal import BitemporalSegmenter, SegEarthBitemporal
from geoseg.models.segearth.checkpoint import load_weights, weight_files, weights_sha256
from geoseg.models.segearth.config import SegEarthConfig, parse_config
from geoseg.models.segearth.generate import GenerativeSegmenter, generative_ids
from geoseg.models.segearth.model import SegEarthR1
from geoseg.models.segearth.preprocess import PadInfo, preprocess, unpad
from geoseg.models.segearth.prompt import PromptIds, guess_task, prepare_tokenizer
from geoseg.models.segearth.segmenter import EncodedTiles, SegEarthSegmenter, gate

__all__ = [
    "BITEMPORAL_TYPE",
    "GENERATIVE_TYPE",
    "MODEL_TYPES",
    "BitemporalSegmenter",
    "EncodedTiles",
    "GenerativeSegmenter",
    "LoadedNetwork",
    "PadInfo",
    "SegEarthSegmenter",
    "gate",
    "load_network",
    "load_segearth_segmenter",
    "preprocess",
    "read_config",
    "unpad",
]

LICENSE = "Apache-2.0"
GENERATIVE_TYPE = "segearth_r1_generative"
# model_type -> variant
MODEL_TYPES = {
    "llava_phi": "refer",
    "segearth_r1": "refer",
    GENERATIVE_TYPE: "generative",
    BITEMPORAL_TYPE: "bitemporal",
}


def read_raw_config(path: Path) -> dict:
    config_file = Path(path) / "config.json"
    try:
        return json.loads(config_file.read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{config_file} is not readable JSON: {e}") from None


def read_config(path: Path) -> SegEarthConfig:
    return parse_config(read_raw_config(path), where=str(Path(path) / "config.json"))


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


@dataclass
class LoadedNetwork:
    """A network with its tokenizer, as read from a checkpoint directory."""

    net: SegEarthR1
    tokenizer: object
    prompt: PromptIds
    cfg: SegEarthConfig
    raw_config: dict  # config.json as read (what a saved checkpoint writes back)
    variant: str  # refer | generative | bitemporal
    files: list[Path]


def variant_of(raw: dict, where: str) -> str:
    model_type = raw.get("model_type", "llava_phi")
    if model_type not in MODEL_TYPES:
        raise ModelLoadError(f"{where}: model_type {model_type!r} is not a SegEarth variant ({', '.join(MODEL_TYPES)})")
    return MODEL_TYPES[model_type]


def build_network(cfg: SegEarthConfig, variant: str) -> SegEarthR1:
    if variant == "bitemporal":
        return SegEarthBitemporal(cfg, fusion=cfg.options.fusion)
    return SegEarthR1(cfg)


def load_network(
    path: str | Path,
    *,
    variant: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    allow_pickle: bool = False,
    task: str | None = None,
) -> LoadedNetwork:
    """Build the network of `variant` (default: the checkpoint's own) and load the checkpoint.

    Loading a checkpoint into another variant (a SegEarth-R1 checkpoint into the bi-temporal
    network) keeps the fresh initialisation of the tensors that variant adds; every tensor the
    checkpoint has must still fit."""
    path = Path(path)
    device = torch.device(device)
    raw = read_raw_config(path)
    cfg = parse_config(raw, where=str(path / "config.json"))
    own = variant_of(raw, str(path / "config.json"))
    variant = variant or own
    options = dataclasses.replace(cfg.options, task=task or cfg.options.task)
    default_task = "reasoning" if variant == "generative" else guess_task(checkpoint_name(path))
    task_name = options.task or default_task
    cfg = dataclasses.replace(cfg, options=dataclasses.replace(options, task=task_name))
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    files, pickled = weight_files(path, allow_pickle)
    tokenizer = _load_tokenizer(path)
    prompt = prepare_tokenizer(tokenizer, task_name, cfg.vocab_size, str(path))
    fresh = ("temporal_fusion.", "change_query") if variant == "bitemporal" and own != "bitemporal" else ()
    if fresh:  # tensors the checkpoint lacks keep a real initialisation
        net = build_network(cfg, variant)
        load_weights(net, files, pickled, device, dtype, path, fresh_prefixes=fresh)
        net.to(device=device, dtype=dtype)
    else:  # no random init of 1.6 B parameters that are overwritten anyway
        with torch.device("meta"):
            net = build_network(cfg, variant)
        load_weights(net, files, pickled, device, dtype, path)
    net.reset_runtime_buffers(device)
    return LoadedNetwork(net, tokenizer, prompt, cfg, raw, variant, files)


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
    variant: str | None = None,
):
    """Build the network from `path/config.json`, load its weights and tokenizer.

    dtype: parameter dtype (default bfloat16 on CUDA, float32 elsewhere). task: "referring" or
    "reasoning" prompt wording (default: config `geoseg.task`, else guessed from the name).
    gate_*: empty-tile gating thresholds (default: config `geoseg.gate_*`, else GeosegOptions).
    variant: "generative" runs a SegEarth-R1 checkpoint generatively (default: its model_type's).
    """
    path = Path(path)
    device = torch.device(device)
    loaded = load_network(
        path, variant=variant, device=device, dtype=dtype, allow_pickle=allow_pickle, task=task
    )
    net, cfg = loaded.net, loaded.cfg
    overrides: dict[str, Any] = {
        k: v
        for k, v in {"gate_min_score": gate_min_score, "gate_min_area": gate_min_area}.items()
        if v is not None
    }
    options = dataclasses.replace(cfg.options, **overrides)
    net.eval().requires_grad_(False)
    dtype = net.model.embed_tokens.weight.dtype
    name = checkpoint_name(path)
    sha = weights_sha256(loaded.files)
    info = ModelInfo(
        name=name,
        version=sha[:12],
        tile_size=options.image_size,
        overlap=options.overlap,
        bands=3,
        weights_sha256=sha,
        license=LICENSE,
        gsd_range=options.gsd_range,
        extra={
            "family": "segearth-r1",
            "variant": loaded.variant,
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
    if loaded.variant == "bitemporal":
        assert isinstance(net, SegEarthBitemporal)  # load_network builds the variant it names
        return BitemporalSegmenter(net, loaded.tokenizer, loaded.prompt, info, device, options)
    if loaded.variant == "generative":
        ids = generative_ids(
            loaded.tokenizer, loaded.prompt.seg_id, loaded.prompt.pad_id, options.task, str(path)
        )
        return GenerativeSegmenter(
            net, loaded.tokenizer, loaded.prompt, info, device, options, compile=compile, ids=ids
        )
    return SegEarthSegmenter(net, loaded.tokenizer, loaded.prompt, info, device, options, compile=compile)
