#!/usr/bin/env bash
# The work prepared for the first session that is lent a GPU machine (issue 23 item 5). Run there
# from the repository root, with .gpu-pack carried (docs/models/compact.md, "Training on a GPU"):
#
#   bash benchmarks/gpu_session.sh train [MINUTES] [BATCH]   # compact from .gpu-pack -> $OUT (default 7.5 min, 64)
#   bash benchmarks/gpu_session.sh bench [SECONDS]           # the two MLLM GPU benchmarks -> $OUT (default 100 s each)
#
# Needs only what that machine has (python3 with torch, transformers, safetensors, peft): no
# rasterio, GDAL, shapely or MiniLM package. Writes at most 5 files (train) or 3 files (bench)
# under $OUT, inside the 8 files that come back.
set -u
: "${OUT:?OUT must name the folder whose files come back}"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
$PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO CUDA")'

case "${1:-}" in
train)
    $PY -m geoseg.train.gpu.run --pack .gpu-pack --out "$OUT" --minutes "${2:-7.5}" --batch-size "${3:-64}" \
        --log-every 50
    ;;
bench)
    limit=${2:-100}
    # tiles/s and MFU of the SegEarth-R1 architecture (random published-size weights, bf16)
    timeout "$limit" $PY benchmarks/bench_gpu_mllm.py --random published --batch-sizes 1,4,16 --iters 5 2>&1 \
        | tee "$OUT/bench_gpu_mllm.log"
    cp benchmarks/results/gpu_mllm_*.json "$OUT/" 2>/dev/null || echo "bench_gpu_mllm wrote no result file"
    # fine-tuning steps/s and peak memory, LoRA / full x gradient checkpointing, one JSON line each
    timeout "$limit" $PY benchmarks/bench_mllm_train.py --size published --device cuda --steps 5 --warmup 1 2>&1 \
        | tee "$OUT/bench_mllm_train.jsonl"
    ;;
*)
    echo "usage: bash benchmarks/gpu_session.sh train [MINUTES] [BATCH] | bench [SECONDS]" >&2
    exit 2
    ;;
esac
