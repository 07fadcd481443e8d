"""Where a batch's model runs: in this process (`local`) or on Ray actors (`ray`).

An executor gives each job a `JobSegmenter`: the shared model as that job sees it, which times the
job's model calls and stops the job at its next call when the batch is interrupted. It has exactly
the capabilities of the model (geoseg.models.base: change-aware, generative, ...), so a job runs
the same path as `geoseg segment` / `geoseg change` would. Ray is imported
only when the Ray executor is asked for (`pip install "geoseg[ray]"`).
"""

from __future__ import annotations

from geoseg.batch.executors.base import (
    Executor,
    Interrupted,
    JobMeter,
    JobSegmenter,
    LoadOnce,
    job_segmenter,
)
from geoseg.errors import GeosegError

__all__ = ["Executor", "Interrupted", "JobMeter", "JobSegmenter", "LoadOnce", "job_segmenter", "make_executor"]


def make_executor(
    kind: str = "local", *, workers: int = 1, ray_address: str | None = None, replicas: int | None = None,
) -> Executor:
    """`local` or `ray` (the latter needs the optional extra: pip install "geoseg[ray]")."""
    if kind == "local":
        from geoseg.batch.executors.local import LocalExecutor

        return LocalExecutor(workers=workers)
    if kind == "ray":
        try:
            from geoseg.batch.executors.ray_executor import RayExecutor
        except ImportError as e:
            raise GeosegError(
                f"--executor ray needs Ray ({e}); install it with: pip install \"geoseg[ray]\""
            ) from None
        return RayExecutor(workers=workers, address=ray_address, replicas=replicas)
    raise GeosegError(f"--executor must be local or ray, not {kind!r}")
