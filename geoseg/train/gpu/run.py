"""Train the compact model on a GPU from a pack (geoseg.train.gpu.pack), checkpointing to --out.

    python3 -m geoseg.train.gpu.run --pack .gpu-pack --out $OUT --minutes 8

(on the lent machine, from the repository root; `.gpu-pack` named in the call's carry list; the
full recipe is in docs/models/compact.md, "Training on a GPU"). Imports torch, numpy, safetensors
and geoseg modules that import nothing else: no rasterio, GDAL, shapely, scipy, PIL or MiniLM
package (tests/test_gpu_pack.py runs it with those imports blocked).

What a step does is what `geoseg train` does (geoseg.train.trainer and .loop): B images x their
K queries, the frozen MiniLM's token features (precomputed in the pack), `compact_loss` with the
config's weights, AdamW with decay on weights only, gradient clipping, the loop's schedule
(`lr_factor`: linear warm-up then cosine to 5 % following whichever budget, --steps or
--minutes, is nearer its end). What differs:
- the batches come from the pack: the crops a CPU run would have drawn, each shown again under a
  random flip / 90-degree rotation (drawn on the GPU) once the pack is used up;
- bf16 autocast on CUDA (the loss in fp32), fp32 on a CPU; channels-last images and weights;
- a larger batch (--batch-size, default 64 images) at a learning rate scaled from the config's by
  sqrt(batch / config batch) unless --lr is given;
- the last --holdout images of the pack are never trained on: their loss (eval mode, no
  augmentation) is logged at each checkpoint, an over-fitting alarm for a pack shown many times.

--out holds, after every checkpoint (every --checkpoint-minutes and at the end):
    config.json, model.safetensors   the model, loadable with CompactModel.from_pretrained
    optimizer.safetensors            AdamW moments (bf16, to stay small enough to carry back)
    state.json                       step, training seconds, settings, pack id; "finished" at the end
    log.jsonl                        one line per --log-every steps (appended across resumes)
A run started on an --out (or with --resume DIR) that holds state.json continues from its step;
--minutes and --steps count the whole run, resumes included, as time_limit_min and steps do.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import cast

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from geoseg.models.compact.config import CompactConfig
from geoseg.models.compact.model import WEIGHTS_NAME, CompactModel, ModelOutput
from geoseg.models.compact.text import TextFeatures
from geoseg.train.gpu.codec import decode_images, decode_masks
from geoseg.train.loop import lr_factor  # the schedule geoseg train uses
from geoseg.train.losses import LossWeights, compact_loss

STATE = "state.json"
OPTIMIZER = "optimizer.safetensors"
LOG = "log.jsonl"


# ---- the pack on the device ---------------------------------------------------------------------
class PackData:
    """Every crop, mask and query feature of a pack, decoded once onto `device`."""

    def __init__(self, folder: Path, device: torch.device) -> None:
        self.folder = folder
        self.meta = json.loads((folder / "pack.json").read_text())
        if not str(self.meta.get("format", "")).startswith("geoseg-gpu-pack/"):
            raise SystemExit(f"{folder}: not a GPU pack (pack.json has no geoseg-gpu-pack format)")
        t = int(self.meta["tile"])
        q = int(self.meta["quality"])
        arrays = np.load(folder / "samples.npz")
        images, masks, valid, pair_image, pair_query = [], [], [], [], []
        base = 0
        for i, chunk in enumerate(self.meta["chunks"]):
            n, m = int(chunk["images"]), int(chunk["pairs"])
            images.append(decode_images(arrays[f"images_{i}"].tobytes(), n, (t, t), q, device))
            masks.append(decode_masks(arrays[f"masks_{i}"].tobytes(), m, (t, t), device))
            valid.append(decode_masks(arrays[f"valid_{i}"].tobytes(), m, (t, t), device))
            pair_image.append(arrays[f"pair_image_{i}"].astype(np.int64) + base)
            pair_query.append(arrays[f"pair_query_{i}"].astype(np.int64))
            base += n
        self.images = torch.cat(images)  # N x 3 x t x t uint8
        self.masks = torch.cat(masks)  # M x t x t bool
        self.valid = torch.cat(valid)
        pair_images = np.concatenate(pair_image)
        if np.any(np.diff(pair_images) < 0):
            raise SystemExit(f"{folder}: pairs are not in image order")
        self.pair_query = torch.from_numpy(np.concatenate(pair_query)).to(device)
        self.pair_start = np.searchsorted(pair_images, np.arange(len(self.images) + 1))  # CSR: image -> pairs
        # query features, padded to max_tokens as TextEncoder.encode pads them
        tokens, offsets = arrays["text_tokens"], arrays["text_offsets"]
        width = int(self.meta["text_encoder"]["max_tokens"])
        n_queries = len(offsets) - 1
        table = torch.zeros(n_queries, width, tokens.shape[1])
        mask = torch.zeros(n_queries, width, dtype=torch.bool)
        for j in range(n_queries):
            rows = torch.from_numpy(tokens[offsets[j] : offsets[j + 1]].astype(np.float32))
            table[j, : len(rows)] = rows
            mask[j, : len(rows)] = True
        self.text_tokens, self.text_mask = table.to(device), mask.to(device)
        self.device = device

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, ids: np.ndarray, codes: torch.Tensor | None):
        """(images B x 3 x t x t float, TextFeatures, image_index, masks, valid) of the images `ids`,
        each under its dihedral transform `codes[b]` (0-7: rotations k = code % 4, flipped when
        code >= 4; None: as stored)."""
        pairs = np.concatenate([np.arange(self.pair_start[i], self.pair_start[i + 1]) for i in ids])
        local = np.repeat(np.arange(len(ids)), [self.pair_start[i + 1] - self.pair_start[i] for i in ids])
        pairs_t = torch.from_numpy(pairs).to(self.device)
        local_t = torch.from_numpy(local).to(self.device)
        images = self.images[torch.from_numpy(np.asarray(ids)).to(self.device)]
        masks, valid = self.masks[pairs_t], self.valid[pairs_t]
        if codes is not None:
            pair_codes = codes[local_t]
            for code in range(8):
                images = _dihedral(images, codes == code, code)
                masks = _dihedral(masks, pair_codes == code, code)
                valid = _dihedral(valid, pair_codes == code, code)
        q = self.pair_query[pairs_t]
        text = TextFeatures(self.text_tokens[q], self.text_mask[q])
        images = images.float().div_(255).contiguous(memory_format=torch.channels_last)
        return images, text, local_t, masks.float(), valid.float()


def _dihedral(x: torch.Tensor, select: torch.Tensor, code: int) -> torch.Tensor:
    if code == 0 or not bool(select.any()):
        return x
    part = torch.rot90(x[select], code % 4, dims=(-2, -1))
    if code >= 4:
        part = part.flip(-1)
    x = x.clone()
    x[select] = part
    return x


# ---- model, optimizer, schedule ------------------------------------------------------------------
def build_model(pack: PackData, init: Path | None) -> tuple[CompactModel, int]:
    """The pack's model config, with every tensor of `init` whose name and shape fit (as
    geoseg.train.trainer.init_weights); returns (model, tensors copied)."""
    model = CompactModel(CompactConfig.from_dict(pack.meta["model_config"]))
    if init is None:
        return model, 0
    source = load_file(str(init / WEIGHTS_NAME))
    own = model.state_dict()
    fitting = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
    if not fitting:
        raise SystemExit(f"{init}: no tensor fits the pack's model config")
    model.load_state_dict(fitting, strict=False)
    return model, len(fitting)


def make_optimizer(model: CompactModel, lr: float, weight_decay: float) -> torch.optim.AdamW:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".scale") else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


# ---- checkpoints ---------------------------------------------------------------------------------
def _replace(write, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def save_checkpoint(out: Path, model: CompactModel, opt: torch.optim.AdamW, state: dict) -> None:
    """Weights, then optimizer moments, then state.json (last: it names the step the others hold)."""
    out.mkdir(parents=True, exist_ok=True)
    tag = {"step": str(state["step"])}
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    config = json.dumps(model.config.to_dict(), indent=2, sort_keys=True) + "\n"  # as CompactConfig.save writes it
    _replace(lambda p: p.write_text(config), out / "config.json")
    _replace(lambda p: save_file(weights, str(p), metadata={"format": "pt", "model_type": model.config.model_type,
                                                          **tag}), out / WEIGHTS_NAME)
    moments = {}
    for i, s in opt.state_dict()["state"].items():
        moments[f"{i}.exp_avg"] = s["exp_avg"].detach().to(torch.bfloat16).cpu().contiguous()
        moments[f"{i}.exp_avg_sq"] = s["exp_avg_sq"].detach().to(torch.bfloat16).cpu().contiguous()
        moments[f"{i}.step"] = torch.as_tensor(s["step"], dtype=torch.float32).reshape(1).cpu()
    _replace(lambda p: save_file(moments, str(p), metadata=tag), out / OPTIMIZER)
    _replace(lambda p: p.write_text(json.dumps(state, indent=1) + "\n"), out / STATE)


def load_checkpoint(folder: Path, model: CompactModel, opt: torch.optim.AdamW, device: torch.device) -> dict:
    state = json.loads((folder / STATE).read_text())
    weights = load_file(str(folder / WEIGHTS_NAME))
    model.load_state_dict(weights, strict=True)
    from safetensors import safe_open

    with safe_open(str(folder / WEIGHTS_NAME), "pt") as f:
        held = (f.metadata() or {}).get("step")
    if held is not None and int(held) != int(state["step"]):
        print(f"warning: {folder / WEIGHTS_NAME} holds step {held}, state.json step {state['step']}; "
              "going on from the weights' step with fresh optimizer moments", file=sys.stderr)
        state["step"] = int(held)
        return state
    if (folder / OPTIMIZER).is_file():
        moments = load_file(str(folder / OPTIMIZER))
        current = opt.state_dict()
        params = [p for g in opt.param_groups for p in g["params"]]
        restored: dict[int, dict[str, torch.Tensor]] = {}
        fits = True
        for i, p in enumerate(params):
            if f"{i}.exp_avg" not in moments or moments[f"{i}.exp_avg"].shape != p.shape:
                fits = False
                break
            restored[i] = {"step": moments[f"{i}.step"].reshape(()).float(),
                           "exp_avg": moments[f"{i}.exp_avg"].to(device, torch.float32),
                           "exp_avg_sq": moments[f"{i}.exp_avg_sq"].to(device, torch.float32)}
        if fits:
            opt.load_state_dict({"state": restored, "param_groups": current["param_groups"]})
        else:
            print(f"warning: {folder / OPTIMIZER} does not fit the model; fresh optimizer moments", file=sys.stderr)
    return state


# ---- the loop ------------------------------------------------------------------------------------
def _loss(model: CompactModel, batch, weights: LossWeights, autocast: bool):
    images, text, index, masks, valid = batch
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        out = model.decode(model.encode_images(images), text, index)
    out = ModelOutput(out.mask_logits.float(), out.exist_logits.float(), out.relevance.float())
    return compact_loss(out, masks, weights, None, valid)


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", required=True, help="the pack folder (geoseg.train.gpu.pack)")
    ap.add_argument("--out", required=True, help="checkpoints and the final model go here ($OUT on the GPU machine)")
    ap.add_argument("--init", help="init checkpoint folder (default: the pack's)")
    ap.add_argument("--resume", help="resume from this folder's checkpoint (default: --out's, if it has one)")
    ap.add_argument("--minutes", type=float, default=8.0, help="wall-clock budget of the whole run, start-up "
                    "and resumes included (default 8)")
    ap.add_argument("--steps", type=int, help="step budget (default: as many as --minutes allows)")
    ap.add_argument("--epochs", type=float, help="or a budget in passes over the pack's training images "
                    "(the smaller of --steps and this counts)")
    ap.add_argument("--batch-size", type=int, default=64, help="images per step (default 64)")
    ap.add_argument("--lr", type=float, help="peak learning rate (default: the config's x sqrt(batch / its batch))")
    ap.add_argument("--warmup", type=int, help="warm-up steps (default: the config's)")
    ap.add_argument("--holdout", type=int, default=64, help="images of the pack kept out of training (default 64, "
                    "at most a tenth of the pack)")
    ap.add_argument("--checkpoint-minutes", type=float, default=2.0)
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--seed", type=int, help="default: the config's")
    ap.add_argument("--device", help="default: cuda when available, else cpu")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (minutes of compiling)")
    ap.add_argument("--fixed-batch", action="store_true", help="debugging: one batch, never augmented, every step")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pack_dir = Path(args.pack)
    pack = PackData(pack_dir, device)
    meta, cfg = pack.meta, pack.meta["train_config"]
    seed = cfg["seed"] if args.seed is None else args.seed
    limit_s = 60 * args.minutes
    steps = args.steps or 10**9
    warmup = cfg["warmup"] if args.warmup is None else args.warmup
    batch_size = args.batch_size
    lr = args.lr or cfg["lr"] * math.sqrt(batch_size / cfg["batch_size"])
    weights = LossWeights(**cfg["loss"])

    holdout = min(args.holdout, len(pack) // 10)
    train_n = len(pack) - holdout
    if train_n < 1:
        raise SystemExit(f"{pack_dir}: {len(pack)} images leave none to train on")

    if args.epochs:
        steps = min(steps, max(1, math.ceil(args.epochs * train_n / min(batch_size, train_n))))

    resume_dir = Path(args.resume) if args.resume else out
    resuming = (resume_dir / STATE).is_file()
    if resuming:
        init = None
    elif args.init:
        init = Path(args.init)
    elif meta["init"]["path"]:
        init = (pack_dir / meta["init"]["path"]) if meta["init"]["included"] else Path(meta["init"]["path"])
    else:
        init = None
    model, copied = build_model(pack, init)
    # torch's stub of Module.to lacks memory_format, which it accepts
    model = model.to(device, memory_format=torch.channels_last).train()  # type: ignore[call-overload]
    opt = make_optimizer(model, lr, cfg["weight_decay"])
    step, elapsed_before, init_label = 0, 0.0, str(init) if init else None
    if resuming:
        state = load_checkpoint(resume_dir, model, opt, device)
        init_label = state.get("init")  # the run's first start named it
        if state.get("pack_created") != meta["created"]:
            print(f"note: resuming a run made from another pack ({state.get('pack_created')})", file=sys.stderr)
        step, elapsed_before = int(state["step"]), float(state["seconds"])
        if state.get("finished") and step >= steps:
            print(json.dumps({"event": "already finished", "step": step}))
            return 0
    # the compiled module forwards attribute access (encode_images, decode) to the model
    runner = cast(CompactModel, torch.compile(model)) if args.compile else model

    def elapsed() -> float:
        return elapsed_before + time.monotonic() - started

    settings = {"pack": str(pack_dir), "pack_created": meta["created"], "config_path": meta["config_path"],
                "batch_size": batch_size, "lr": lr, "warmup": warmup, "minutes": args.minutes,
                "steps_budget": steps if steps < 10**9 else None, "holdout": holdout, "seed": seed, "device": str(device),
                "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
                "autocast": "bf16" if cuda else "fp32", "torch": torch.__version__, "compile": args.compile,
                "init": init_label, "init_tensors": copied, "resumed_from": str(resume_dir) if resuming else None}
    print(json.dumps({"event": "start", "step": step, "images": len(pack), "pairs": len(pack.masks),
                      "queries": len(pack.text_tokens), "load_s": round(time.monotonic() - started, 1), **settings}),
          flush=True)

    gen = np.random.default_rng(seed + 7919 * step)  # a resumed run draws afresh, as geoseg train does
    aug = torch.Generator(device="cpu").manual_seed(seed + 7919 * step)
    order, at = gen.permutation(train_n), 0
    fixed = pack.batch(np.arange(min(batch_size, train_n)), None) if args.fixed_batch else None
    held = pack.batch(np.arange(train_n, len(pack))[:batch_size], None) if holdout else None
    images_seen, skipped = 0, 0
    last_ckpt = time.monotonic()
    window: list[float] = []
    window_start, window_images = time.monotonic(), 0

    def checkpoint(finished: bool) -> dict:
        record = {"step": step, "seconds": round(elapsed(), 1), "finished": finished,
                  "images_seen_this_run": images_seen, "epochs_this_run": round(images_seen / train_n, 2), **settings}
        if held is not None:
            model.eval()
            with torch.no_grad():
                record["holdout_loss"] = round(float(_loss(runner, held, weights, cuda)[0]), 4)
            model.train()
        if cuda:
            record["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        model.config.extra = {**model.config.extra, "trained_steps": step, "stage": "segment",
                              "gpu_training": {k: settings[k] for k in ("config_path", "pack_created", "batch_size",
                                                                        "lr", "device_name", "init")}}
        save_checkpoint(out, model, opt, record)
        return record

    with open(out / LOG, "a") as logf:
        while step < steps and elapsed() < limit_s:
            if fixed is not None:
                batch = fixed
            else:
                if at + batch_size > train_n:
                    order, at = gen.permutation(train_n), 0
                ids = order[at : at + min(batch_size, train_n)]
                at += len(ids)
                codes = torch.randint(0, 8, (len(ids),), generator=aug).to(device)
                batch = pack.batch(ids, codes)
            for g in opt.param_groups:
                g["lr"] = lr * lr_factor(step, warmup, steps, max(step / steps, elapsed() / limit_s))
            loss, parts = _loss(runner, batch, weights, cuda)
            if not torch.isfinite(loss):
                skipped += 1
                print(json.dumps({"event": "non-finite loss, step skipped", "step": step}), file=sys.stderr)
                if skipped >= 10:
                    print("10 non-finite losses: stopping without a checkpoint", file=sys.stderr)
                    return 1
                continue
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
            opt.step()
            step += 1
            images_seen += batch[0].shape[0]
            window_images += batch[0].shape[0]
            window.append(float(loss.detach()))
            if step % args.log_every == 0:
                now = time.monotonic()
                record = {"step": step, "loss": round(float(np.mean(window)), 5), **{k: round(v, 5) for k, v in parts.items()},
                          "lr": opt.param_groups[0]["lr"], "seconds": round(elapsed(), 1),
                          "images_per_s": round(window_images / max(1e-9, now - window_start), 1)}
                logf.write(json.dumps(record) + "\n")
                logf.flush()
                print(json.dumps(record), flush=True)
                window, window_start, window_images = [], now, 0
            if time.monotonic() - last_ckpt >= 60 * args.checkpoint_minutes:
                record = checkpoint(False)
                logf.write(json.dumps({"event": "checkpoint", **{k: record[k] for k in record if k in
                                      ("step", "seconds", "holdout_loss", "epochs_this_run")}}) + "\n")
                logf.flush()
                last_ckpt = time.monotonic()
        record = checkpoint(True)
        logf.write(json.dumps({"event": "end", **{k: record[k] for k in record
                                                  if k in ("step", "seconds", "holdout_loss", "epochs_this_run")}}) + "\n")
    print(json.dumps({"event": "end", "skipped_steps": skipped, **record}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
