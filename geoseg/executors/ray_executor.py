"""Model replicas as Ray actors (one per GPU); tiles are read, blended, vectorised and written on the
driver, so only tile batches and probabilities travel and the workers need no access to the files.

Each job's batch of tiles is split into chunks of the per-replica batch size, the chunks go to the
least busy replicas at once, and their probabilities come back in order. The chunks are exactly
the batches the local executor would give its model, so both executors produce identical outputs.

Imported only for `--executor ray` (pip install "geoseg[ray]").
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np
import ray
import torch

from geoseg import resume
from geoseg.errors import GeosegError
from geoseg.executors import JobSegmenter
from geoseg.models.base import ModelInfo, Prediction, Segmenter
from geoseg.models.registry import load_segmenter

log = logging.getLogger("geoseg")

START_TIMEOUT_S = 900  # loading a large checkpoint on a cold node takes minutes


class Replica:
    """One model on one Ray worker (given one GPU when the cluster has GPUs)."""

    def __init__(self, load: Callable[..., Segmenter], spec: str, device: str, allow_pickle: bool):
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        if cpus:
            torch.set_num_threads(max(1, int(cpus)))  # the CPUs Ray gave this actor, not the node's
        self.model = load(spec, device=device, allow_pickle=allow_pickle)

    def describe(self) -> tuple[ModelInfo, int, str]:
        from geoseg.pipeline import RunOptions, batch_size_for

        return self.model.info, batch_size_for(self.model, RunOptions()), str(self.model.device)

    def predict(self, images: np.ndarray, queries: Sequence[str], before: np.ndarray | None) -> np.ndarray:
        device = self.model.device
        # arrays from the object store are read-only; torch wants writable memory
        x = torch.from_numpy(np.array(images)).to(device)
        b = torch.from_numpy(np.array(before)).to(device) if before is not None else None
        with torch.inference_mode():
            probabilities = self.model.predict(x, list(queries), before=b).probabilities
        return probabilities.float().cpu().numpy()


class ReplicaPool:
    """Replicas of one model; `predict` scatters a batch over them in chunks and gathers in order."""

    def __init__(self, actors: list, info: ModelInfo, replica_batch: int):
        self.actors, self.info, self.replica_batch = actors, info, replica_batch
        self.device = torch.device("cpu")  # tiles stay on the driver's CPU until they travel
        self._busy = [0] * len(actors)
        self.chunks = [0] * len(actors)  # chunks each replica has predicted (reported by tests/benchmarks)
        self._lock = threading.Lock()

    def _acquire(self) -> int:
        with self._lock:
            i = min(range(len(self.actors)), key=lambda k: self._busy[k])
            self._busy[i] += 1
            self.chunks[i] += 1
            return i

    def _release(self, i: int) -> None:
        with self._lock:
            self._busy[i] -= 1

    def predict(self, images: torch.Tensor, queries: Sequence[str], *, before: torch.Tensor | None = None,
                chunk: int) -> Prediction:
        imgs = images.cpu().numpy()
        prev = before.cpu().numpy() if before is not None else None
        calls = []
        try:
            for start in range(0, len(imgs), chunk):
                i = self._acquire()
                part = None if prev is None else prev[start:start + chunk]
                calls.append((i, self.actors[i].predict.remote(imgs[start:start + chunk], list(queries), part)))
            parts = ray.get([ref for _, ref in calls])
        except ray.exceptions.RayError as e:
            raise GeosegError(f"a model replica failed: {_first_line(e)}") from None
        finally:
            for i, _ in calls:
                self._release(i)
        return Prediction(torch.from_numpy(np.concatenate(parts)))

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)


class RayExecutor:
    name = "ray"

    def __init__(self, *, workers: int = 2, address: str | None = None, replicas: int | None = None,
                 load: Callable[..., Segmenter] | None = None, init: dict[str, Any] | None = None):
        """Join the cluster at `address` (None: start a local one). `load(spec, device=,
        allow_pickle=)` runs on the workers; geoseg must be installed there too."""
        self.workers = max(1, workers)
        self._replicas, self._load = replicas, load or load_segmenter
        self._started = False
        if not ray.is_initialized():
            try:
                ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
                         log_to_driver=False, **(init or {}))
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise GeosegError(f"--ray-address {address}: cannot join the Ray cluster ({_first_line(e)})") from None
            self._started = True
        self._pools: dict[tuple, ReplicaPool | GeosegError] = {}
        self._guard = threading.Lock()

    def model_identity(self, spec: str) -> dict[str, Any]:
        if self._load is load_segmenter:
            return resume.model_fingerprint(spec)
        return {"spec": spec, "info": self.pool(spec).info.to_dict()}

    def placement(self) -> tuple[int, dict[str, float]]:
        """How many replicas and what each asks Ray for: one GPU each where there are GPUs."""
        res = ray.cluster_resources()
        gpus, cpus = int(res.get("GPU", 0)), int(res.get("CPU", 1))
        n = self._replicas or gpus or 1
        if gpus:
            return n, {"num_gpus": 1 / math.ceil(n / gpus), "num_cpus": 1}
        node_cpus = max((int(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node.get("Alive")), default=cpus)
        per = max(1, min(node_cpus, cpus // n))
        if n * per > cpus:
            raise GeosegError(f"--replicas {n}: the Ray cluster has {cpus} CPUs and no GPU; use at most {cpus}")
        return n, {"num_cpus": per}

    def pool(self, spec: str, device: str = "auto", allow_pickle: bool = False) -> ReplicaPool:
        key = (spec, device, allow_pickle)
        with self._guard:
            entry = self._pools.get(key)
            if entry is None:
                try:
                    entry = self._start_pool(spec, device, allow_pickle)
                except GeosegError as e:
                    entry = e
                self._pools[key] = entry
        if isinstance(entry, GeosegError):
            raise type(entry)(str(entry))
        return entry

    def _start_pool(self, spec: str, device: str, allow_pickle: bool) -> ReplicaPool:
        n, resources = self.placement()
        actor = ray.remote(**resources)(Replica)
        actors = [actor.remote(self._load, spec, device, allow_pickle) for _ in range(n)]
        try:
            described = ray.get([a.describe.remote() for a in actors], timeout=START_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise GeosegError(f"model {spec!r}: {n} replicas asking {resources} did not start in "
                              f"{START_TIMEOUT_S} s; lower --replicas or add nodes") from None
        except ray.exceptions.RayError as e:
            for a in actors:
                ray.kill(a)
            raise GeosegError(f"model {spec!r} failed to load on a Ray worker: {_first_line(e)}") from None
        info, batch, where = described[0]
        log.info("ray: %d replicas of %s (%s each) on %s, batch %d", n, info.name, resources, where, batch)
        return ReplicaPool(actors, info, batch)

    def job_model(self, spec: str, opts, cancel: threading.Event) -> tuple[JobSegmenter, Any]:
        pool = self.pool(spec, opts.device, opts.allow_pickle)
        chunk = opts.batch_size or pool.replica_batch
        # the pipeline reads one chunk per replica per call; each chunk is what the local executor
        # would send as one batch, so the outputs match it exactly
        opts = replace(opts, batch_size=chunk * len(pool.actors))
        return JobSegmenter(pool.info, pool.device, partial(pool.predict, chunk=chunk), cancel=cancel), opts

    def close(self) -> None:
        for pool in self._pools.values():
            if isinstance(pool, ReplicaPool):
                pool.close()
        self._pools.clear()
        if self._started:
            ray.shutdown()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else type(e).__name__
