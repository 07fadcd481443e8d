"""What a batch remembers beside each output, so that re-runs skip finished work and crashes resume.

    <output>.geoseg.sqlite            the sidecar (SQLite):
        jobs(key, output, status, ...)       running | done, with the job's JSON summary when done
        tiles(key, scene, first, last, file) each predicted batch of tiles, probabilities in `file`
        checkpoints(key, scene, ...)         the blender between two tile rows (rows above y0 on disk)
        scenes(key, scene)                   scenes whose probability rasters are complete
    <output>.geoseg-work/<key>/        probability rasters and the .npy files the tables point at

A job's key hashes its mode, inputs (path, size, modification time), queries, model and every
parameter that changes the output, so a re-run with the same key is recognised as done and a run
with other parameters never picks up stale tiles.

Order of writes, which is what makes a crash at any point harmless: a batch's probabilities are
recorded (file, then row) before they are blended; a checkpoint is recorded only after the rows
above it are durably written; rows below a checkpoint may hold anything, they are rewritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio

from geoseg.errors import GeosegError, InputError
from geoseg.run import stitch, tiling

log = logging.getLogger("geoseg")

SIDECAR_SUFFIX = ".geoseg.sqlite"
WORK_SUFFIX = ".geoseg-work"
KEY_VERSION = 1  # bump when the meaning of a key changes (old records then never match)

# RunOptions fields that do not change what a run writes: left out of the job key.
NOT_IN_KEY = frozenset({"progress", "workers", "batch_size", "device", "overwrite", "append"})
# Options added after keys were first written: left out at their default, so a job's key from
# before them still matches.
KEY_DEFAULTS = {"asset": None, "hash_inputs": False}

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    key TEXT PRIMARY KEY, output TEXT NOT NULL, status TEXT NOT NULL,
    started REAL, finished REAL, summary TEXT, spec TEXT);
CREATE TABLE IF NOT EXISTS tiles (
    key TEXT NOT NULL, scene INTEGER NOT NULL, first_tile INTEGER NOT NULL, last_tile INTEGER NOT NULL,
    file TEXT NOT NULL, PRIMARY KEY (key, scene, first_tile));
CREATE TABLE IF NOT EXISTS checkpoints (
    key TEXT NOT NULL, scene INTEGER NOT NULL, next_tile INTEGER NOT NULL, y0 INTEGER NOT NULL,
    file TEXT NOT NULL, PRIMARY KEY (key, scene));
CREATE TABLE IF NOT EXISTS scenes (
    key TEXT NOT NULL, scene INTEGER NOT NULL, tiles INTEGER NOT NULL, PRIMARY KEY (key, scene));
"""


# ---------------------------------------------------------------- keys


def file_fingerprint(path: str | Path, asset: str | None = None) -> dict[str, Any]:
    """Absolute path, size and modification time: what make and rsync trust, without reading GBs.

    A remote input (URL, s3://, /vsi...): its URL without credentials, size, ETag and
    Last-Modified as the server gives them; a STAC Item: the item's and its assets' fingerprints."""
    from geoseg.io import raster, remote, stac

    if stac.is_stac(path):
        source = raster.resolve(path, asset)
        item = remote.fingerprint(str(path), remote.gdal_path(path)) if remote.is_remote(path) \
            else _local_fingerprint(path)
        return {"stac": item, "assets": [remote.fingerprint(h, remote.gdal_path(h)) if remote.is_remote(h)
                                         else _local_fingerprint(h.removeprefix("file://"))
                                         for h in source.asset_hrefs]}
    if remote.is_remote(path):
        remote.configure_gdal(path)
        return remote.fingerprint(str(path), remote.gdal_path(path))
    return _local_fingerprint(path)


def _local_fingerprint(path: str | Path) -> dict[str, Any]:
    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError:
        raise InputError(f"{path}: no such file; check the path") from None
    return {"path": str(p), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def model_fingerprint(spec: str) -> dict[str, Any]:
    """Identity of `--model` without loading (or downloading) it: a local directory's file listing,
    or the spec itself for a hub id."""
    from geoseg.models.registry import REGISTRY

    path = REGISTRY[spec]() if spec in REGISTRY else Path(spec).expanduser()
    if not path.is_dir():
        return {"spec": spec}
    files = sorted(f for f in path.rglob("*") if f.is_file())
    return {"spec": spec, "files": [[str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns] for f in files]}


def job_key(
    *, mode: str, inputs: Sequence[str | Path], queries: Sequence[str], output: str | Path,
    parameters: dict[str, Any], model: dict[str, Any],
) -> str:
    """sha256 over everything that decides what the job writes (see the module docstring)."""
    identity = {
        "version": KEY_VERSION, "mode": mode, "queries": list(queries),
        "inputs": [file_fingerprint(p, parameters.get("asset")) for p in inputs],
        "output": str(Path(output).resolve()),
        "parameters": {k: v for k, v in sorted(parameters.items())
                       if k not in NOT_IN_KEY and not (k in KEY_DEFAULTS and v == KEY_DEFAULTS[k])},
        "model": model,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------- the sidecar


class Sidecar:
    """The SQLite file beside one output. One instance per job; writes are short transactions."""

    def __init__(self, output: str | Path):
        self.output = Path(output)
        self.path = self.output.with_name(self.output.name + SIDECAR_SUFFIX)
        self.work_root = self.output.with_name(self.output.name + WORK_SUFFIX)
        self._lock = threading.Lock()
        self._con: sqlite3.Connection | None = None

    def _db(self) -> sqlite3.Connection:
        if self._con is None:
            try:
                con = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
                con.executescript(SCHEMA)
            except sqlite3.Error as e:
                raise GeosegError(f"{self.path}: cannot use the batch sidecar ({e}); delete it to start over") from None
            self._con = con
        return self._con

    def execute(self, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._db().execute(sql, args).fetchall()

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    # -- jobs

    def finished(self, key: str) -> dict | None:
        """The summary of a finished job whose output is still there with its layers, else None."""
        if not self.path.exists():
            return None
        rows = self.execute("SELECT summary, finished FROM jobs WHERE key = ? AND status = 'done'", (key,))
        if not rows or not self.output.exists():
            return None
        summary = json.loads(rows[0][0])
        try:
            present = set(pyogrio.list_layers(self.output)[:, 0])
        except Exception:  # unreadable output: the job is not done
            return None
        if not {layer["name"] for layer in summary.get("layers", [])} <= present:
            return None
        return {**summary, "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(rows[0][1]))}

    def begin(self, key: str, *, resume: bool, spec: dict) -> JobCheckpoints:
        """Mark the job running; keep what an interrupted run of it left only when resuming."""
        if not resume:
            self.discard(key)
            for (other,) in self.execute("SELECT key FROM jobs WHERE status = 'running' AND key != ?", (key,)):
                self.discard(other)  # stale work of a crashed run with other parameters
        elif self.execute("SELECT 1 FROM jobs WHERE key = ? AND status = 'running'", (key,)):
            log.info("%s: resuming an interrupted run", self.output)
        self.execute(
            "INSERT INTO jobs (key, output, status, started, spec) VALUES (?, ?, 'running', ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET status = 'running', started = excluded.started, spec = excluded.spec",
            (key, str(self.output), time.time(), json.dumps(spec, default=str)),
        )
        return JobCheckpoints(self, key)

    def finish(self, key: str, summary: dict, *, appended: bool) -> None:
        """Record the job done and drop its work files. A job that replaced the output makes the
        records of earlier jobs on it stale; an appending job leaves them."""
        if not appended:
            self.execute("DELETE FROM jobs WHERE key != ? AND status = 'done'", (key,))
        self.execute(
            "UPDATE jobs SET status = 'done', finished = ?, summary = ? WHERE key = ?",
            (time.time(), json.dumps(summary, default=str), key),
        )
        self.discard(key, keep_job=True)
        if self.work_root.is_dir() and not any(self.work_root.iterdir()):
            self.work_root.rmdir()

    def discard(self, key: str, *, keep_job: bool = False) -> None:
        """Forget a job's tiles and checkpoints and delete its work directory."""
        for table in ("tiles", "checkpoints", "scenes"):
            self.execute(f"DELETE FROM {table} WHERE key = ?", (key,))
        if not keep_job:
            self.execute("DELETE FROM jobs WHERE key = ? AND status = 'running'", (key,))
        shutil.rmtree(self.workdir(key), ignore_errors=True)

    def workdir(self, key: str) -> Path:
        return self.work_root / key[:16]


class JobCheckpoints:
    """`engine.Checkpoints` for one job: its persistent work directory and a journal per scene."""

    def __init__(self, sidecar: Sidecar, key: str):
        self.sidecar, self.key = sidecar, key
        self.workdir = sidecar.workdir(key)
        self.tiles_resumed = 0  # tiles an interrupted run had finished: not predicted again
        self.tiles_predicted = 0

    def journal(self, scene_index: int) -> SceneJournal:
        self.workdir.mkdir(parents=True, exist_ok=True)
        return SceneJournal(self, scene_index)


class SceneJournal:
    """`engine.TileJournal` for one scene of one job."""

    def __init__(self, job: JobCheckpoints, scene: int):
        self.job, self.scene = job, scene
        self.db, self.key, self.dir = job.sidecar, job.key, job.workdir
        self.next_tile = 0  # first tile not in the restored blender state
        self.tiles = 0

    def finished(self) -> bool:
        rows = self.db.execute("SELECT tiles FROM scenes WHERE key = ? AND scene = ?", (self.key, self.scene))
        if rows:
            self.job.tiles_resumed += rows[0][0]
        return bool(rows)

    def blender_state(self) -> stitch.BlenderState | None:
        rows = self.db.execute(
            "SELECT next_tile, y0, file FROM checkpoints WHERE key = ? AND scene = ?", (self.key, self.scene)
        )
        if not rows:
            return None
        self.next_tile, y0, name = rows[0]
        with np.load(self.dir / name) as f:
            return stitch.BlenderState(int(y0), f["acc"], f["wsum"])

    def replay(self, blender: stitch.RollingBlender, plan: tiling.TilePlan) -> int:
        """Blend the recorded tiles after the checkpoint again; return the first tile to predict."""
        self.tiles = len(plan.tiles)
        index = self.next_tile
        records = self.db.execute(
            "SELECT file FROM tiles WHERE key = ? AND scene = ? AND last_tile >= ? ORDER BY first_tile",
            (self.key, self.scene, index),
        )
        for (name,) in records:
            with np.load(self.dir / name) as f:
                tiles, probs, valid = f["tiles"], f["probabilities"], f["valid"]
            for t, p, v in zip(tiles, probs, valid, strict=True):
                if t < index:
                    continue
                for skipped in plan.tiles[index:t]:  # all-nodata tiles between two batches
                    blender.add(skipped, None, None)
                blender.add(plan.tiles[t], p, v)
                index = int(t) + 1
        self.job.tiles_resumed += index
        if index:
            log.info("scene %d: %d of %d tiles taken from the interrupted run", self.scene, index, len(plan.tiles))
        return index

    def batch_predicted(self, batch: Sequence[tiling.TileData], probabilities: np.ndarray) -> None:
        h, w = batch[0].tile.height, batch[0].tile.width  # every tile of a plan has the same size
        first = batch[0].tile.index
        name = f"s{self.scene}-t{first}.npz"
        _save_npz(self.dir / name, tiles=np.array([d.tile.index for d in batch]),
                  probabilities=probabilities[:, :, :h, :w], valid=np.stack([d.valid for d in batch]))
        self.db.execute(
            "INSERT OR REPLACE INTO tiles VALUES (?, ?, ?, ?, ?)",
            (self.key, self.scene, first, batch[-1].tile.index, name),
        )
        self.job.tiles_predicted += len(batch)

    def rows_flushed(self, blender: stitch.RollingBlender, next_tile: tiling.Tile) -> None:
        state = blender.snapshot()
        name = f"s{self.scene}-state-{next_tile.index}.npz"
        _save_npz(self.dir / name, acc=state.acc, wsum=state.wsum)
        old = self.db.execute("SELECT file FROM checkpoints WHERE key = ? AND scene = ?", (self.key, self.scene))
        self.db.execute(
            "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?, ?)",
            (self.key, self.scene, next_tile.index, state.y0, name),
        )
        if old and old[0][0] != name:
            (self.dir / old[0][0]).unlink(missing_ok=True)
        self._drop_tiles_before(next_tile.index)

    def scene_finished(self) -> None:
        self.db.execute("INSERT OR IGNORE INTO scenes VALUES (?, ?, ?)", (self.key, self.scene, self.tiles))
        for (name,) in self.db.execute("SELECT file FROM checkpoints WHERE key = ? AND scene = ?", (self.key, self.scene)):
            (self.dir / name).unlink(missing_ok=True)
        self.db.execute("DELETE FROM checkpoints WHERE key = ? AND scene = ?", (self.key, self.scene))
        self._drop_tiles_before(None)

    def _drop_tiles_before(self, index: int | None) -> None:
        """Recorded batches wholly inside the blender state (or all, at the end) are not needed."""
        cond, args = ("AND last_tile < ?", (index,)) if index is not None else ("", ())
        rows = self.db.execute(f"SELECT file FROM tiles WHERE key = ? AND scene = ? {cond}", (self.key, self.scene, *args))
        self.db.execute(f"DELETE FROM tiles WHERE key = ? AND scene = ? {cond}", (self.key, self.scene, *args))
        for (name,) in rows:
            (self.dir / name).unlink(missing_ok=True)


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write beside, then rename: a reader never sees half a file."""
    part = path.with_name(path.name + ".part")
    with open(part, "wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub matches **arrays against allow_pickle: bool
    os.replace(part, path)
