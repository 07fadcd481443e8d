"""Multi-query amortisation: what K queries on one scene cost against one query.

    nice -n 19 .venv/bin/python benchmarks/bench_multiquery.py                 # default model, 2048² scene
    nice -n 19 .venv/bin/python benchmarks/bench_multiquery.py --side 1024 --repeats 2 --no-save

Target (issue 5): K queries cost <= (1 + 0.35 (K - 1)) x one query, for K = 2, 4, 8, with the
default model. Image features are computed once per tile and reused by every query, so each
extra query adds the text/decoder part of the model and its own blending, vectorising and layer.

One worker process loads the model once (as `geoseg batch` does), segments a synthetic scene
(geoseg.train.synth: buildings, roads, water, trees, fields) once to warm up, then runs
`pipeline.segment` for each K, `--repeats` times, the order of K reversed on every other repeat
so drift on a shared machine does not favour one K. Each run is the whole flow: reading, the
model, blending, vectorising and writing the GeoPackage (one layer per query). Reported: median
wall time, median CPU time of the process (all its threads; the steadier figure on a shared
machine), time inside the model, and the ratios to K = 1. One math thread by default (`--threads`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402

QUERIES = ["buildings", "roads", "water", "trees", "fields", "bare ground", "damaged buildings", "red roofs"]
DOC = common.REPO / "docs" / "performance.md"
MARKER = "multiquery"


def bound(k: int) -> float:
    return 1 + 0.35 * (k - 1)


# ---------------------------------------------------------------- worker (one process, model loaded once)


def chunked_decode(model, pairs: int):
    """Experiment (--decode-chunk): the compact model's predict with its per-(tile, query) decoder
    run `pairs` pairs at a time instead of all B x K at once (same features, same text)."""
    import torch

    from geoseg.models.base import Prediction

    def predict(images, queries):
        b, q = images.shape[0], len(queries)
        with torch.inference_mode():
            feats = model.model.encode_images(images.to(model.device, torch.float32))
            text = model.text.encode(list(queries)).to(model.device)
            image_index = torch.arange(b, device=model.device).repeat_interleave(q)
            text_index = torch.arange(q, device=model.device).repeat(b)
            parts = []
            for s in range(0, b * q, pairs):
                out = model.model.decode(feats, text.index(text_index[s:s + pairs]), image_index[s:s + pairs])
                parts.append(torch.sigmoid(out.mask_logits) * torch.sigmoid(out.exist_logits)[:, None, None])
        return Prediction(torch.cat(parts).view(b, q, *images.shape[-2:]).float())

    return predict


def worker(scene: str, out_dir: str, model_spec: str, ks: list[int], repeats: int, threads: int,
           decode_chunk: int = 0) -> dict:
    import torch

    torch.set_num_threads(threads)
    from geoseg.batch.executors import job_segmenter
    from geoseg.models.registry import load_segmenter
    from geoseg.run import pipeline

    started = time.perf_counter()
    model = load_segmenter(model_spec, device="cpu")
    load_s = time.perf_counter() - started
    backend = model
    if decode_chunk:
        backend = SimpleNamespace(info=model.info, device=model.device, predict=chunked_decode(model, decode_chunk))

    def run(k: int, tag: str) -> dict:
        timed = job_segmenter(backend)
        out = Path(out_dir) / f"k{k}-{tag}.gpkg"
        opts = pipeline.RunOptions(progress=False, overwrite=True)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        summary = pipeline.segment([scene], QUERIES[:k], out, opts, segmenter=timed)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        return {"k": k, "wall_s": wall, "cpu_s": cpu, "model_s": timed.meter.model_seconds, "calls": timed.meter.calls,
                "tiles": summary.tiles, "features": {ly.query: ly.features for ly in summary.layers}}

    run(1, "warmup")
    runs = []
    for r in range(repeats):
        for k in (ks if r % 2 == 0 else ks[::-1]):
            runs.append(run(k, f"r{r}"))
    return {"model": model.info.name, "model_version": model.info.version, "weights_sha256": model.info.weights_sha256,
            "tile_size": model.info.tile_size, "load_s": load_s, "runs": runs}


# ---------------------------------------------------------------- driver


def summarise(runs: list[dict], ks: list[int]) -> list[dict]:
    rows = []
    for k in ks:
        mine = [r for r in runs if r["k"] == k]
        rows.append({
            "k": k, "tiles": mine[0]["tiles"],
            "wall_s": statistics.median(r["wall_s"] for r in mine),
            "cpu_s": statistics.median(r["cpu_s"] for r in mine),
            "model_s": statistics.median(r["model_s"] for r in mine),
            "features": mine[0]["features"],
        })
    one = rows[0]
    for row in rows:
        row["x_wall"] = row["wall_s"] / one["wall_s"]
        row["x_cpu"] = row["cpu_s"] / one["cpu_s"]
        row["x_model"] = row["model_s"] / one["model_s"] if one["model_s"] else None
        row["bound"] = bound(row["k"])
        row["within_cpu"] = row["x_cpu"] <= row["bound"]
        row["within_wall"] = row["x_wall"] <= row["bound"]
    return rows


def render(result: dict) -> str:
    head = ("| K queries | tiles | wall s | × K=1 (wall) | CPU s | × K=1 (CPU) | model s | × K=1 (model) "
            "| target ≤ | met (CPU) | met (wall) |\n|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in result["rows"]:
        lines.append(
            f"| {r['k']} | {r['tiles']} | {r['wall_s']:.2f} | {r['x_wall']:.2f} | {r['cpu_s']:.2f} | {r['x_cpu']:.2f} "
            f"| {r['model_s']:.2f} | {r['x_model']:.2f} | {r['bound']:.2f} | {'yes' if r['within_cpu'] else '**no**'} "
            f"| {'yes' if r['within_wall'] else '**no**'} |")
    m = result["machine"]
    lines.append("")
    lines.append(f"Model `{result['model']}` {result['model_version']} (weights sha256 "
                 f"`{(result.get('weights_sha256') or 'n/a')[:12]}`), {result['tile_size']} px tiles, "
                 f"{result['threads']} math thread(s), scene {result['side']}² px, median of {result['repeats']} "
                 f"runs; model load {result['load_s']:.1f} s (once, not in the table). Queries in order: "
                 + ", ".join(f"`{q}`" for q in QUERIES[: max(result['ks'])]) + ".")
    lines.append("")
    lines.append(f"<sub>`{result['command']}` — {result['when']}, {m['cpu']}, {m['cores']} cores, "
                 f"{m['memory_gb']} GB, load average at start {m['load_average_at_start']} (a shared machine).</sub>")
    return "\n".join(lines)


def update_doc(marker: str, text: str) -> None:
    """Replace the text between this benchmark's markers in docs/performance.md (nothing else)."""
    doc = DOC.read_text()
    start, end = f"<!-- bench:{marker} -->", f"<!-- /bench:{marker} -->"
    if start not in doc:
        raise SystemExit(f"{DOC}: no {start} marker; add the section first")
    before, rest = doc.split(start, 1)
    _, after = rest.split(end, 1)
    DOC.write_text(f"{before}{start}\n{text}\n{end}{after}")


def nice_prefix() -> str:
    niceness = os.nice(0)
    return f"nice -n {niceness} " if niceness else ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="compact", help="model spec (default: the embedded default, compact)")
    ap.add_argument("--side", type=int, default=2048, help="scene side in pixels")
    ap.add_argument("--ks", default="1,2,4,8")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the worker")
    ap.add_argument("--workdir", help=f"inputs and outputs (default {common.DEFAULT_WORKDIR})")
    ap.add_argument("--no-save", action="store_true", help="print only; leave results and docs alone")
    ap.add_argument("--decode-chunk", type=int, default=0,
                    help="experiment (compact only): decode this many (tile, query) pairs at a time")
    ap.add_argument("--worker", nargs=7, metavar=("SCENE", "OUT", "MODEL", "KS", "REPEATS", "THREADS", "CHUNK"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        scene, out, model, ks, repeats, threads, chunk = args.worker
        print(json.dumps(worker(scene, out, model, [int(k) for k in ks.split(",")], int(repeats), int(threads),
                                int(chunk))))
        return 0

    ks = [int(k) for k in args.ks.split(",")]
    if ks[0] != 1:
        ap.error("--ks must start with 1 (the reference)")
    work = common.workdir(args.workdir)
    scene = work / f"synth_town_{args.side}.tif"
    if not scene.exists():
        from geoseg.train.synth import write_scene

        part = scene.with_name(scene.name + ".part.tif")
        write_scene(part, 21, args.side, args.side, 0.5, crs="EPSG:32633")
        part.rename(scene)
    out = work / "multiquery-out"
    out.mkdir(exist_ok=True)
    cmd = [common.PYTHON, __file__, "--worker", str(scene), str(out), args.model, args.ks, str(args.repeats),
           str(args.threads), str(args.decode_chunk)]
    m = common.measure(cmd, env=common.env_single_thread() if args.threads == 1 else None).check()
    got = m.json_tail()
    rows = summarise(got["runs"], ks)
    result = {
        "command": nice_prefix() + common.invocation(), "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": common.machine(), "side": args.side, "ks": ks, "repeats": args.repeats, "threads": args.threads,
        "decode_chunk": args.decode_chunk,
        **{k: got[k] for k in ("model", "model_version", "weights_sha256", "tile_size", "load_s")},
        "rows": rows, "runs": got["runs"],
    }
    text = render(result)
    print(text)
    if args.decode_chunk and not args.no_save:
        common.save_results("multiquery_decode_chunk", result["command"], rows,
                            {k: v for k, v in result.items() if k not in ("rows", "command")})
    elif not args.no_save:
        common.save_results("multiquery", result["command"], rows, {k: v for k, v in result.items() if k not in ("rows", "command")})
        update_doc(MARKER, text)
    return 0 if all(r["within_cpu"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
