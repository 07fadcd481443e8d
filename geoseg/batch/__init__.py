"""Many scenes x many queries: read jobs (JSONL, CSV or bare paths), run them around one model, report
one JSON object per job, skip what is already done and resume what was interrupted.

    jobs ──read_jobs──▶ Job ──BatchRunner (N job threads)──▶ run.pipeline.segment / change
         (model shared through an executor: local lock or Ray replicas)      │
         sidecar beside each output (resume) ◀── tiles, checkpoints ─────────┘ ──▶ JobResult (JSON line)

    jobs.py       job files: parsing, defaults, output templates, checks while reading
    runner.py     BatchRunner and JobResult: job threads, skip / resume, one JSON line per job
    resume.py     the sidecar beside each output (finished tiles, probability checkpoints)
    executors/    where the model runs: this process (local) or Ray actors (ray)
"""

from geoseg.batch.jobs import MODES, Job, JobDefaults, read_jobs
from geoseg.batch.runner import BatchRunner, JobResult

__all__ = ["MODES", "BatchRunner", "Job", "JobDefaults", "JobResult", "read_jobs"]
