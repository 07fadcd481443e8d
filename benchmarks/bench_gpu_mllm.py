"""The SegEarth-R1-compatible MLLM on a GPU: tiles/s against its FLOP ceiling.

    .venv/bin/python benchmarks/bench_gpu_mllm.py --model path/to/SegEarth-R1-checkpoint
    .venv/bin/python benchmarks/bench_gpu_mllm.py --random published      # no download needed
    .venv/bin/python benchmarks/bench_gpu_mllm.py --random tiny --device cpu --batch-sizes 1,2 --iters 2

For each batch size: tiles/s of `predict` (image side once, then each query) at the model's native
tile size, with CUDA synchronised around the timed loop; the FLOPs of one tile and one query
counted by torch.utils.flop_counter (matmuls, convolutions, attention; the deformable-attention
sampling is not counted and is small); the ceiling = peak dense bf16 FLOP/s / FLOPs per tile; and
MFU = achieved / peak. Peak memory per batch from torch.cuda.max_memory_allocated.

`--random published` builds the published architecture (Phi-1.5 + Swin-B + Mask2Former, the layer
counts in tests/test_segearth.py) with random weights and a small word-level tokenizer: the same
FLOPs and latency as the real weights (prompts tokenise to a few more or fewer tokens than Phi's
BPE would give; the image tokens dominate). Numbers are only meaningful with the device named:
the script records torch.cuda.get_device_name() and the peak it assumed (override with
--peak-tflops; the table below is NVIDIA's dense BF16 tensor-core figure).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import common  # noqa: E402

PEAK_BF16_TFLOPS = (  # (substring of the device name, dense BF16 TFLOP/s), first match wins
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4), ("GH200", 989.4),
    ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0),
    ("A10G", 70.0), ("A10", 125.0), ("RTX 4090", 165.2), ("RTX 3090", 71.0), ("V100", 125.0),
    ("T4", 65.0),
)
QUERIES = ("buildings with red roofs", "the river", "paved roads", "trees along the road")


def peak_tflops(device_name: str, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "--peak-tflops"
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return value, f"table entry {key!r}"
    return None, "unknown device: pass --peak-tflops"


def random_checkpoint(kind: str, directory: Path) -> Path:
    """A SegEarth-R1 checkpoint directory with random weights (published or tiny dimensions)."""
    import test_segearth as ts

    config, dims = (ts.PUBLISHED_CONFIG, ts.PUBLISHED_DIMS) if kind == "published" else (ts.TINY_CONFIG, ts.TINY_DIMS)
    config = json.loads(json.dumps(config))
    if kind == "published":
        config.setdefault("vocab_size", ts.PUBLISHED_CONFIG["vocab_size"])
    return ts.write_checkpoint(directory / f"SegEarth-R1-random-{kind}", ts.random_state(dims), config)


def count_flops(model, tile: int, device) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    images = torch.rand(1, 3, tile, tile, device=device)
    with FlopCounterMode(display=False) as counter:
        model.predict(images, QUERIES[:1])
    return float(counter.get_total_flops())


def time_batches(model, tile: int, batch: int, queries: int, iters: int, device) -> dict:
    import torch

    images = torch.rand(batch, 3, tile, tile, device=device)
    names = list(QUERIES[:queries])
    cuda = device.type == "cuda"
    for _ in range(2):  # warm-up: kernels chosen, caches filled
        model.predict(images, names)
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(iters):
        model.predict(images, names)
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    row = {"batch": batch, "queries": queries, "seconds": round(seconds, 3),
           "tiles_per_s": round(batch * iters / seconds, 2)}
    if cuda:
        row["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a SegEarth-R1(-compatible) checkpoint directory")
    source.add_argument("--random", choices=["published", "tiny"], help="random weights, no download")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch-sizes", default="1,2,4,8,16")
    ap.add_argument("--queries", default="1,4", help="queries per call (image features are reused)")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, if not in the table")
    ap.add_argument("--compile", action="store_true", help="torch.compile the image and mask sides")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()

    import torch

    from geoseg.models.segearth import load_segearth_segmenter

    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({common.machine()['cpu']})"
    peak, peak_source = peak_tflops(name, args.peak_tflops) if device.type == "cuda" else (args.peak_tflops, "cpu")
    with tempfile.TemporaryDirectory(prefix="geoseg-mllm-") as tmp:
        path = Path(args.model) if args.model else random_checkpoint(args.random, Path(tmp))
        model = load_segearth_segmenter(path, device=device, compile=args.compile)
    tile = model.info.tile_size
    flops = count_flops(model, tile, device)
    rows = []
    for queries in (int(q) for q in args.queries.split(",")):
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            try:
                row = time_batches(model, tile, batch, queries, args.iters, device)
            except torch.OutOfMemoryError:
                print(f"batch {batch} x {queries} queries: out of memory; larger batches skipped", file=sys.stderr)
                torch.cuda.empty_cache()
                break
            if peak:
                # FLOPs of one tile with q queries ~ image side + q x language side; measured for
                # q = 1, so the MFU of q > 1 is a lower bound (the extra queries are not counted).
                row["tflops_achieved"] = float(f"{row['tiles_per_s'] * flops / 1e12:.3g}")
                row["mfu"] = float(f"{row['tiles_per_s'] * flops / (peak * 1e12):.3g}")
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    ceiling = peak * 1e12 / flops if peak else None
    print(f"device: {name}; model: {model.info.name} ({args.model or 'random ' + args.random}); tile {tile} px")
    print(f"FLOPs per tile (1 query): {flops / 1e9:,.1f} GFLOP; peak {peak} TFLOP/s ({peak_source})"
          + (f"; ceiling {ceiling:,.1f} tiles/s" if ceiling else ""))
    print(common.markdown_table(rows, ["batch", "queries", "tiles_per_s", "tflops_achieved", "mfu", "peak_memory_gb"]))
    if not args.no_save:
        slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")[:40]
        out = common.save_results(f"gpu_mllm_{slug}", common.invocation(), rows, {
            "device": name, "peak_bf16_tflops": peak, "peak_source": peak_source, "tile": tile,
            "flops_per_tile_1_query": flops, "ceiling_tiles_per_s": ceiling,
            "model": args.model or f"random {args.random}", "compile": args.compile,
        })
        print(f"\nwritten: {out.relative_to(common.REPO)}")


if __name__ == "__main__":
    main()
