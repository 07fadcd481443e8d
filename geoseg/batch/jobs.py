"""Job files: the jobs of a batch read from JSONL, CSV or bare paths, each checked as it is read.

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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from geoseg.errors import InputError
from geoseg.io import remote
from geoseg.options import RunOptions, find_option, parse_options

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
