"""`make bench`: every geoseg benchmark against its peer, then the tables in docs/performance.md.

    .venv/bin/python benchmarks/run_all.py            # the full set (the 20k² runs take minutes)
    .venv/bin/python benchmarks/run_all.py --quick    # small sizes only, a few minutes
    .venv/bin/python benchmarks/run_all.py --only vectorize,seams

Each benchmark is its own script (run it alone for more options) and writes
benchmarks/results/<name>.json with the command, the date and the machine; this driver then
re-renders the marked tables of docs/performance.md from those files (benchmarks/report.py).
Inputs are generated once and cached in $GEOSEG_BENCH_DIR (default ~/.cache/geoseg-bench).
On a shared machine, run it with `nice -n 19`.

The batch benchmarks (bench_multiquery.py, bench_ray.py) have their own drivers.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import report  # noqa: E402

FULL = {
    "vectorize": ["bench_vectorize.py", "--sizes", "4k,10k,20k"],
    "engine": ["bench_engine.py", "--sizes", "5k,10k,20k"],
    "engine_objects": ["bench_engine.py", "--sizes", "5k,10k,20k", "--content", "objects", "--engines", "geoseg"],
    "seams": ["bench_seams.py", "--side", "2048", "--model", "compact"],
    "end_to_end": ["bench_end_to_end.py", "--repeat", "2"],
}
QUICK = {
    "vectorize": ["bench_vectorize.py", "--sizes", "2k"],
    "engine": ["bench_engine.py", "--sizes", "1k,2k"],
    "engine_objects": ["bench_engine.py", "--sizes", "1k,2k", "--content", "objects", "--engines", "geoseg"],
    "seams": ["bench_seams.py", "--side", "1024"],
    "end_to_end": ["bench_end_to_end.py", "--synth-side", "0", "--threads", "1"],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes only")
    ap.add_argument("--only", help=f"comma-separated subset of {','.join(FULL)}")
    ap.add_argument("--no-docs", action="store_true", help="do not touch docs/performance.md")
    args = ap.parse_args()
    plan = QUICK if args.quick else FULL
    names = args.only.split(",") if args.only else list(plan)
    unknown = set(names) - set(plan)
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    failed = []
    for name in names:
        cmd = [sys.executable, str(HERE / plan[name][0]), *plan[name][1:]]
        if args.quick:
            cmd.append("--no-save")  # quick numbers never replace the documented ones
        print(f"\n== {name}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        r = subprocess.run(cmd)
        print(f"== {name}: exit {r.returncode} after {time.perf_counter() - start:.0f} s", flush=True)
        if r.returncode:
            failed.append(name)
    if not args.quick and not args.no_docs:
        print(f"\ndocs/performance.md tables updated: {', '.join(report.update()) or 'none'}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
