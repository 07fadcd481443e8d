"""Many scenes x many queries: read jobs (JSONL, CSV or bare paths), run them around one model, report
one JSON object per job, skip what is already done and resume what was interrupted.

    jobs ──read_jobs──▶ Job ──BatchRunner (N job threads)──▶ pipeline.segment / change
         (model shared through an executor: local lock or Ray replicas)      │
         sidecar beside each output (geoseg.resume) ◀── tiles, checkpoints ──┘ ──▶ JobResult (JSON line)

A job line (JSONL):
    {"mode": "segment", "inputs": ["a.tif"], "queries": ["roads", "rivers"], "output": "a.gpkg",
     "options": {"threshold": 0.6, "min-area": "50m2"}}
CSV has the columns mode, inputs, queries, output, options (a JSON object); lists are separated by `|`,
and any other column named like an option sets that option. A line that is neither (e.g. from `find`)
is a path: a job with that one input and the batch's default queries and output template.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from geoseg import formats, pipeline, remote, resume
from geoseg.errors import GeosegError, InputError
from geoseg.executors import Executor, Interrupted
from geoseg.models.registry import default_model
from geoseg.options import RunOptions, find_option, parse_options
from geoseg.outputs import RunSummary

log = logging.getLogger("geoseg")

MODES = ("segment", "change")
JOB_KEYS = ("mode", "inputs", "queries", "output", "options")
PATH_LINE_TEMPLATE = "{dir}/{stem}.gpkg"


# ---------------------------------------------------------------- jobs


@dataclass
class Job:
    """One line of the jobs stream. `problem` is set when the line itself is unusable."""

    index: int  # 1-based position among the jobs
    where: str  # "jobs.jsonl:3", for messages
    mode: str = ""  # empty: the batch default
    inputs: list[str] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    output: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None
    templated: bool = False  # output from --output-template: its directories are made when it runs

    def run_options(self, defaults: dict[str, Any]) -> RunOptions:
        """RunOptions from the batch defaults (--set, parsed) overlaid with the job's own options."""
        settings = {**defaults, **parse_options(self.options, self.where)}
        return RunOptions(**settings, progress=False)


@dataclass
class JobDefaults:
    """What the batch command line supplies to jobs that leave it out."""

    mode: str = "segment"
    queries: list[str] = field(default_factory=list)
    output_template: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # option names -> values, as `--set` gives them

    def __post_init__(self) -> None:
        # Checked once, before any job runs; afterwards keyed by RunOptions field.
        self.options = parse_options(self.options, "--set")


def read_jobs(source: str | Path | IO[str], defaults: JobDefaults | None = None, *, name: str | None = None) -> Iterator[Job]:
    """Jobs from a JSONL/CSV/paths file, or an open text stream (stdin), read lazily line by line."""
    defaults = defaults or JobDefaults()
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():  # checked now, before any model or cluster starts
            raise InputError(f"{path}: no such jobs file; give a JSONL or CSV file, or - for stdin")
        return _read_file(path, name or path.name, defaults)
    return _parse(source, name or "<stdin>", None, defaults)


def _read_file(path: Path, name: str, defaults: JobDefaults) -> Iterator[Job]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        yield from _parse(f, name, _format_from_suffix(path), defaults)


def _format_from_suffix(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    return "csv" if suffix == ".csv" else None


def _parse(stream: IO[str], name: str, fmt: str | None, defaults: JobDefaults) -> Iterator[Job]:
    lines = ((n, line) for n, line in enumerate(stream, 1))
    content = ((n, line) for n, line in lines if line.strip() and not line.lstrip().startswith("#"))
    first = next(content, None)
    if first is None:
        return
    fmt = fmt or _sniff(first[1])
    index = 0
    if fmt == "csv":
        header = next(csv.reader([first[1]]))
        for n, row in _csv_rows(header, content):
            index += 1
            yield _job_from_csv(row, index, f"{name}:{n}", defaults)
        return
    for n, line in _chain(first, content):
        index += 1
        where = f"{name}:{n}"
        if fmt == "jsonl":
            yield _job_from_json(line, index, where, defaults)
        else:
            yield _job_from_path_line(line, index, where, defaults)


def _chain(first, rest):
    yield first
    yield from rest


def _sniff(line: str) -> str:
    stripped = line.strip()
    if stripped.startswith(("{", "[")):  # JSON (a list is a mistake reported per line)
        return "jsonl"
    if "inputs" in [c.strip().lower() for c in next(csv.reader([stripped]))]:
        return "csv"
    return "paths"


def _csv_rows(header: list[str], content) -> Iterator[tuple[int, dict[str, Any]]]:
    header = [h.strip().lower() for h in header]
    for n, line in content:
        values = next(csv.reader(io.StringIO(line)), [])
        yield n, dict(zip(header, values, strict=False)) | ({"__extra__": values[len(header):]} if len(values) > len(header) else {})


def _job_from_json(line: str, index: int, where: str, defaults: JobDefaults) -> Job:
    try:
        fields = json.loads(line)
    except json.JSONDecodeError as e:
        return Job(index, where, problem=f"{where}: not a JSON object ({e.msg} at column {e.colno})")
    if not isinstance(fields, dict):
        return Job(index, where, problem=f"{where}: a job line must be a JSON object with keys {', '.join(JOB_KEYS)}")
    unknown = sorted(set(fields) - set(JOB_KEYS))
    if unknown:
        return Job(index, where, problem=f"{where}: unknown key(s) {', '.join(unknown)}; a job has {', '.join(JOB_KEYS)}")
    return _complete(Job(index, where, **{k: v for k, v in fields.items()}), defaults)


def _job_from_csv(row: dict[str, str], index: int, where: str, defaults: JobDefaults) -> Job:
    if row.pop("__extra__", None):
        return Job(index, where, problem=f"{where}: more cells than header columns; quote cells that contain commas")
    fields: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for column, cell in row.items():
        cell = (cell or "").strip()
        if not cell:
            continue
        if column in ("inputs", "queries"):
            fields[column] = [part.strip() for part in cell.split("|") if part.strip()]
        elif column == "options":
            try:
                options.update(json.loads(cell))
            except (json.JSONDecodeError, TypeError, ValueError):
                return Job(index, where, problem=f"{where}: the options cell must be a JSON object, e.g. {{\"threshold\": 0.6}}")
        elif column in ("mode", "output"):
            fields[column] = cell
        elif find_option(column):
            options[column] = cell
        else:
            return Job(index, where, problem=f"{where}: unknown column {column!r}; use {', '.join(JOB_KEYS)} or option names")
    return _complete(Job(index, where, **fields, options=options), defaults)


def _job_from_path_line(line: str, index: int, where: str, defaults: JobDefaults) -> Job:
    # one scene per line (find), or a before<TAB>after pair (paste) for change jobs
    inputs = [p for p in line.rstrip("\r\n").split("\t") if p.strip()]
    job = Job(index, where, inputs=inputs)
    if defaults.output_template is None:
        job.output = _render(PATH_LINE_TEMPLATE, job)
    return _complete(job, defaults)


def _complete(job: Job, defaults: JobDefaults) -> Job:
    """Fill what the line left out from the defaults, then check the job's shape."""
    job.mode = job.mode or defaults.mode
    if isinstance(job.inputs, str):
        job.inputs = [job.inputs]
    if isinstance(job.queries, str):
        job.queries = [job.queries]
    if not job.queries:
        job.queries = list(defaults.queries)
    if not job.output and defaults.output_template and job.inputs:
        job.output = _render(defaults.output_template, job)
        job.templated = True
    job.problem = _shape_problem(job)
    return job


def _render(template: str, job: Job) -> str:
    """The output path for a job from `template`. A remote input (URL, s3://, /vsi...) has no
    local directory: {dir} is the current one, {stem}/{name} come from the URL's file name."""
    given = str(job.inputs[0])
    if remote.is_remote(given):
        first = Path(".") / (remote.display_name(given) or "scene")
    else:
        first = Path(given)
    try:
        return template.format(dir=str(first.parent), stem=first.stem, name=first.name, index=job.index)
    except (KeyError, IndexError, ValueError) as e:
        raise InputError(f"--output-template {template!r}: {e}; use {{dir}} {{stem}} {{name}} {{index}}") from None


def _shape_problem(job: Job) -> str | None:
    w = job.where
    if job.mode not in MODES:
        return f"{w}: mode must be segment or change, not {job.mode!r}"
    if not isinstance(job.inputs, list) or not job.inputs or not all(isinstance(p, str) and p for p in job.inputs):
        return f"{w}: inputs must be a non-empty list of paths"
    if job.mode == "change" and len(job.inputs) != 2:
        return f"{w}: a change job takes two inputs [before, after], not {len(job.inputs)}"
    if not isinstance(job.queries, list) or not job.queries or not all(isinstance(q, str) for q in job.queries):
        return f"{w}: no queries; give \"queries\": [...] in the job or --query on the command line"
    if not isinstance(job.output, str) or not job.output:
        return f"{w}: no output; give \"output\" in the job or --output-template on the command line"
    if not isinstance(job.options, dict):
        return f"{w}: options must be a JSON object of option names (without dashes) and values"
    try:  # checked while reading: a misspelt or out-of-range option is reported on its own line
        parse_options(job.options, w)
    except InputError as e:
        return str(e)
    return None


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
