"""Fine-tuning the SegEarth MLLM on one GPU: steps/s and peak memory, with and without LoRA and
gradient checkpointing (geoseg.train.mllm's real training step: LM CE + mask BCE/Dice + attention
supervision, AdamW, bf16 autocast on CUDA).

    .venv/bin/python benchmarks/bench_mllm_train.py --size published --device cuda
    .venv/bin/python benchmarks/bench_mllm_train.py --size tiny --device cpu --steps 2   # smoke test

`--size published` builds the full-size architecture (Phi-1.5 24 x 2048, Swin-B, Mask2Former
9 layers, 1024 px input, vocabulary 50297) with random weights directly on the device (random
init gives the same speed and memory as real weights) and a small word-level tokenizer. Each
configuration runs `--warmup` untimed steps, then `--steps` timed ones; one JSON line per
configuration (device name, torch/transformers versions, steps/s, samples/s, peak allocated
and reserved memory, trainable parameters).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

CONFIGURATIONS = (  # (finetune, gradient checkpointing)
    ("lora", False),
    ("lora", True),
    ("full", False),
    ("full", True),
)


def network_config(size: str) -> dict:
    import mllm_helpers
    import test_segearth

    if size == "tiny":
        return json.loads(json.dumps(mllm_helpers.TINY_MLLM_CONFIG))
    config = json.loads(json.dumps(test_segearth.PUBLISHED_CONFIG))
    config["model_type"] = "segearth_r1_generative"
    return config


def build(size: str, device, finetune: str, checkpointing: bool, attention: float):
    import mllm_helpers
    import torch

    from geoseg.models.segearth import LoadedNetwork
    from geoseg.models.segearth.config import parse_config
    from geoseg.models.segearth.model import SegEarthR1
    from geoseg.models.segearth.prompt import prepare_tokenizer
    from geoseg.train.mllm import parse_settings, prepare

    raw = network_config(size)
    cfg = parse_config(raw)
    tokenizer = mllm_helpers.tiny_tokenizer()
    prompt = prepare_tokenizer(tokenizer, "reasoning", cfg.vocab_size, "benchmark")
    with torch.device(device):
        net = SegEarthR1(cfg)
    net.reset_runtime_buffers(device)
    loaded = LoadedNetwork(net, tokenizer, prompt, cfg, raw, "generative", [])
    settings = parse_settings({
        "type": "segearth_r1_generative", "finetune": finetune, "gradient_checkpointing": checkpointing,
        "loss": {"attention": attention},
    })  # fmt: skip
    return prepare(loaded, settings, "segment"), cfg.options.image_size


def samples(image_size: int, batch: int):
    import torch

    from geoseg.train.mllm import MLLMSample, generative_answer

    out = []
    for i in range(batch):
        g = torch.Generator().manual_seed(i)
        image = torch.rand(3, image_size, image_size, generator=g)
        a = torch.zeros(image_size, image_size)
        b = torch.zeros(image_size, image_size)
        a[: image_size // 3, : image_size // 3] = 1
        b[image_size // 2 :, image_size // 2 :] = 1
        phrases = ["red square", "blue circle"]
        out.append(MLLMSample(image, "red square and blue circle", generative_answer(phrases), [a, b]))
    return out


def run(args, finetune: str, checkpointing: bool) -> dict:
    import torch
    import transformers

    from geoseg.train.mllm import autocast_for, step_loss

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    trainee, image_size = build(args.size, device, finetune, checkpointing, args.attention)
    params = [p for _, p in trainee.trainable()]
    opt = torch.optim.AdamW(params, lr=1e-5)
    batch = samples(image_size, args.batch)

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast_for(trainee):
            loss, _ = step_loss(trainee, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(args.warmup):
        step()
    sync()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = time.perf_counter() - started
    result = {
        "size": args.size, "finetune": finetune, "gradient_checkpointing": checkpointing,
        "attention_supervision": args.attention, "batch": args.batch, "image_size": image_size,
        "steps": args.steps, "steps_per_s": round(args.steps / seconds, 4),
        "samples_per_s": round(args.steps * args.batch / seconds, 4),
        "trainable_parameters": sum(p.numel() for p in params),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "torch": torch.__version__, "transformers": transformers.__version__,
    }  # fmt: skip
    if device.type == "cuda":
        result["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        result["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("published", "tiny"), default="published")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--attention", type=float, default=0.01, help="attention supervision weight")
    parser.add_argument("--only", help="finetune:checkpointing, e.g. lora:1 (default: all four)")
    args = parser.parse_args()
    configurations = CONFIGURATIONS
    if args.only:
        finetune, ckpt = args.only.split(":")
        configurations = ((finetune, ckpt in ("1", "true", "yes")),)
    for finetune, checkpointing in configurations:
        try:
            print(json.dumps(run(args, finetune, checkpointing)), flush=True)
            gc.collect()  # the previous configuration's network and optimizer state go
        except RuntimeError as e:  # out of memory for one configuration: report it, go on
            print(json.dumps({"finetune": finetune, "gradient_checkpointing": checkpointing, "error": str(e)[:300]}), flush=True)


if __name__ == "__main__":
    main()
