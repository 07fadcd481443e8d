"""What every benchmark shares: measuring a process, synthetic rasters, result files.

Each measured run is its own process, started through GNU time so that its peak RSS (ru_maxrss)
belongs to that run alone, not to the benchmark driver (see `measure`) or to earlier runs. Wall time is measured around the process, start-up included: that is what a user waits for.

Synthetic rasters are written block by block from functions of the *global* pixel coordinates,
so a 20k x 20k file never exists in memory and content is continuous across blocks (objects cross
block and tile seams, as they do in real scenes). They are cached in the work directory and only
rebuilt when absent.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DEFAULT_WORKDIR = Path(os.environ.get("GEOSEG_BENCH_DIR", Path.home() / ".cache" / "geoseg-bench"))
PYTHON = sys.executable
WRITE_BLOCK = 1024  # rows/cols generated at a time when writing synthetic rasters
LOAD_AT_START = [round(x, 2) for x in os.getloadavg()]  # this module is imported as a driver starts


# ------------------------------------------------------------------------------ measuring


@dataclass
class Measurement:
    """One process run: wall seconds, peak resident memory, exit status, its output."""

    command: str
    wall_s: float
    cpu_s: float  # user + system time of the process: steadier than wall time on a shared machine
    peak_rss_mb: float
    returncode: int
    stdout: str
    stderr: str

    def json_tail(self) -> dict:
        """The last stdout line parsed as JSON (workers print their own timings there)."""
        lines = [line for line in self.stdout.strip().splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else {}

    def check(self) -> Measurement:
        if self.returncode != 0:
            raise RuntimeError(f"{self.command} failed ({self.returncode}):\n{self.stderr[-3000:]}")
        return self


GNU_TIME = Path("/usr/bin/time")


def measure(cmd: Sequence[str], *, env: dict | None = None, cwd: Path | None = None) -> Measurement:
    """Run `cmd` to completion: wall time, CPU time and the peak RSS of that process.

    The command is started through GNU time (`/usr/bin/time -f "%M %U %S"`), which reports the
    rusage of *its* child. Reaping our own child with wait4 is not enough on Linux: a child's
    ru_maxrss keeps the high-water mark of the address space it had before exec, i.e. this
    driver's whole RSS at fork/vfork time, so a small tool would seem as large as the driver.
    Without GNU time, wait4's figure is used and can be too high for processes smaller than the
    driver.
    """
    full_env = {**os.environ, **(env or {})}
    shown = " ".join(shlex.quote(c) for c in cmd)
    with tempfile.NamedTemporaryFile(prefix="geoseg-bench-time-", suffix=".txt", delete=False) as f:
        report_path = Path(f.name)
    wrapped = [str(GNU_TIME), "-f", "%M %U %S", "-o", str(report_path), *cmd] if GNU_TIME.exists() else list(cmd)
    started = time.perf_counter()
    try:
        with open(os.devnull, "rb") as devnull:
            proc = subprocess.Popen(
                wrapped, stdin=devnull, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=full_env, cwd=cwd, text=True,
            )
            # Read both pipes before reaping so a chatty child cannot block on a full pipe.
            stdout, stderr = _drain(proc)
            _, status, rusage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        returncode = os.waitstatus_to_exitcode(status)
        peak_kb, cpu = rusage.ru_maxrss, rusage.ru_utime + rusage.ru_stime
        fields = report_path.read_text().split() if GNU_TIME.exists() else []
        if len(fields) >= 3:  # the last line; GNU time prefixes "Command exited..." on failure
            peak_kb, cpu = int(fields[-3]), float(fields[-2]) + float(fields[-1])
    finally:
        report_path.unlink(missing_ok=True)
    return Measurement(shown, round(wall, 3), round(cpu, 3), round(peak_kb / 1024, 1), returncode, stdout, stderr)


def _drain(proc: subprocess.Popen) -> tuple[str, str]:
    """Read stdout and stderr to EOF without waiting for the process (wait4 reaps it)."""
    import threading

    out: dict[str, str] = {}

    def read(name: str, stream) -> None:
        out[name] = stream.read()
        stream.close()

    threads = [threading.Thread(target=read, args=(n, s)) for n, s in (("out", proc.stdout), ("err", proc.stderr))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out["out"], out["err"]


def machine() -> dict:
    """What the numbers were measured on."""
    import psutil

    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = platform.processor()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        # 1, 5 and 15 min load averages when the driver started and when the results were saved
        "load_average_at_start": LOAD_AT_START,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }


def save_results(name: str, command: str, rows: list[dict], extra: dict | None = None) -> Path:
    """Write benchmarks/results/<name>.json: the command that produced it, the machine, the rows."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {
        "benchmark": name,
        "command": command,
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        **(extra or {}),
        "rows": rows,
    }
    path.write_text(json.dumps(payload, indent=1, default=_jsonable) + "\n")
    return path


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    raise TypeError(type(value))


def invocation() -> str:
    """The command line that is running, as a user would type it from the repository root."""
    script = Path(sys.argv[0]).resolve()
    with contextlib.suppress(ValueError):
        script = script.relative_to(REPO)
    return " ".join([".venv/bin/python", str(script), *(shlex.quote(a) for a in sys.argv[1:])])


def markdown_table(rows: list[dict], columns: Sequence[str]) -> str:
    """A GitHub table of `columns` (missing cells blank)."""
    def cell(v) -> str:
        if v is None:
            return ""
        if isinstance(v, bool):  # before int: bool is an int
            return "yes" if v else "no"
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def parse_sizes(text: str) -> list[int]:
    """'4k,10k,20000' -> [4000, 10000, 20000] (k = 1000 pixels; sizes are the side of a square)."""
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        out.append(int(float(part[:-1]) * 1000) if part.endswith("k") else int(part))
    return out


# ------------------------------------------------------------------------------ synthetic rasters

UTM_ORIGIN = (500_000.0, 5_000_000.0)  # EPSG:32633, a plausible place; the CRS is what matters


def transform_for(gsd: float):
    from affine import Affine

    return Affine(gsd, 0, UTM_ORIGIN[0], 0, -gsd, UTM_ORIGIN[1])


def _profile(side: int, count: int, gsd: float, **kw) -> dict:
    return {
        "driver": "GTiff", "width": side, "height": side, "count": count, "dtype": "uint8",
        "crs": "EPSG:32633", "transform": transform_for(gsd), "tiled": True,
        "blockxsize": 512, "blockysize": 512, "compress": "deflate", "BIGTIFF": "IF_SAFER", **kw,
    }


def _blocks(side: int):
    for y in range(0, side, WRITE_BLOCK):
        for x in range(0, side, WRITE_BLOCK):
            yield y, x, min(WRITE_BLOCK, side - y), min(WRITE_BLOCK, side - x)


def smooth_field(y0: int, x0: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth field in [0, 1] from a fixed sum of sinusoids of the global pixel coordinates."""
    rng = np.random.default_rng(seed)
    ys = np.arange(y0, y0 + h, dtype=np.float64)[:, None]
    xs = np.arange(x0, x0 + w, dtype=np.float64)[None, :]
    total = np.zeros((h, w))
    for _ in range(6):
        period = rng.uniform(60, 400)
        angle = rng.uniform(0, np.pi)
        phase = rng.uniform(0, 2 * np.pi)
        total += np.sin((xs * np.cos(angle) + ys * np.sin(angle)) * (2 * np.pi / period) + phase)
    return 0.5 + total / 12  # six unit sinusoids -> [-6, 6] -> [0, 1]


CELL = 128  # clean masks place objects per cell; an object spans at most one neighbouring cell
ROAD_EVERY = 2000
ROAD_WIDTH = 8


def _cell_rects(cy: int, cx: int, seed: int) -> np.ndarray:
    """Axis-aligned 'buildings' of one cell: rows of (y0, x0, y1, x1) in global pixels."""
    rng = np.random.default_rng([seed, cy, cx])
    n = rng.integers(1, 5)
    y = cy * CELL + rng.integers(0, CELL, n)
    x = cx * CELL + rng.integers(0, CELL, n)
    hh, ww = rng.integers(6, 40, n), rng.integers(6, 40, n)
    return np.column_stack([y, x, y + hh, x + ww])


def clean_mask(y0: int, x0: int, h: int, w: int, seed: int = 1) -> np.ndarray:
    """Buildings (rectangles, some crossing block seams) and a grid of roads: what a good model gives."""
    out = np.zeros((h, w), np.uint8)
    for cy in range(max(0, y0 // CELL - 1), (y0 + h) // CELL + 1):
        for cx in range(max(0, x0 // CELL - 1), (x0 + w) // CELL + 1):
            for ry0, rx0, ry1, rx1 in _cell_rects(cy, cx, seed):
                a, b = max(ry0, y0) - y0, min(ry1, y0 + h) - y0
                c, d = max(rx0, x0) - x0, min(rx1, x0 + w) - x0
                if a < b and c < d:
                    out[a:b, c:d] = 1
    ys = np.arange(y0, y0 + h)
    xs = np.arange(x0, x0 + w)
    out[(ys % ROAD_EVERY) < ROAD_WIDTH, :] = 1
    out[:, (xs % ROAD_EVERY) < ROAD_WIDTH] = 1
    return out


def noisy_mask(y0: int, x0: int, h: int, w: int, seed: int = 2, sigma: float = 0.01) -> np.ndarray:
    """A thresholded noisy probability map: ragged blobs plus speckle, as a raw model output is."""
    field = smooth_field(y0, x0, h, w, seed)
    rng = np.random.default_rng([seed, y0, x0])
    return (field + rng.normal(0, sigma, (h, w)) > 0.6).astype(np.uint8)


def write_mask(path: Path, side: int, kind: str, gsd: float = 0.5) -> Path:
    """A single-band uint8 0/1 mask (tiled 512, DEFLATE) of `side` x `side` pixels."""
    import rasterio

    if path.exists():
        return path
    make = {"clean": clean_mask, "noisy": noisy_mask}[kind]
    part = path.with_name(path.name + ".part")
    with rasterio.open(part, "w", **_profile(side, 1, gsd)) as dst:
        for y, x, h, w in _blocks(side):
            dst.write(make(y, x, h, w), 1, window=((y, y + h), (x, x + w)))
    part.rename(path)
    return path


SCENE_KINDS = ("fields", "objects")


def scene_block(y0: int, x0: int, h: int, w: int, kind: str = "fields") -> np.ndarray:
    """3 x h x w uint8 'imagery' with texture.

    fields:  the smooth field itself; what the oracle finds is a labyrinth that runs across the
             whole scene (land cover: fields, forest, water), a few huge polygons.
    objects: dark ground with isolated bright blobs (~8% of the area, ~25 per Mpx, up to ~130 px
             across): separate objects, as buildings or ponds are.
    """
    g = smooth_field(y0, x0, h, w, seed=3)
    if kind == "objects":
        t = np.clip((g - 0.66) / 0.08, 0, 1)
        g = t * t * (3 - 2 * t)
    rng = np.random.default_rng([7, y0, x0])
    base = g * 200 + rng.normal(0, 6, (h, w)) + 20
    rgb = np.stack([base, base * 0.9 + 10, base * 0.8 + 20])
    return np.clip(rgb, 0, 255).astype(np.uint8)


def write_scene(path: Path, side: int, gsd: float = 0.5, kind: str = "fields") -> Path:
    """A 3-band uint8 RGB scene (tiled 512, DEFLATE) of `side` x `side` pixels (see scene_block)."""
    import rasterio

    if path.exists():
        return path
    part = path.with_name(path.name + ".part")
    with rasterio.open(part, "w", **_profile(side, 3, gsd, photometric="RGB")) as dst:
        for y, x, h, w in _blocks(side):
            dst.write(scene_block(y, x, h, w, kind), window=((y, y + h), (x, x + w)))
    part.rename(path)
    return path


def workdir(path: str | Path | None) -> Path:
    out = Path(path) if path else DEFAULT_WORKDIR
    out.mkdir(parents=True, exist_ok=True)
    return out


def env_single_thread() -> dict:
    """Environment for measured processes: one math thread (the machine is shared), fixed GDAL cache."""
    return {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "GDAL_CACHEMAX": "64", "PYTHONHASHSEED": "0"}
