"""What every executor shares: the job's view of the model (JobSegmenter, with exactly the model's
capabilities), the Executor protocol, loading a model once per process, and Interrupted."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from geoseg.errors import GeosegError
from geoseg.models.base import (
    CAPABILITIES,
    Answer,
    ChangeAware,
    Dialogue,
    EncodesQueries,
    Generative,
    Grounded,
    KnowsConcepts,
    ModelInfo,
    Prediction,
    ProvenanceSource,
    Segmenter,
    capabilities,
    declared_members,
)


class Interrupted(GeosegError):
    """The batch was interrupted (Ctrl-C) while this job ran; its finished tiles are kept."""


class Forwarder:
    """A Segmenter in front of another one that forwards each call by name (`_call`) and wraps each
    view it gets back (`_view`, e.g. Generative.grounded). `forwarding_class` adds exactly the
    capabilities of the model behind it: the mixins below, one per capability in CAPABILITIES."""

    info: ModelInfo
    device: torch.device

    def __init__(self, members: dict[str, Any]):
        for name, value in members.items():  # the capabilities' data members (Grounded.answers)
            setattr(self, name, value)

    def predict(self, images: torch.Tensor, queries) -> Prediction:
        return self._call("predict", images, queries)

    def _call(self, name: str, *args, **kwargs) -> Any:
        raise NotImplementedError

    def _view(self, name: str, *args) -> Forwarder:
        raise NotImplementedError


class _Forwarding:
    """What the capability mixins below call on the Forwarder they are mixed into (types only)."""

    _call: Callable[..., Any]
    _view: Callable[..., Forwarder]


class _ChangeAware(_Forwarding):
    def change_types(self, query: str) -> tuple[str, ...]:
        return self._call("change_types", query)

    def predict_change(self, after, before, queries, *, direction="appeared") -> Prediction:
        return self._call("predict_change", after, before, queries, direction=direction)


class _Generative(_Forwarding):
    def answer(self, images, queries) -> list[list[Answer]]:
        return self._call("answer", images, queries)

    def grounded(self, answers) -> Forwarder:
        return self._view("grounded", answers)


class _Dialogue(_Forwarding):
    def with_history(self, history) -> Forwarder:
        return self._view("with_history", history)


class _Grounded:
    """Only a data member (`answers`), copied by Forwarder.__init__."""


class _ProvenanceSource(_Forwarding):
    def provenance(self, query_index: int) -> dict:
        return self._call("provenance", query_index)


class _EncodesQueries(_Forwarding):
    def encode_queries(self, queries) -> None:
        return self._call("encode_queries", queries)


class _KnowsConcepts(_Forwarding):
    def check_queries(self, queries) -> list:
        return self._call("check_queries", queries)


FORWARDERS: dict[type, type] = {
    ChangeAware: _ChangeAware, Generative: _Generative, Dialogue: _Dialogue, Grounded: _Grounded,
    ProvenanceSource: _ProvenanceSource, EncodesQueries: _EncodesQueries, KnowsConcepts: _KnowsConcepts,
}
assert set(FORWARDERS) == set(CAPABILITIES), "every capability needs its forwarding mixin"


@functools.cache
def forwarding_class(base: type[Forwarder], caps: tuple[type, ...]) -> type:
    """`base` with the forwarding mixins of `caps`: isinstance(obj, C) holds iff C is in caps."""
    if not caps:
        return base
    name = f"{base.__name__}[{', '.join(c.__name__ for c in caps)}]"
    return type(name, (*(FORWARDERS[c] for c in caps), base), {})


@dataclass
class JobMeter:
    """One job's time in its model calls (shared by the views the job's model hands out)."""

    model_seconds: float = 0.0  # inside the model (local) or waiting for the replicas (Ray)
    wait_seconds: float = 0.0  # waiting for another job to leave the shared model
    calls: int = 0


class JobSegmenter(Forwarder):
    """A Segmenter for one job in front of a shared model (a lock) or a replica pool; every call,
    whatever the capability, is timed, takes the lock and stops when the batch is interrupted."""

    def __init__(
        self, backend: Segmenter, members: dict[str, Any], *, lock: AbstractContextManager | None = None,
        cancel: threading.Event | None = None, meter: JobMeter | None = None,
    ):
        super().__init__(members)
        self.info, self.device = backend.info, backend.device
        self._backend, self._lock, self._cancel = backend, lock, cancel
        self.meter = meter or JobMeter()  # what batch reports as the job's model time

    def _call(self, name: str, *args, **kwargs) -> Any:
        if self._cancel is not None and self._cancel.is_set():
            raise Interrupted("interrupted; its finished tiles are kept: run the batch again with --resume")
        t0 = time.perf_counter()
        with self._lock or nullcontext():
            t1 = time.perf_counter()
            out = getattr(self._backend, name)(*args, **kwargs)
        self.meter.wait_seconds += t1 - t0
        self.meter.model_seconds += time.perf_counter() - t1
        self.meter.calls += 1
        return out

    def _view(self, name: str, *args) -> JobSegmenter:
        return job_segmenter(self._call(name, *args), lock=self._lock, cancel=self._cancel, meter=self.meter)


def job_segmenter(
    backend: Segmenter, *, lock: AbstractContextManager | None = None, cancel: threading.Event | None = None,
    meter: JobMeter | None = None,
) -> JobSegmenter:
    """`backend` as one job sees it, with exactly `backend`'s capabilities."""
    caps = capabilities(backend)
    cls = forwarding_class(JobSegmenter, caps)
    return cls(backend, declared_members(backend, caps), lock=lock, cancel=cancel, meter=meter)


class Executor(Protocol):
    name: str
    workers: int  # jobs in flight at once in this process

    def model_identity(self, spec: str) -> dict[str, Any]: ...
    def job_model(self, spec: str, opts: Any, cancel: threading.Event) -> tuple[JobSegmenter, Any]: ...
    def close(self) -> None: ...


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
