"""Model replicas as Ray actors (one per GPU); tiles are read, blended, vectorised and written on the
driver, so only tile batches and probabilities travel and the workers need no access to the files.

Each actor (a `ModelHost`) holds one GPU (or a share of the CPUs) and loads the models the jobs ask
for, once each. A job's batch of tiles is split into chunks of the per-replica batch size, the
chunks go to the least busy hosts at once, and their probabilities come back in order. The chunks
are exactly the batches the local executor would give its model, so both executors produce
identical outputs.

The driver stands in for the model with a `ReplicaModel` that has exactly the capabilities of the
loaded model (change-aware, generative, ...; geoseg.models.base): each of their calls goes to the
hosts like `predict` does, and a view (e.g. `grounded(answers)`) is the same view on every host.

Imported only for `--executor ray` (pip install "geoseg[ray]").
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import ray
import torch

from geoseg.batch import resume
from geoseg.batch.executors.base import (
    Forwarder,
    JobSegmenter,
    LoadOnce,
    forwarding_class,
    job_segmenter,
)
from geoseg.errors import GeosegError
from geoseg.models.base import (
    ModelInfo,
    Prediction,
    Segmenter,
    Target,
    capabilities,
    declared_members,
)
from geoseg.models.registry import load_segmenter

log = logging.getLogger("geoseg")

# loading a large checkpoint on a cold node takes minutes; an unschedulable actor waits forever
START_TIMEOUT_S = int(os.environ.get("GEOSEG_RAY_START_TIMEOUT", "900"))

Views = tuple[tuple[str, tuple], ...]  # the view-making calls from a loaded model to what a job uses


@dataclass
class Description:
    """What the driver needs to stand in for a model (or a view of it) loaded on the hosts."""

    info: ModelInfo
    batch: int  # its default batch size on a host
    device: str  # where it runs on the host
    capabilities: tuple[type, ...]
    members: dict[str, Any]  # the capabilities' data members (e.g. Grounded.answers)


class ModelHost:
    """One Ray actor: a GPU (or its share of CPUs) and the models loaded on it, by spec."""

    def __init__(self, load: Callable[..., Segmenter]):
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        if cpus:
            torch.set_num_threads(max(1, int(cpus)))  # the CPUs Ray gave this actor, not the node's
        self.load = load
        self.models: dict[tuple, Segmenter] = {}

    def describe(self, key: tuple, views: Views = ()) -> Description:
        """Load the model if needed; its description (or its view's)."""
        from geoseg.options import RunOptions
        from geoseg.run.engine import batch_size_for

        model = self._target(key, views)
        caps = capabilities(model)
        return Description(model.info, batch_size_for(model, RunOptions()), str(model.device), caps,
                           declared_members(model, caps))

    def call(self, key: tuple, views: Views, name: str, args: tuple, kwargs: dict) -> Any:
        """`name(*args, **kwargs)` on the model (or its view); tensors travel as arrays."""
        target = self._target(key, views)
        args, kwargs = from_wire((args, kwargs), target.device)
        with torch.inference_mode():
            return to_wire(getattr(target, name)(*args, **kwargs))

    def _target(self, key: tuple, views: Views) -> Segmenter:
        if key not in self.models:
            spec, device, allow_pickle = key
            self.models[key] = self.load(spec, device=device, allow_pickle=allow_pickle)
        target = self.models[key]
        for name, args in views:  # cheap views (e.g. grounded(answers)), made again for each call
            target = getattr(target, name)(*args)
        return target


@dataclass
class RemoteModel:
    """A model loaded on every host."""

    key: tuple
    description: Description

    @property
    def info(self) -> ModelInfo:
        return self.description.info


# Calls that prepare what every replica then uses (EncodesQueries): each host gets them, since
# the tiles that follow may go to any host.
ON_EVERY_HOST = frozenset({"encode_queries"})


class HostPool:
    """The executor's actors; `call` scatters a batch over them in chunks and gathers in order."""

    def __init__(self, actors: list):
        self.actors = actors
        self.device = torch.device("cpu")  # tiles stay on the driver's CPU until they travel
        self._busy = [0] * len(actors)
        self.chunks = [0] * len(actors)  # calls each host has served (tests and benchmarks read it)
        self._lock = threading.Lock()

    def _acquire(self, host: int | None = None) -> int:
        with self._lock:
            i = min(range(len(self.actors)), key=lambda k: self._busy[k]) if host is None else host
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
        d = described[0]
        log.info("ray: %s on %d workers (%s), batch %d", d.info.name, len(self.actors), d.device, d.batch)
        return RemoteModel(key, d)

    def describe(self, model: RemoteModel, views: Views) -> Description:
        return self._scatter([("describe", (model.key, views))])[0]

    def call(self, model: RemoteModel, views: Views, name: str, args: tuple, kwargs: dict, *, chunk: int) -> Any:
        """A call with a batch of tiles (tensor arguments) goes in chunks of `chunk` tiles to the
        least busy hosts, its results come back joined in order; a call in ON_EVERY_HOST goes to
        every host; any other call goes to one host."""
        if name in ON_EVERY_HOST:
            wire = to_wire((args, kwargs))
            return from_wire(self._scatter([("call", (model.key, views, name, *wire))] * len(self.actors),
                                           hosts=range(len(self.actors)))[0], self.device)
        batch = next((len(a) for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        starts = [0] if batch is None else range(0, batch, chunk)
        parts = self._scatter([
            ("call", (model.key, views, name, *to_wire(_rows(args, kwargs, start, start + chunk))))
            for start in starts
        ])
        parts = from_wire(parts, self.device)
        if batch is None:
            return parts[0]
        if isinstance(parts[0], Prediction):
            return Prediction.concat(parts)
        return [item for part in parts for item in part]  # per image (e.g. answers [b][q])

    def _scatter(self, calls: list[tuple[str, tuple]], hosts: Sequence[int] | None = None) -> list:
        """Each (method, args) to the least busy host (or to `hosts`, one each) at once; their
        results in order."""
        held, refs = [], []
        try:
            for n, (method, args) in enumerate(calls):
                held.append(self._acquire(None if hosts is None else hosts[n]))
                refs.append(getattr(self.actors[held[-1]], method).remote(*args))
            return ray.get(refs)
        except ray.exceptions.RayError as e:
            raise GeosegError(f"a model replica failed: {_first_line(e)}") from None
        finally:
            for i in held:
                self._release(i)

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)


class ReplicaModel(Forwarder):
    """The model on the hosts (or a view of it) as the driver sees it: `replica_model` gives it
    exactly the capabilities of the real one, and each call goes to the hosts."""

    def __init__(self, pool: HostPool, model: RemoteModel, views: Views, description: Description, chunk: int):
        super().__init__(description.members)
        self.info, self.device = description.info, pool.device
        self._pool, self._model, self._views, self._chunk = pool, model, views, chunk

    def _call(self, name: str, *args, **kwargs) -> Any:
        return self._pool.call(self._model, self._views, name, args, kwargs, chunk=self._chunk)

    def _view(self, name: str, *args) -> ReplicaModel:
        views = (*self._views, (name, args))
        return replica_model(self._pool, self._model, views, self._pool.describe(self._model, views), self._chunk)


def replica_model(pool: HostPool, model: RemoteModel, views: Views, description: Description, chunk: int) -> ReplicaModel:
    return forwarding_class(ReplicaModel, description.capabilities)(pool, model, views, description, chunk)


def _rows(args: tuple, kwargs: dict, start: int, stop: int) -> tuple[tuple, dict]:
    """Tiles start:stop of every tensor argument (a batch of tiles); other arguments as they are."""
    def cut(a):
        return a[start:stop] if isinstance(a, torch.Tensor) else a

    return tuple(cut(a) for a in args), {k: cut(v) for k, v in kwargs.items()}


def _convert(x: Any, leaf: Callable[[Any], Any]) -> Any:
    """`x` with `leaf` applied to everything inside lists, tuples, dicts, Predictions and Targets."""
    if isinstance(x, (list, tuple)):
        return type(x)(_convert(v, leaf) for v in x)
    if isinstance(x, dict):
        return {k: _convert(v, leaf) for k, v in x.items()}
    if isinstance(x, (Prediction, Target)):
        return replace(x, **{f.name: _convert(getattr(x, f.name), leaf) for f in fields(x)})
    return leaf(x)


def to_wire(x: Any) -> Any:
    """Tensors as numpy arrays (Ray passes those without a copy; a slice carries only itself)."""
    def leaf(v):
        if not isinstance(v, torch.Tensor):
            return v
        v = v.detach().cpu()
        return (v.float() if v.dtype == torch.bfloat16 else v).numpy()  # numpy has no bfloat16

    return _convert(x, leaf)


def from_wire(x: Any, device: torch.device) -> Any:
    """Arrays back to tensors on `device` (arrays from the object store are read-only: copied)."""
    return _convert(x, lambda v: torch.from_numpy(np.array(v)).to(device) if isinstance(v, np.ndarray) else v)


class RayExecutor:
    name = "ray"

    def __init__(self, *, workers: int = 2, address: str | None = None, replicas: int | None = None,
                 load: Callable[..., Segmenter] | None = None, init: dict[str, Any] | None = None):
        """Replicas on the cluster at `address` (None: start a local one), joined when the first
        job needs a model. `load(spec, device=, allow_pickle=)` runs on the workers; geoseg must be
        installed there too."""
        self.workers = max(1, workers)
        self._replicas, self._load = replicas, load or load_segmenter
        self._address, self._init = address, init
        self._started = False
        self._pool: HostPool | None = None
        self._models = LoadOnce()  # (spec, device, allow_pickle) -> RemoteModel

    def connect(self) -> None:
        """Join (or start) the cluster: not at construction, so that a batch whose jobs are all
        refused or already done starts none. BatchRunner calls it from the main thread before the
        first job that will need a model; `pool()` calls it for any other use."""
        if self._started or ray.is_initialized():
            return
        address = self._address
        # ray.init replaces the SIGTERM handler with one that exits on the spot; the caller's
        # (geoseg's console script stops as on Ctrl-C) is put back. Only the main thread has one.
        on_sigterm = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
        try:
            kwargs = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
            ray.init(address=address, **{**kwargs, **(self._init or {})})
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise GeosegError(f"--ray-address {address}: cannot join the Ray cluster ({_first_line(e)})") from None
        finally:
            if on_sigterm is not None:
                signal.signal(signal.SIGTERM, on_sigterm)
        self._started = True

    def placement(self) -> tuple[int, dict[str, float]]:
        """How many hosts and what each asks Ray for: one GPU each where there are GPUs."""
        self.connect()
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
            # ray.remote's overloads name each option; resources holds num_cpus/num_gpus
            host = ray.remote(**resources)(ModelHost)  # type: ignore[call-overload]
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
        chunk = opts.batch_size or model.description.batch
        # the pipeline reads one chunk per host per call; each chunk is what the local executor
        # would send as one batch, so the outputs match it exactly
        opts = replace(opts, batch_size=chunk * len(pool.actors))
        return job_segmenter(replica_model(pool, model, (), model.description, chunk), cancel=cancel), opts

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
