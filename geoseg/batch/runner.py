"""Running a batch: each job around the shared model, one JSON line per job (JobResult), finished
work skipped and interrupted work resumed (geoseg.batch.resume)."""


from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoseg.batch import resume
from geoseg.batch.executors import Executor, Interrupted
from geoseg.batch.jobs import Job, JobDefaults
from geoseg.errors import GeosegError, InputError
from geoseg.io import formats
from geoseg.models.registry import default_model
from geoseg.options import RunOptions
from geoseg.run import pipeline
from geoseg.run.outputs import RunSummary

log = logging.getLogger("geoseg")


# ---------------------------------------------------------------- results


@dataclass
class JobResult:
    """The JSON line a job leaves on stdout."""

    job: int
    where: str
    status: str  # ok | empty | skipped | error | interrupted
    mode: str
    inputs: list[str]
    queries: list[str]
    output: str
    layers: list[dict] = field(default_factory=list)
    features: dict[str, int] = field(default_factory=dict)
    tiles: int = 0
    tiles_predicted: int = 0
    tiles_resumed: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    key: str | None = None
    message: str | None = None
    error: str | None = None
    error_type: str | None = None

    @classmethod
    def start(cls, job: Job) -> JobResult:
        return cls(job.index, job.where, "error", str(job.mode), _as_list(job.inputs), _as_list(job.queries),
                   str(job.output or ""))

    def fill_layers(self, layers: list[dict]) -> None:
        self.layers = layers
        self.features = {}
        for layer in layers:
            self.features[layer["query"]] = self.features.get(layer["query"], 0) + layer["features"]

    def to_dict(self) -> dict:
        out = {"job": self.job, "line": self.where}
        out |= {k: v for k, v in self.__dict__.items() if k not in ("job", "where") and v is not None}
        return out


# ---------------------------------------------------------------- running


class BatchRunner:
    """Runs jobs on `executor.workers` threads around the executor's shared model(s).

    Jobs writing the same output run one after another in their order; others overlap, so one
    job's reading, vectorising and writing happen while another job's tiles are on the model.
    """

    def __init__(self, executor: Executor, *, on_error: str = "skip", resume: bool = False, force: bool = False,
                 defaults: JobDefaults | None = None):
        if on_error not in ("skip", "fail"):
            raise InputError(f"--on-error must be skip or fail, not {on_error!r}")
        self.executor, self.on_error, self.resume, self.force = executor, on_error, resume, force
        self.defaults = defaults or JobDefaults()
        self.cancel = threading.Event()  # Ctrl-C: running jobs stop at their next model call
        self.stopping = False  # --on-error fail after a failure: start no more jobs
        self.counts: Counter[str] = Counter()
        self.not_started = 0
        self._executor_started = False

    def run(self, jobs: Iterable[Job]) -> Iterator[JobResult]:
        """Yield each job's result as it finishes; on KeyboardInterrupt, the running jobs stop at a
        tile boundary, their results are yielded, then the interrupt is raised again."""
        workers = max(1, self.executor.workers)
        pending: set[Future] = set()
        last_for_output: dict[str, Future] = {}
        source = iter(jobs)
        exhausted = False
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="geoseg-job") as pool:
            try:
                while True:
                    while not exhausted and not self.stopping and len(pending) < 2 * workers:
                        job = next(source, None)
                        if job is None:
                            exhausted = True
                            break
                        self._start_executor_for(job)
                        out = _output_key(job)
                        fut = pool.submit(self._run_after, last_for_output.get(out) if out is not None else None, job)
                        # results that finish together are reported in job order (a tag on the future)
                        fut.job_index = job.index  # type: ignore[attr-defined]
                        if out is not None:
                            last_for_output[out] = fut
                        pending.add(fut)
                    if not pending:
                        break
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    yield from self._collect(done)
            except KeyboardInterrupt:
                self.cancel.set()
                self.stopping = True
                for fut in pending:
                    fut.cancel()
                yield from self._collect(wait(pending).done)
                raise
            if not exhausted:
                self.not_started += sum(1 for _ in source)

    def _start_executor_for(self, job: Job) -> None:
        """Start the executor (join or start a Ray cluster) here, in the main thread (Ray installs
        its signal handlers there), before the first job that will need a model: a batch whose
        jobs are all refused starts none. A job it misjudges starts the executor itself."""
        start = getattr(self.executor, "connect", None)  # the local executor has nothing to start
        if start is None or self._executor_started or job.problem:
            return
        try:
            opts = job.run_options(self.defaults.options)
            if job.templated:
                _make_directories(job.output)
            formats.check_output(job.output, output_format=opts.output_format,
                                 overwrite=opts.overwrite or self.force, append=opts.append)
        except GeosegError:  # refused (or already done): its job thread reports why
            return
        start()
        self._executor_started = True

    def _collect(self, done: Iterable[Future]) -> Iterator[JobResult]:
        for fut in sorted(done, key=lambda f: getattr(f, "job_index", 0)):
            if fut.cancelled() or fut.result() is None:
                self.not_started += 1
                continue
            result = fut.result()
            self.counts[result.status] += 1
            yield result

    def _run_after(self, previous: Future | None, job: Job) -> JobResult | None:
        if previous is not None:
            wait([previous])
        if self.stopping or self.cancel.is_set():
            return None
        result = self.run_job(job)
        if result.status == "error" and self.on_error == "fail":
            self.stopping = True  # here, so this thread's next job already sees it
        return result

    def run_job(self, job: Job) -> JobResult:
        """Run one job; every failure becomes an error result, never an exception."""
        result = JobResult.start(job)
        started = time.perf_counter()
        model = None
        try:
            if job.problem:
                raise InputError(job.problem)
            opts = job.run_options(self.defaults.options)
            spec = opts.model or default_model(job.mode)
            key = resume.job_key(mode=job.mode, inputs=job.inputs, queries=job.queries, output=job.output,
                                 parameters=opts.record(), model=self.executor.model_identity(spec))
            result.key = key
            if job.templated:
                _make_directories(job.output)
            sidecar = resume.Sidecar(job.output)
            try:
                if self._skip_if_done(sidecar, key, result):
                    return result
                if self.force and not opts.append:
                    opts.overwrite = True
                formats.check_output(job.output, output_format=opts.output_format, overwrite=opts.overwrite,
                                     append=opts.append)
                model, opts = self.executor.job_model(spec, opts, self.cancel)
                checkpoints = sidecar.begin(key, resume=self.resume, spec=_job_spec(job))
                summary = _run_pipeline(job, opts, model, checkpoints)
                layers = [dict(name=ly.name, query=ly.query, features=ly.features, change_type=ly.change_type)
                          for ly in summary.layers]
                record = {"status": summary.status, "run_id": summary.run_id, "tiles": summary.tiles, "layers": layers}
                sidecar.finish(key, record, appended=opts.append)
            finally:
                sidecar.close()
            result.status, result.run_id, result.tiles = summary.status, summary.run_id, summary.tiles
            result.fill_layers(layers)
            result.tiles_predicted = checkpoints.tiles_predicted
            result.tiles_resumed = checkpoints.tiles_resumed
        except Interrupted as e:
            result.status, result.message = "interrupted", str(e)
        except GeosegError as e:
            result.error, result.error_type = str(e), type(e).__name__
        except Exception as e:  # a bug or an unforeseen library error: isolate it, keep the batch going
            log.debug("job %s failed", job.where, exc_info=True)
            result.error, result.error_type = f"{job.where}: {type(e).__name__}: {e}", type(e).__name__
        finally:
            result.seconds = {"total": round(time.perf_counter() - started, 3)}
            if model is not None:
                m = model.meter
                result.seconds |= {"model": round(m.model_seconds, 3), "model_wait": round(m.wait_seconds, 3)}
        if result.error and not result.error.startswith(job.where):
            result.error = f"{job.where}: {result.error}"
        log.info("%s: %s %s", job.where, result.status, result.output)
        return result

    def _skip_if_done(self, sidecar: resume.Sidecar, key: str, result: JobResult) -> bool:
        if self.force:
            return False
        done = sidecar.finished(key)
        if done is None:
            return False
        result.status, result.run_id, result.tiles = "skipped", done.get("run_id"), done.get("tiles", 0)
        result.fill_layers(done.get("layers", []))
        result.message = (f"already done ({done['finished_utc']}) with the same inputs, model and parameters; "
                          "--force redoes it")
        return True

    def report(self, seconds: float) -> str:
        """The closing line on stderr."""
        total = sum(self.counts.values())
        if total and self.counts["skipped"] == total:
            done = "the job was" if total == 1 else f"all {total} jobs were"
            return f"nothing to do: {done} already done (--force redoes them)"
        parts = [f"{n} {status}" for status, n in sorted(self.counts.items())]
        if self.not_started:
            parts.append(f"{self.not_started} not started")
        return f"{total} jobs in {seconds:.1f} s: {', '.join(parts) or 'none'}"


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, list) else ([] if value is None else [value])


def _output_key(job: Job) -> str | None:
    if job.problem or not job.output:
        return None
    return str(Path(job.output).resolve())


def _make_directories(output: str) -> None:
    """The directories of a templated output: `find ... | geoseg batch - --output-template
    'out/{stem}.gpkg'` names folders that nobody made (an explicit `-o`/"output" must exist)."""
    try:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{output}: cannot make its directory ({e.strerror}); check --output-template") from None


def _job_spec(job: Job) -> dict:
    return {"mode": job.mode, "inputs": job.inputs, "queries": job.queries, "output": job.output, "options": job.options}


def _run_pipeline(job: Job, opts: RunOptions, model, checkpoints: resume.JobCheckpoints) -> RunSummary:
    if job.mode == "change":
        before, after = job.inputs
        return pipeline.change(before, after, job.queries, job.output, opts, segmenter=model, checkpoints=checkpoints)
    return pipeline.segment(job.inputs, job.queries, job.output, opts, segmenter=model, checkpoints=checkpoints)
