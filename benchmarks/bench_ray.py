"""The Ray executor against the local executor on one machine: throughput and identical outputs.

    nice -n 19 .venv/bin/python benchmarks/bench_ray.py                    # default model, 4 scenes of 1024²
    nice -n 19 .venv/bin/python benchmarks/bench_ray.py --scenes 2 --no-save

The same batch (N synthetic scenes from geoseg.train.synth, two queries each, one job per scene) runs
three ways, each in a fresh process:

- **local, 1 worker**: one model in the process, jobs one after another, torch on all cores;
- **local, 2 workers**: the same model, two jobs in flight (`geoseg batch --workers 2`);
- **ray, 2 replicas**: a local Ray instance on all cores, two model hosts (actors) of
  cores/2 CPUs each, two jobs in flight (`geoseg batch --executor ray --replicas 2 --workers 2`).

Reported: start-up (Ray instance, actors, model loads), the batch's wall time after start-up,
tiles per second, the throughput ratio to the local executor, and whether every output is
identical (a digest over every layer's geometries and attributes, run ids excepted).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402
from bench_multiquery import nice_prefix, update_doc  # noqa: E402

QUERIES = ["buildings", "roads"]
MARKER = "ray"
CONFIGS = {  # threads: torch threads of the model (None: all cores)
    "local-1": {"executor": "local", "workers": 1, "threads": None},
    "local-2": {"executor": "local", "workers": 2, "threads": None},
    "local-2-1t": {"executor": "local", "workers": 2, "threads": 1},
    "ray-2": {"executor": "ray", "workers": 2, "replicas": 2},
}


def digest(path: Path) -> str:
    """Geometry bytes and attributes of every layer, without the per-run id."""
    import geopandas as gpd
    import pyogrio

    h = hashlib.sha256()
    for name, geometry_type in pyogrio.list_layers(path):
        if geometry_type is None:
            continue
        gdf = gpd.read_file(path, layer=name)
        h.update(name.encode())
        for row in gdf.drop(columns=["run_id"]).itertuples(index=False):
            h.update(row.geometry.wkb)
            h.update(repr([v for k, v in row._asdict().items() if k != "geometry"]).encode())
    return h.hexdigest()


def compare(a: Path, b: Path) -> tuple[bool, float]:
    """Same polygons in every layer (geometry bytes), and the largest score difference."""
    import geopandas as gpd
    import pyogrio

    same, worst = True, 0.0
    for name, geometry_type in pyogrio.list_layers(a):
        if geometry_type is None:
            continue
        x, y = gpd.read_file(a, layer=name), gpd.read_file(b, layer=name)
        if len(x) != len(y) or any(g.wkb != h.wkb for g, h in zip(x.geometry, y.geometry, strict=True)):
            same = False
            continue
        worst = max(worst, float((x["score"] - y["score"]).abs().max()) if len(x) else 0.0)
    return same, worst


def worker(config: str, scenes: list[str], out_dir: str, model: str) -> dict:
    import torch

    from geoseg import batch

    spec = CONFIGS[config]
    cores = os.cpu_count() or 1
    torch.set_num_threads(spec.get("threads") or cores)
    started = time.perf_counter()
    if spec["executor"] == "ray":
        from geoseg.batch.executors.ray_executor import RayExecutor

        executor = RayExecutor(workers=spec["workers"], replicas=spec["replicas"],
                               init={"num_cpus": cores})
        executor.model(model)  # start the hosts and load the model before the clock starts
    else:
        from geoseg.batch.executors.local import LocalExecutor

        executor = LocalExecutor(workers=spec["workers"])
        executor.shared_model(model)
    startup = time.perf_counter() - started
    out = Path(out_dir) / config
    out.mkdir(parents=True, exist_ok=True)
    jobs = [batch.Job(i + 1, f"bench:{i + 1}", "segment", [s], QUERIES, str(out / f"{Path(s).stem}.gpkg"),
                      {"model": model, "overwrite": True}) for i, s in enumerate(scenes)]
    runner = batch.BatchRunner(executor, force=True)
    t0 = time.perf_counter()
    results = list(runner.run(jobs))
    seconds = time.perf_counter() - t0
    chunks = executor.pool().chunks if spec["executor"] == "ray" else None
    executor.close()
    bad = [r.error for r in results if r.status not in ("ok", "empty")]
    if bad:
        raise SystemExit(f"{config}: jobs failed: {bad}")
    tiles = sum(r.tiles for r in results)
    return {
        "config": config, **spec, "startup_s": round(startup, 2), "batch_s": round(seconds, 2), "tiles": tiles,
        "tiles_per_s": tiles / seconds, "model_s": round(sum(r.seconds.get("model", 0) for r in results), 2),
        "features": sum(sum(r.features.values()) for r in results), "host_chunks": chunks,
        "digests": {Path(r.output).name: digest(Path(r.output)) for r in results},
        "outputs": {Path(r.output).name: r.output for r in results},
    }


def render(result: dict) -> str:
    rows = result["rows"]
    base = next((r for r in rows if r["config"] == "local-2"), rows[0])
    cores = result["machine"]["cores"]
    lines = ["| executor | jobs in flight | model replicas × torch threads | start-up s | batch wall s | tiles "
             "| tiles/s | × local (2 workers) | outputs identical | same polygons, max score difference |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        shape = f"{r['replicas']} × {max(1, cores // r['replicas'])}" if r["executor"] == "ray" else f"1 × {r['threads'] or cores}"
        lines.append(
            f"| {r['executor']} | {r['workers']} | {shape} | {r['startup_s']:.1f} | {r['batch_s']:.1f} "
            f"| {r['tiles']} | {r['tiles_per_s']:.2f} | {r['tiles_per_s'] / base['tiles_per_s']:.2f} "
            f"| {'yes' if r['identical'] else 'no'} | {'yes' if r['same_polygons'] else '**no**'}, "
            f"{r['max_score_diff']:.1e} |")
    m = result["machine"]
    lines += ["", f"{result['scenes']} scenes of {result['side']}² px (geoseg.train.synth), queries "
              + ", ".join(f"`{q}`" for q in QUERIES) + f", model `{result['model']}`; one job per scene. "
              f"Outputs are compared with those of `{rows[0]['same_as']}` (the local executor with the replicas' "
              "thread count): *identical* = the same digest over every layer's geometries and attributes (run "
              "ids excepted); otherwise the polygons and the largest `score` difference are shown.", "",
              f"<sub>`{result['command']}` — {result['when']}, {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, "
              f"load average at start {m['load_average_at_start']} (a shared machine).</sub>"]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="compact")
    ap.add_argument("--scenes", type=int, default=4)
    ap.add_argument("--side", type=int, default=1024)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--workdir")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--worker", nargs=4, metavar=("CONFIG", "SCENES", "OUT", "MODEL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        config, scenes, out, model = args.worker
        print(json.dumps(worker(config, scenes.split(","), out, model)))
        return 0

    work = common.workdir(args.workdir)
    scenes = []
    for i in range(args.scenes):
        path = work / f"synth_ray_{args.side}_{i}.tif"
        if not path.exists():
            from geoseg.train.synth import write_scene

            part = path.with_name(path.name + ".part.tif")
            write_scene(part, 100 + i, args.side, args.side, 0.5, crs="EPSG:32633")
            part.rename(path)
        scenes.append(str(path))
    rows = []
    for config in args.configs.split(","):
        cmd = [common.PYTHON, __file__, "--worker", config, ",".join(scenes), str(work / "ray-out"), args.model]
        m = common.measure(cmd).check()
        row = m.json_tail()
        row["process_wall_s"], row["process_cpu_s"] = m.wall_s, m.cpu_s
        rows.append(row)
        print(f"{config}: start-up {row['startup_s']} s, batch {row['batch_s']} s, {row['tiles_per_s']:.2f} tiles/s",
              flush=True)
    # the reference computes with the replicas' thread count: torch's CPU kernels may round
    # differently with another number of threads, whatever the executor
    reference = next((r for r in rows if r["config"] == "local-2-1t"), rows[0])
    for r in rows:
        r["identical"] = r["digests"] == reference["digests"]
        r["same_as"] = reference["config"]
        checks = [compare(Path(r["outputs"][name]), Path(path)) for name, path in reference["outputs"].items()]
        r["same_polygons"] = all(same for same, _ in checks)
        r["max_score_diff"] = max(diff for _, diff in checks)
    result = {"command": nice_prefix() + common.invocation(), "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "machine": common.machine(), "scenes": args.scenes, "side": args.side, "model": args.model, "rows": rows}
    text = render(result)
    print(text)
    if not args.no_save:
        common.save_results("ray", result["command"], rows, {k: v for k, v in result.items() if k not in ("rows", "command")})
        update_doc(MARKER, text)
    return 0 if all(r["identical"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
