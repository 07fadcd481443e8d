"""One model in this process, shared by the batch's job threads.

Model calls take turns behind a lock (the model's own threads do the arithmetic, and a second copy
would only double the memory); everything around them, reading tiles, blending, vectorising and
writing GeoPackages, runs in the job threads at the same time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from geoseg.batch import resume
from geoseg.batch.executors.base import JobSegmenter, LoadOnce, job_segmenter
from geoseg.models.base import Segmenter
from geoseg.models.registry import load_segmenter


class LocalExecutor:
    name = "local"

    def __init__(self, workers: int = 1, load: Callable[..., Segmenter] | None = None):
        """`load(spec, device=, allow_pickle=)` builds a model; tests pass their doubles here."""
        self.workers = max(1, workers)
        self._load = load or load_segmenter
        self._models = LoadOnce()  # (spec, device, allow_pickle) -> (model, its predict lock)

    def model_identity(self, spec: str) -> dict[str, Any]:
        if self._load is load_segmenter:
            return resume.model_fingerprint(spec)
        # a custom loader (tests, library callers): the loaded model's own description
        return {"spec": spec, "info": self.shared_model(spec)[0].info.to_dict()}

    def shared_model(self, spec: str, device: str = "auto", allow_pickle: bool = False) -> tuple[Segmenter, threading.Lock]:
        """Load a model once per process (a failure too: every job gets the same error at once)."""
        return self._models.get(
            (spec, device, allow_pickle),
            lambda: (self._load(spec, device=device, allow_pickle=allow_pickle), threading.Lock()),
        )

    def job_model(self, spec: str, opts, cancel: threading.Event) -> tuple[JobSegmenter, Any]:
        model, lock = self.shared_model(spec, opts.device, opts.allow_pickle)
        return job_segmenter(model, lock=lock, cancel=cancel), opts

    def close(self) -> None:
        self._models.clear()
