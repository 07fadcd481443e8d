"""`geoseg batch`: run a file (or stdin) of jobs; one JSON line per job on stdout."""

from __future__ import annotations

import json
import time

import click

from .interrupt import exit_code, what_stopped
from .options import click_option

# geoseg.batch and the executors import torch; they are imported when the command runs.
JOB_MODES = ("segment", "change")  # geoseg.batch.MODES (tests/test_cli.py checks they agree)


def _settings(ctx, param, values: tuple[str, ...]) -> dict[str, str | bool]:
    out: dict[str, str | bool] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not key.strip():
            raise click.BadParameter(f"{item!r}: write KEY=VALUE, e.g. threshold=0.6")
        out[key.strip()] = value if sep else True
    return out


@click.command(no_args_is_help=True)
@click.argument("jobs", metavar="JOBS")
@click.option("--on-error", type=click.Choice(["skip", "fail"]), default="skip", show_default=True,
              help="skip: report a failed job and go on; fail: start no more jobs after a failure.")
@click.option("--resume", is_flag=True,
              help="Continue jobs that a crash or Ctrl-C interrupted, from their last finished tiles.")
@click.option("--force", is_flag=True, help="Redo jobs that are already done (their outputs are replaced).")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Jobs in flight at once; their reading, vectorising and writing overlap around the model.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where the model runs: this process, or replicas on a Ray cluster (pip install \"geoseg[ray]\").")
@click.option("--ray-address", help="Ray cluster to join (auto, ray://HOST:10001, ...); default: start one here.")
@click.option("--replicas", type=click.IntRange(1),
              help="Model replicas on Ray (default: one per GPU; 1 on a cluster without GPUs).")
@click.option("--query", "queries", multiple=True,
              help="Query (repeatable) for jobs that name none, e.g. lines that are bare paths.")
@click.option("--output-template",
              help="Output of jobs that name none: {dir} {stem} {name} {index} of the first input "
                   "(bare paths default to {dir}/{stem}.gpkg).")
@click.option("--mode", type=click.Choice(JOB_MODES), default="segment", show_default=True,
              help="Mode of jobs that do not say.")
@click_option("model", help="Model for jobs that do not say (registry name, directory or hub id).")
@click_option("device", default=None, show_default=False, help="Device for every job: auto, cpu, cuda, cuda:1, mps.")
@click_option("overwrite", help="Replace existing outputs that are not a finished job's.")
@click.option("--set", "settings", multiple=True, callback=_settings, metavar="KEY=VALUE",
              help="An option for every job, named as in a job's `options` (the job's own value wins), "
                   "e.g. --set threshold=0.6 --set min-area=50m2.")
@click.pass_context
def batch_command(ctx, jobs, on_error, resume, force, workers, executor, ray_address, replicas, queries,
                  output_template, mode, model, device, overwrite, settings):
    """Run the jobs in JOBS (a JSONL or CSV file, or - for stdin); one JSON line per job on stdout.

    A job: {"mode": "segment"|"change", "inputs": [...], "queries": [...], "output": "x.gpkg",
    "options": {"threshold": 0.6, ...}}. CSV: the same columns, lists separated by |. A line that
    is a bare path is a job on that scene with --query and --output-template.

    The model loads once; each tile's image features serve every query of its job. Finished jobs
    are recorded in OUTPUT.geoseg.sqlite and skipped when the batch runs again; --resume continues
    interrupted ones without redoing finished tiles. Exit code 1 when a job failed.

    \b
      geoseg batch jobs.jsonl --workers 2
      find scenes -name '*.tif' | geoseg batch - --query buildings --output-template 'out/{stem}.gpkg'
      geoseg batch jobs.csv --executor ray --ray-address auto
    """
    from geoseg import batch
    from geoseg.batch.executors import make_executor

    options = dict(settings)
    for name, value in (("model", model), ("device", device), ("overwrite", overwrite or None)):
        if value is not None:
            options[name] = value
    defaults = batch.JobDefaults(mode=mode, queries=list(queries), output_template=output_template, options=options)
    jobs_stream = batch.read_jobs(click.open_file("-") if jobs == "-" else jobs, defaults)
    quiet = ctx.obj.get("quiet", 0) if ctx.obj else 0
    started = time.perf_counter()
    ex = make_executor(executor, workers=workers, ray_address=ray_address, replicas=replicas)
    runner = batch.BatchRunner(ex, on_error=on_error, resume=resume, force=force, defaults=defaults)
    try:
        for result in runner.run(jobs_stream):
            click.echo(json.dumps(result.to_dict(), ensure_ascii=False))
    except KeyboardInterrupt as stop:
        click.echo(f"geoseg: batch {what_stopped(stop)}; run it again with --resume to continue where it stopped",
                   err=True)
        ctx.exit(exit_code(stop))
    finally:
        ex.close()
    if not quiet:
        click.echo(f"geoseg: batch: {runner.report(time.perf_counter() - started)}", err=True)
    if runner.counts["error"]:
        ctx.exit(1)
