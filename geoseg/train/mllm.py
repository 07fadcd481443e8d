"""Training of the SegEarth MLLM family (`geoseg train CONFIG` with `model: {type: segearth_r1...}`).

Variants (config `model.type`) and stages (config `stage`):

    segearth_r1             stage segment          refer path: one [SEG] query from the <refer> span
    segearth_r1_generative  stage segment          SegEarth-R2 style: answer text with k [SEG] (LM CE)
    segearth_r1_bitemporal  stage change_pretrain  vision-only class-agnostic change (fusion + decoders)
                            stage change           language-guided change on the refer path

Loss: `ce` x LM cross-entropy on the answer (generative) + `bce` x BCE + `dice` x Dice per [SEG]
mask + `attention` x spatial attention supervision (0.01 by default; 0 switches it off and the
LLM keeps its fast attention). Fine-tuning: LoRA via peft on the LLM attention projections (rank,
alpha, dropout, target modules) with the mask decoder and projectors trainable, or full
fine-tuning; the Swin backbone stays frozen unless `train_vision`. Gradient checkpointing, bf16
autocast (CUDA), gradient accumulation. The final checkpoint is merged (LoRA folded in) and saved
as a plain checkpoint directory that `--model DIR` loads. See docs/models/mllm-training.md.

`MLLMTask` plugs this into the one training loop (geoseg.train.loop: budget, schedule, log,
resume, checkpoints, finished runs left as they are), so the run directory is the compact
trainer's: train_config.json, log.jsonl, checkpoints/last (trainable tensors + optimizer, for
resuming), checkpoints/final (merged).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import torch
from torch import nn

from geoseg.errors import InputError
from geoseg.models.segearth import BITEMPORAL_TYPE, GENERATIVE_TYPE, LoadedNetwork, load_network
from geoseg.models.segearth.bitemporal import SegEarthBitemporal, pair_prompt, refer_pool
from geoseg.models.segearth.checkpoint import save_checkpoint
from geoseg.models.segearth.generate import (
    IGNORE,
    IMAGE,
    GenerativeIds,
    MultimodalBatch,
    Turn,
    answer_ids,
    decode_targets,
    dialogue_ids,
    generative_ids,
    multimodal_batch,
    seg_positions,
)
from geoseg.models.segearth.lora import LoraSettings, apply_lora, merge_lora
from geoseg.models.segearth.model import ImageFeatures, SegEarthR1
from geoseg.models.segearth.preprocess import PadInfo, preprocess, to_input_frame
from geoseg.models.segearth.prompt import refer_ids
from geoseg.train.loop import STATE_NAME, decay_groups, run_training
from geoseg.train.mllm_losses import (
    attention_supervision_loss,
    bce_dice,
    lm_loss,
    mask_losses,
    token_cover,
)

if TYPE_CHECKING:
    from geoseg.train.config import TrainConfig

log = logging.getLogger(__name__)

REFER_TYPE = "segearth_r1"
MLLM_TYPES = (REFER_TYPE, GENERATIVE_TYPE, BITEMPORAL_TYPE)
VARIANT_OF = {REFER_TYPE: "refer", GENERATIVE_TYPE: "generative", BITEMPORAL_TYPE: "bitemporal"}
STAGES_OF = {
    REFER_TYPE: ("segment",),
    GENERATIVE_TYPE: ("segment",),
    BITEMPORAL_TYPE: ("change_pretrain", "change"),
}
# Trained besides the adapters (LoRA) -- SegEarth-R2 trains lm_head, the pixel decoder, the
# predictor and the [SEG] projector; the [SEG] embedding row lives in embed_tokens.
DEFAULT_TRAIN_MODULES = (
    "lm_head", "model.embed_tokens", "model.mm_projector", "pixel_decoder", "predictor",
    "text_projector", "origin_SEG_token_projector", "local_project", "SEG_token_projector",
    "d_layers", "temporal_fusion", "change_query",
)  # fmt: skip
STAGE1_MODULES = ("temporal_fusion", "pixel_decoder", "predictor", "change_query")


# ------------------------------------------------------------------ settings
@dataclass(frozen=True)
class LossSettings:
    ce: float = 1.0
    bce: float = 2.0
    dice: float = 0.5
    attention: float = 0.01  # SegEarth-R2's weight; 0 disables the loss


@dataclass(frozen=True)
class MLLMSettings:
    """The `model:` section of a training config for the SegEarth family."""

    type: str = GENERATIVE_TYPE
    finetune: str = "lora"  # lora | full
    lora: LoraSettings = field(default_factory=LoraSettings)
    train_modules: tuple[str, ...] = DEFAULT_TRAIN_MODULES
    train_vision: bool = False
    loss: LossSettings = field(default_factory=LossSettings)
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 elsewhere) | bf16 | fp32
    grad_accum: int = 1
    gradient_checkpointing: bool = False
    max_targets: int = 2  # generative: join up to this many queries of an image in one instruction
    device: str = "auto"
    save_dtype: str | None = None  # e.g. "bfloat16" for the final checkpoint; default: as trained
    task: str | None = None  # prompt wording override (referring | reasoning)

    @property
    def variant(self) -> str:
        return VARIANT_OF[self.type]


def _section(cls, raw: dict, where: str):
    raw = dict(raw or {})
    known = {f.name for f in fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise InputError(f"{where}: unknown option(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
    return raw


def parse_settings(model: dict, where: str = "config [model]") -> MLLMSettings:
    raw = _section(MLLMSettings, model, where)
    try:
        if "lora" in raw:
            lora = _section(LoraSettings, raw["lora"], f"{where}.lora")
            if "target_modules" in lora:
                lora["target_modules"] = tuple(lora["target_modules"])
            raw["lora"] = LoraSettings(**lora)
        if "loss" in raw:
            raw["loss"] = LossSettings(**_section(LossSettings, raw["loss"], f"{where}.loss"))
        if "train_modules" in raw:
            raw["train_modules"] = tuple(raw["train_modules"])
        settings = MLLMSettings(**raw)
    except (TypeError, ValueError) as e:
        raise InputError(f"{where}: {e}") from None
    if settings.type not in MLLM_TYPES:
        raise InputError(f"{where}: type must be one of {', '.join(MLLM_TYPES)}, not {settings.type!r}")
    if settings.finetune not in ("lora", "full"):
        raise InputError(f"{where}: finetune must be 'lora' or 'full', not {settings.finetune!r}")
    if settings.precision not in ("auto", "bf16", "fp32"):
        raise InputError(f"{where}: precision must be auto, bf16 or fp32")
    if settings.grad_accum < 1:
        raise InputError(f"{where}: grad_accum must be >= 1")
    return settings


# ------------------------------------------------------------------ samples
@dataclass
class MLLMSample:
    """One training example. `masks` has one H x W mask per [SEG] of `answer` (in order); the refer
    and bi-temporal variants use exactly one. `change` is the class-agnostic change mask (stage 1)."""

    image: torch.Tensor  # 3 x H x W in [0, 1] (the after date for change)
    instruction: str = ""
    answer: str = ""
    masks: list[torch.Tensor] = field(default_factory=list)
    before: torch.Tensor | None = None
    change: torch.Tensor | None = None
    history: tuple[Turn, ...] = ()


def generative_answer(phrases: Sequence[str]) -> str:
    """The training answer for the present targets of an instruction (none: a plain refusal)."""
    if not phrases:
        return "There is no such target in this image."
    return " and ".join(f"<p>{p}</p>[SEG]" for p in phrases) + "."


def samples_from_batch(batch, settings: MLLMSettings, rng: random.Random) -> list[MLLMSample]:
    """geoseg.train.data.Batch (the compact trainer's format: synth or manifest) -> MLLM samples.

    Generative: the queries of an image are joined into one instruction ("a and b") with up to
    `max_targets` targets, and an absent target teaches an answer without [SEG]."""
    by_image: dict[int, list[tuple[str, torch.Tensor]]] = {}
    for query, index, mask in zip(batch.queries, batch.image_index.tolist(), batch.masks, strict=True):
        by_image.setdefault(index, []).append((query, mask))
    out = []
    for index, pairs in by_image.items():
        image = batch.images[index]
        before = batch.before[index] if batch.before is not None else None
        change = batch.change_masks[index] if batch.change_masks is not None else None
        if settings.variant != "generative":
            for query, mask in pairs:
                out.append(MLLMSample(image, query, "", [mask], before, change))
            continue
        rng.shuffle(pairs)
        while pairs:
            take = pairs[: rng.randint(1, max(1, settings.max_targets))]
            pairs = pairs[len(take) :]
            present = [(q, m) for q, m in take if float(m.sum()) > 0]
            out.append(
                MLLMSample(
                    image,
                    " and ".join(q for q, _ in take),
                    generative_answer([q for q, _ in present]),
                    [m for _, m in present],
                    before,
                    change,
                )
            )
    return out


# ------------------------------------------------------------------ the model under training
@dataclass
class Trainee:
    """A network prepared for training: LoRA wrapped or not, with its prompts and settings."""

    net: SegEarthR1
    loaded: LoadedNetwork
    settings: MLLMSettings
    stage: str
    ids: GenerativeIds
    lora: object | None = None  # peft LoraModel while adapters are attached
    attention_maps: list[torch.Tensor] = field(default_factory=list)
    capture: bool = False

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    @property
    def device(self) -> torch.device:
        return self.net.model.embed_tokens.weight.device

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.net.named_parameters() if p.requires_grad]


def prepare(loaded: LoadedNetwork, settings: MLLMSettings, stage: str) -> Trainee:
    """Freeze, attach LoRA, unfreeze the trained modules, enable gradient checkpointing."""
    net = loaded.net
    ids = generative_ids(loaded.tokenizer, loaded.prompt.seg_id, loaded.prompt.pad_id, loaded.cfg.options.task, "init_from")
    trainee = Trainee(net, loaded, settings, stage, ids)
    net.requires_grad_(False)
    if stage == "change_pretrain":  # vision-only: the LLM is not used at all
        _unfreeze(net, STAGE1_MODULES)
    elif settings.finetune == "lora":
        trainee.lora = apply_lora(net, settings.lora)
        _unfreeze(net, settings.train_modules)
    else:
        net.requires_grad_(True)
    if not settings.train_vision:
        net.model.vision_tower.requires_grad_(False)
    if settings.gradient_checkpointing and stage != "change_pretrain":
        enable = getattr(net.model, "activation_checkpointing_enable", None)
        if enable is not None:  # transformers >= 5
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            net.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if settings.loss.attention > 0 and stage != "change_pretrain":
        net.model.set_attn_implementation("eager")  # sdpa does not return attention weights
        for layer in net.model.layers:
            cast(nn.Module, layer.self_attn).register_forward_hook(_attention_hook(trainee))
    net.train()
    net.vision_tower.train(settings.train_vision)
    return trainee


def _unfreeze(net: nn.Module, prefixes: Sequence[str]) -> None:
    for name, p in net.named_parameters():
        if name.startswith(tuple(prefixes)) and ".lora_" not in name:
            p.requires_grad_(True)


def _attention_hook(trainee: Trainee) -> Callable:
    def hook(module, args, output):
        # Only the first forward of a step is recorded; gradient checkpointing re-runs layers
        # during backward and those repeats must not pile up.
        if trainee.capture and output[1] is not None:
            trainee.attention_maps.append(output[1])

    return hook


def autocast_for(trainee: Trainee):
    p = trainee.settings.precision
    if trainee.device.type == "cuda" and p in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if p == "bf16":
        return torch.autocast(trainee.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ------------------------------------------------------------------ forward passes
def encode_for_training(trainee: Trainee, images: torch.Tensor, before: torch.Tensor | None = None) -> tuple[ImageFeatures, PadInfo]:
    """Image side with the backbone under no_grad when it is frozen (it is the costliest part)."""
    net = trainee.net
    x, pad = preprocess(images.to(trainee.device), net.cfg.options.image_size)
    if before is not None:
        xb, _ = preprocess(before.to(trainee.device), net.cfg.options.image_size)
        x = torch.cat([xb, x], 0)
    with torch.set_grad_enabled(trainee.settings.train_vision and torch.is_grad_enabled()):
        levels = net.vision_tower(x)
    if before is not None:  # a pair: the bi-temporal network
        return cast(SegEarthBitemporal, net).features_from_pair_levels(levels), pad
    return net.features_from_levels(levels), pad


def _present(tensors: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
    """The tensors of a change batch's optional fields (every sample of such a batch has them)."""
    assert all(t is not None for t in tensors)
    return [t for t in tensors if t is not None]


def _stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1:
        raise InputError(f"training images of one batch must share a size, got {sorted(shapes)}")
    return torch.stack(list(tensors))


def _frame_masks(masks: Sequence[torch.Tensor], pad: PadInfo, device) -> torch.Tensor:
    if not masks:
        return torch.zeros(0, pad.size, pad.size, device=device)
    return to_input_frame(torch.stack([m.float() for m in masks]).to(device), pad)


def _labels(batch: MultimodalBatch) -> torch.Tensor:
    positions = torch.arange(batch.ids.shape[1], device=batch.ids.device)[None]
    labels = batch.ids.clone()
    labels[(positions < batch.answer_start[:, None]) | (labels == IMAGE)] = IGNORE
    return labels


def _seg_attention(trainee: Trainee, batch: MultimodalBatch, sample: torch.Tensor, pos: torch.Tensor, image_slot: int, tokens: int) -> torch.Tensor:
    """K x T: attention of each [SEG] to its image's visual tokens, averaged over layers and heads."""
    # each map: N x heads x L x L; keep only the [SEG] rows -> layers x K x heads x L
    rows = torch.stack([m[sample, :, pos] for m in trainee.attention_maps]).float().mean(dim=(0, 2))
    starts = torch.tensor([batch.image_positions[i][image_slot] for i in sample.tolist()], device=rows.device)
    cols = starts[:, None] + torch.arange(tokens, device=rows.device)[None]
    return rows.gather(1, cols)


def step_loss(trainee: Trainee, samples: Sequence[MLLMSample]) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss of one micro-batch and its parts (floats, for the log)."""
    w = trainee.settings.loss
    net = trainee.net
    images = _stack([s.image for s in samples])
    if trainee.stage == "change_pretrain":
        feats, pad = encode_for_training(trainee, images, _stack(_present([s.before for s in samples])))
        target = _frame_masks(_present([s.change for s in samples]), pad, trainee.device)
        loss = bce_dice(cast(SegEarthBitemporal, net).change_logits(feats), target)  # change stages train it
        return loss, {"change": float(loss.detach())}
    before = _stack(_present([s.before for s in samples])) if trainee.settings.variant == "bitemporal" else None
    feats, pad = encode_for_training(trainee, images, before)
    tokens = net.cfg.num_visual_tokens
    if trainee.settings.variant == "bitemporal":
        visual = [[v[:tokens], v[tokens:]] for v in feats.visual_tokens]
        prompt = pair_prompt(trainee.tokenizer, trainee.loaded.prompt)
        prompts = [prompt] * len(samples)
        answers = [refer_ids(trainee.tokenizer, s.instruction, trainee.loaded.prompt) for s in samples]
        image_slot = 1  # attention supervision looks at the after date
    elif trainee.settings.variant == "refer":
        visual = [[v] for v in feats.visual_tokens]
        p = trainee.loaded.prompt
        prompts = [p.before_image + [IMAGE] + p.after_image] * len(samples)
        answers = [refer_ids(trainee.tokenizer, s.instruction, p) for s in samples]
        image_slot = 0
    else:
        visual = [[v] for v in feats.visual_tokens]
        prompts = [dialogue_ids(trainee.tokenizer, trainee.ids, s.instruction, s.history) for s in samples]
        answers = [answer_ids(trainee.tokenizer, s.answer, trainee.ids.eos_id) for s in samples]
        image_slot = 0
    batch = multimodal_batch(net, prompts, visual, answers)
    trainee.attention_maps.clear()
    trainee.capture = w.attention > 0
    try:
        hidden = net.model(inputs_embeds=batch.embeds, attention_mask=batch.attention.long(), use_cache=False).last_hidden_state
    finally:
        trainee.capture = False
    sample, pos = seg_positions(batch, trainee.ids.seg_id)
    parts: dict[str, torch.Tensor] = {}
    if trainee.settings.variant == "generative":
        parts["ce"] = lm_loss(net.lm_head(hidden), _labels(batch))
        states = hidden[sample, pos]
        wanted = [len(s.masks) for s in samples]
        found = torch.bincount(sample, minlength=len(samples)).tolist()
        if wanted != found:
            raise InputError(f"training answers must hold one [SEG] per mask: masks {wanted}, [SEG] {found}")
        masks = [m for s in samples for m in s.masks]
        logits = decode_targets(net, states, feats, sample)
    else:
        pooled = refer_pool(hidden, batch)
        query = net.seg_query_embedding(pooled.to(feats.res5_tokens.dtype), feats)
        logits = net.predictor(query, feats.multi_scale, feats.mask_features)
        masks = [s.masks[0] for s in samples]
    target = _frame_masks(masks, pad, trainee.device)
    parts["bce"], parts["dice"] = mask_losses(logits, target)
    if w.attention > 0 and sample.numel():
        grid = math.isqrt(tokens)
        attention = _seg_attention(trainee, batch, sample, pos, image_slot, tokens)
        cover = token_cover(target if trainee.settings.variant == "generative" else target[sample], grid)
        parts["attention"] = attention_supervision_loss(attention, cover)
    trainee.attention_maps.clear()
    total = sum(getattr(w, k) * v for k, v in parts.items())
    return total, {k: float(v.detach()) for k, v in parts.items()}


# ------------------------------------------------------------------ saving
def merge_in_place(trainee: Trainee) -> None:
    """Fold the LoRA adapters into the base weights (end of training); no-op without LoRA."""
    if trainee.lora is not None:
        trainee.net = cast(SegEarthR1, merge_lora(trainee.lora))  # the plain network again
        trainee.lora = None


def save_merged(trainee: Trainee, directory: Path, extra: dict | None = None) -> Path:
    """A plain checkpoint directory for `--model DIR` (config.json + safetensors + tokenizer).
    LoRA adapters are merged first (in place: call this at the end of training)."""
    merge_in_place(trainee)
    config = dict(trainee.loaded.raw_config)
    config["model_type"] = trainee.settings.type
    geoseg_section = dict(config.get("geoseg") or {})
    geoseg_section["task"] = trainee.loaded.cfg.options.task
    config["geoseg"] = geoseg_section
    if extra:
        config["geoseg_training"] = extra
    dtype = getattr(torch, trainee.settings.save_dtype) if trainee.settings.save_dtype else None
    return save_checkpoint(trainee.net.state_dict(), config, trainee.tokenizer, directory, dtype)


# ------------------------------------------------------------------ the training task
def load_trainee(config, settings: MLLMSettings) -> Trainee:
    if not config.init_from:
        raise InputError(
            "MLLM training needs init_from: a SegEarth checkpoint directory (config.json, "
            "safetensors, tokenizer files), e.g. a downloaded earth-insights/SegEarth-R1-RRSIS-D"
        )
    if config.stage not in STAGES_OF[settings.type]:
        raise InputError(
            f"stage {config.stage!r} does not apply to model type {settings.type} "
            f"(use {' or '.join(STAGES_OF[settings.type])})"
        )
    from geoseg.models.registry import resolve_device

    device = resolve_device(settings.device)
    loaded = load_network(
        config.init_from, variant=settings.variant, device=device, dtype=torch.float32, task=settings.task
    )
    return prepare(loaded, settings, config.stage)


class SampleSource(Protocol):
    """Where MLLM training samples come from (`BatchSamples`, or a test's fixed list)."""

    def next_samples(self) -> list[MLLMSample]: ...


class BatchSamples:
    """MLLM samples from the compact trainer's batch source (synth or JSONL manifest)."""

    def __init__(self, config, settings: MLLMSettings, start_step: int):
        from geoseg.train.data import make_batch_source

        self.source = make_batch_source(config, start_step=start_step)
        self.settings = settings
        self.rng = random.Random(config.data.seed + start_step)

    def next_samples(self) -> list[MLLMSample]:
        return samples_from_batch(self.source.next_batch(), self.settings, self.rng)

    def close(self) -> None:
        self.source.close()


class MLLMTask:
    """A SegEarth MLLM (config `model.type`) for the one training loop (geoseg.train.loop).

    checkpoints/last holds trainer_state.pt only: the trainable tensors (adapters, trained modules)
    beside the loop's optimizer, schedule, step and seconds; the frozen rest comes from init_from."""

    def __init__(self, config: TrainConfig, source: SampleSource | None = None) -> None:
        self.config = config
        self.settings = parse_settings(config.model)
        self.label = f"{self.settings.type}/{config.stage}"
        self.source = source  # given: the caller's (left open); None: the config's data, opened here
        self._own_source: BatchSamples | None = None
        self.trainee: Trainee | None = None

    def _built(self) -> Trainee:
        assert self.trainee is not None, "build() runs first"
        return self.trainee

    def build(self) -> list[dict[str, Any]]:
        self.trainee = load_trainee(self.config, self.settings)
        named = self.trainee.trainable()
        return decay_groups(named, self.config.weight_decay, lambda _name, p: p.ndim <= 1)

    def load_last(self, directory: Path, state: dict[str, Any]) -> None:
        params = dict(self._built().net.named_parameters())
        unknown = [n for n in state["trainable"] if n not in params]
        if unknown:
            raise InputError(f"{directory}: the saved training state does not fit this config ({unknown[0]} ...); start a new run_dir")
        with torch.no_grad():
            for n, t in state["trainable"].items():
                params[n].copy_(t)

    def save_last(self, directory: Path, state: dict[str, Any]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {n: p.detach().cpu() for n, p in self._built().trainable()}
        tmp = directory / (STATE_NAME + ".tmp")
        torch.save({"trainable": tensors, **state}, tmp)
        tmp.replace(directory / STATE_NAME)

    def open_batches(self, start_step: int) -> None:
        if self.source is None:
            self._own_source = BatchSamples(self.config, self.settings, start_step)

    def accumulate(self) -> tuple[float, dict[str, float]]:
        source = self.source or self._own_source
        assert source is not None, "open_batches() runs first"
        trainee = self._built()
        accum = self.settings.grad_accum
        totals: dict[str, float] = {}
        for _ in range(accum):
            with autocast_for(trainee):
                loss, parts = step_loss(trainee, source.next_samples())
            (loss / accum).backward()
            for k, v in {"loss": float(loss.detach()), **parts}.items():
                totals[k] = totals.get(k, 0.0) + v / accum
        return totals.pop("loss"), totals

    def after_step(self) -> None:
        pass  # no moving average of the LoRA weights

    def close_batches(self) -> None:
        if self._own_source is not None:
            self._own_source.close()
            self._own_source = None

    def save_final(self, directory: Path, step: int) -> Path:
        trainee = self._built()
        trainee.net.eval()
        extra = {"steps": step, "stage": self.config.stage, "finetune": self.settings.finetune}
        return save_merged(trainee, directory, extra)

    def export(self, final: Path) -> None:
        assert self.config.export_to is not None  # the loop exports only when it is set
        export = Path(self.config.export_to)
        shutil.rmtree(export, ignore_errors=True)
        shutil.copytree(final, export)


def train_mllm(config: TrainConfig, *, progress: bool = True, source: SampleSource | None = None) -> Path:
    """Run (or resume) MLLM training from a TrainConfig; returns the final (merged) checkpoint.

    `source` (optional) has `next_samples() -> list[MLLMSample]`; by default batches come from
    the config's `data` section like the compact model's."""
    return run_training(MLLMTask(config, source), config, progress=progress)
