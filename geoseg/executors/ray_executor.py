"""Model replicas as Ray actors (one per GPU); tiles are read, blended, vectorised and written on the
driver, so only tile batches and probabilities travel and the workers need no access to the files.

Each actor (a `ModelHost`) holds one GPU (or a share of the CPUs) and loads the models the jobs ask
for, once each. A job's batch of tiles is split into chunks of the per-replica batch size, the
chunks go to the least busy hosts at once, and their probabilities come back in order. The chunks
are exactly the batches the local executor would give its model, so both executors produce
identical outputs.

Imported only for `--executor ray` (pip install "geoseg[ray]").
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np
import ray
import torch

from geoseg import resume
from geoseg.errors import GeosegError
from geoseg.executors import JobSegmenter, LoadOnce
from geoseg.models.base import ModelInfo, Prediction, Segmenter
from geoseg.models.registry import load_segmenter

log = logging.getLogger("geoseg")

# loading a large checkpoint on a cold node takes minutes; an unschedulable actor waits forever
START_TIMEOUT_S = int(os.environ.get("GEOSEG_RAY_START_TIMEOUT", "900"))


class ModelHost:
    """One Ray actor: a GPU (or its share of CPUs) and the models loaded on it, by spec."""

    def __init__(self, load: Callable[..., Segmenter]):
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        if cpus:
            torch.set_num_threads(max(1, int(cpus)))  # the CPUs Ray gave this actor, not the node's
        self.load = load
        self.models: dict[tuple, Segmenter] = {}

    def describe(self, key: tuple) -> tuple[ModelInfo, int, str]:
        """Load the model if needed; its info, default batch size and device."""
        from geoseg.pipeline import RunOptions, batch_size_for

        model = self._model(key)
        return model.info, batch_size_for(model, RunOptions()), str(model.device)

    def predict(self, key: tuple, images: np.ndarray, queries: Sequence[str], before: np.ndarray | None) -> np.ndarray:
        model = self._model(key)
        # arrays from the object store are read-only; torch wants writable memory
        x = torch.from_numpy(np.array(images)).to(model.device)
        b = torch.from_numpy(np.array(before)).to(model.device) if before is not None else None
        with torch.inference_mode():
            probabilities = model.predict(x, list(queries), before=b).probabilities
        return probabilities.float().cpu().numpy()

    def _model(self, key: tuple) -> Segmenter:
        if key not in self.models:
            spec, device, allow_pickle = key
            self.models[key] = self.load(spec, device=device, allow_pickle=allow_pickle)
        return self.models[key]


@dataclass
class RemoteModel:
    """A model loaded on every host: what the driver needs to plan and send tiles."""

    key: tuple
    info: ModelInfo
    replica_batch: int


class HostPool:
    """The executor's actors; `predict` scatters a batch over them in chunks and gathers in order."""

    def __init__(self, actors: list):
        self.actors = actors
        self.device = torch.device("cpu")  # tiles stay on the driver's CPU until they travel
        self._busy = [0] * len(actors)
        self.chunks = [0] * len(actors)  # chunks each host has predicted (tests and benchmarks read it)
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

    def load(self, key: tuple) -> RemoteModel:
        try:
            described = ray.get([a.describe.remote(key) for a in self.actors], timeout=START_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise GeosegError(f"model {key[0]!r} did not load on {len(self.actors)} Ray workers in "
                              f"{START_TIMEOUT_S} s (are there resources for them?); lower --replicas") from None
        except ray.exceptions.RayError as e:
            raise GeosegError(f"model {key[0]!r} failed to load on a Ray worker: {_first_line(e)}") from None
        info, batch, where = described[0]
        log.info("ray: %s on %d workers (%s), batch %d", info.name, len(self.actors), where, batch)
        return RemoteModel(key, info, batch)

    def predict(self, images: torch.Tensor, queries: Sequence[str], *, before: torch.Tensor | None = None,
                model: RemoteModel, chunk: int) -> Prediction:
        imgs = images.cpu().numpy()
        prev = before.cpu().numpy() if before is not None else None
        calls = []
        try:
            for start in range(0, len(imgs), chunk):
                i = self._acquire()
                part = None if prev is None else prev[start:start + chunk]
                calls.append((i, self.actors[i].predict.remote(model.key, imgs[start:start + chunk], list(queries), part)))
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
                kwargs = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
                ray.init(address=address, **{**kwargs, **(init or {})})
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise GeosegError(f"--ray-address {address}: cannot join the Ray cluster ({_first_line(e)})") from None
            self._started = True
        self._pool: HostPool | None = None
        self._models = LoadOnce()  # (spec, device, allow_pickle) -> RemoteModel

    def placement(self) -> tuple[int, dict[str, float]]:
        """How many hosts and what each asks Ray for: one GPU each where there are GPUs."""
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

    def pool(self) -> HostPool:
        if self._pool is None:
            n, resources = self.placement()
            host = ray.remote(**resources)(ModelHost)
            self._pool = HostPool([host.remote(self._load) for _ in range(n)])
            log.info("ray: %d model hosts, each %s", n, resources)
        return self._pool

    def model(self, spec: str, device: str = "auto", allow_pickle: bool = False) -> RemoteModel:
        """Load a model on every host, once per process (a failure too)."""
        key = (spec, device, allow_pickle)
        return self._models.get(key, lambda: self.pool().load(key))

    def model_identity(self, spec: str) -> dict[str, Any]:
        if self._load is load_segmenter:
            return resume.model_fingerprint(spec)
        return {"spec": spec, "info": self.model(spec).info.to_dict()}

    def job_model(self, spec: str, opts, cancel: threading.Event) -> tuple[JobSegmenter, Any]:
        model = self.model(spec, opts.device, opts.allow_pickle)
        pool = self.pool()
        chunk = opts.batch_size or model.replica_batch
        # the pipeline reads one chunk per host per call; each chunk is what the local executor
        # would send as one batch, so the outputs match it exactly
        opts = replace(opts, batch_size=chunk * len(pool.actors))
        call = partial(pool.predict, model=model, chunk=chunk)
        return JobSegmenter(model.info, pool.device, call, cancel=cancel), opts

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        self._models.clear()
        if self._started:
            ray.shutdown()


def _first_line(e: BaseException) -> str:
    """The last non-empty line of a Ray error: the original exception, not the traceback."""
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(e).__name__
