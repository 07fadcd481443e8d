"""Where a batch's model runs: in this process (`local`) or on Ray actors (`ray`).

An executor gives each job a `JobSegmenter`: the shared model as that job sees it, which times the
job's model calls and stops the job at its next call when the batch is interrupted. Ray is imported
only when the Ray executor is asked for (`pip install "geoseg[ray]"`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

import torch

from geoseg.errors import GeosegError
from geoseg.models.base import ModelInfo, Prediction


class Interrupted(GeosegError):
    """The batch was interrupted (Ctrl-C) while this job ran; its finished tiles are kept."""


class JobSegmenter:
    """A Segmenter for one job in front of a shared model (a lock) or a replica pool."""

    def __init__(
        self, info: ModelInfo, device: torch.device, call: Callable[..., Prediction], *,
        lock: AbstractContextManager | None = None, cancel: threading.Event | None = None,
    ):
        self.info, self.device = info, device
        self._call, self._lock, self._cancel = call, lock, cancel
        self.model_seconds = 0.0  # inside the model (local) or waiting for the replicas (Ray)
        self.wait_seconds = 0.0  # waiting for another job to leave the shared model
        self.calls = 0

    def predict(self, images: torch.Tensor, queries, *, before: torch.Tensor | None = None) -> Prediction:
        if self._cancel is not None and self._cancel.is_set():
            raise Interrupted("interrupted; its finished tiles are kept: run the batch again with --resume")
        t0 = time.perf_counter()
        with self._lock or nullcontext():
            t1 = time.perf_counter()
            out = self._call(images, queries, before=before)
        self.wait_seconds += t1 - t0
        self.model_seconds += time.perf_counter() - t1
        self.calls += 1
        return out


class Executor(Protocol):
    name: str
    workers: int  # jobs in flight at once in this process

    def model_identity(self, spec: str) -> dict[str, Any]: ...
    def job_model(self, spec: str, opts: Any, cancel: threading.Event) -> tuple[JobSegmenter, Any]: ...
    def close(self) -> None: ...


def make_executor(
    kind: str = "local", *, workers: int = 1, ray_address: str | None = None, replicas: int | None = None,
) -> Executor:
    """`local` or `ray` (the latter needs the optional extra: pip install "geoseg[ray]")."""
    if kind == "local":
        from geoseg.executors.local import LocalExecutor

        return LocalExecutor(workers=workers)
    if kind == "ray":
        try:
            from geoseg.executors.ray_executor import RayExecutor
        except ImportError as e:
            raise GeosegError(
                f"--executor ray needs Ray ({e}); install it with: pip install \"geoseg[ray]\""
            ) from None
        return RayExecutor(workers=workers, address=ray_address, replicas=replicas)
    raise GeosegError(f"--executor must be local or ray, not {kind!r}")


class LoadOnce:
    """Models loaded once per process and key; a failed load is remembered too, so every job
    that asks gets the same error at once instead of trying again."""

    def __init__(self) -> None:
        self._entries: dict[Any, Any] = {}
        self._guard = threading.Lock()  # a second job waits for the first load instead of loading again

    def get(self, key: Any, load: Callable[[], Any]) -> Any:
        with self._guard:
            entry = self._entries.get(key)
            if entry is None:
                try:
                    entry = load()
                except GeosegError as e:
                    entry = e
                self._entries[key] = entry
        if isinstance(entry, GeosegError):
            raise type(entry)(str(entry))
        return entry

    def clear(self) -> None:
        self._entries.clear()
