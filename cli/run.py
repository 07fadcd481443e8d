"""`geoseg segment`, `geoseg change`, `geoseg vectorize`: parse, call the pipeline, report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from geoseg.errors import EmptyResultError
from geoseg.io import remote
from geoseg.options import RunOptions

from .options import command_options

if TYPE_CHECKING:  # imported when a command runs: `geoseg --help` and completion need no torch
    from geoseg.run.outputs import RunSummary


def build_options(ctx: click.Context, kw: dict) -> RunOptions:
    """The library's RunOptions from Click's keyword arguments (named after its fields)."""
    return RunOptions(**kw, progress=not ctx.obj.get("quiet"))


def report(summary: RunSummary, as_json: bool, fail_on_empty: bool) -> None:
    """stdout: the JSON summary (--json) or one line per layer; exit 3 on empty with --fail-on-empty."""
    if as_json:
        click.echo(json.dumps(summary.to_dict(), ensure_ascii=False))
    else:
        for layer in summary.layers:
            kind = f" [{layer.change_type}]" if layer.change_type else ""
            click.echo(f"{summary.output}\t{layer.name}\t{layer.features} features{kind}")
    if fail_on_empty and summary.status == "empty":
        raise EmptyResultError(f"{summary.output}: found nothing (empty layers written)")



def write_preview(png: Path | None, rasters: list, summary: RunSummary, opts, titles=None) -> None:
    """The quick-look PNG, drawn from the vector file the run just wrote."""
    if png is not None:
        from geoseg.io import preview

        preview.preview_geopackage(rasters, summary.output, png, layers=[layer.name for layer in summary.layers],
                                   titles=titles, bands=opts.bands, output_format=opts.output_format,
                                   asset=opts.asset)


@click.command(no_args_is_help=True)
@click.argument("args", nargs=-1, required=True, metavar="SCENE... QUERY")
@click.option("--query", "extra_queries", multiple=True,
              help="A query (repeatable). When given, every positional argument is a scene.")
@command_options("segment")
@click.pass_context
def segment_command(ctx, args, extra_queries, as_json, fail_on_empty, dry_run, output, preview_png, **kw):
    """Segment SCENE(s) for QUERY and write polygons to a GeoPackage.

    Several scenes go into one layer (field `source`); several --query give a layer each, with
    the image features of every tile computed once for all of them.

    \b
      geoseg segment scene.tif "damaged buildings" -o damage.gpkg
      geoseg segment a.tif b.tif --query roads --query rivers -o out.gpkg --json
    """
    from geoseg.io import preview
    from geoseg.run import pipeline

    scenes, queries = (list(args), list(extra_queries)) if extra_queries else (list(args[:-1]), [args[-1]])
    if not scenes:
        raise click.UsageError("give at least one SCENE before the QUERY")
    opts = build_options(ctx, kw)
    if dry_run:
        click.echo(json.dumps(pipeline.dry_run(scenes, opts, queries=queries), indent=None if as_json else 2))
        return
    preview.check_output(preview_png, overwrite=opts.overwrite)
    summary = pipeline.segment(scenes, queries, output, opts)
    write_preview(preview_png, scenes, summary, opts)
    report(summary, as_json, fail_on_empty)


@click.command(no_args_is_help=True)
@click.argument("before")  # a path, URL or STAC Item: a plain string (click.Path would mangle https://)
@click.argument("after")
@click.argument("query", nargs=-1)
@click.option("--query", "extra_queries", multiple=True,
              help="A query (repeatable), as in `geoseg segment`; positional QUERYs may be given too.")
@command_options("change")
@click.pass_context
def change_command(ctx, before, after, query, extra_queries, as_json, fail_on_empty, dry_run, output, preview_png,
                   **kw):
    """Find QUERY's change between BEFORE and AFTER; writes `change_type` per polygon.

    The direction comes from the words of the query: "new", "built", "appeared"... -> appeared;
    "demolished", "removed", "destroyed", "lost", "cleared"... -> disappeared; otherwise both,
    each change in its own direction ("changed" from a model that cannot tell them apart).
    Several queries (positional or --query) give a layer each.

    \b
      geoseg change before.tif after.tif "new roads" -o roads.gpkg
      geoseg change before.tif after.tif --query "new roads" --query "demolished buildings" -o c.gpkg
    """
    from geoseg.io import preview
    from geoseg.run import pipeline

    query = (*query, *extra_queries)  # `segment`'s --query works here too: users learn one spelling
    if not query:
        raise click.UsageError("give a QUERY after BEFORE and AFTER, or --query")
    opts = build_options(ctx, kw)
    if dry_run:
        click.echo(json.dumps(pipeline.dry_run([before, after], opts, pair=True, queries=list(query)), indent=None if as_json else 2))
        return
    preview.check_output(preview_png, overwrite=opts.overwrite)
    summary = pipeline.change(before, after, list(query), output, opts)
    names = [remote.display_name(p) for p in (before, after)]
    write_preview(preview_png, [before, after], summary, opts, [f"before: {names[0]}", f"after: {names[1]}"])
    report(summary, as_json, fail_on_empty)


@click.command(no_args_is_help=True)
@click.argument("probabilities")
@click.option("--query", help="Query stored with the layer (default: the one recorded in the raster).")
@command_options("vectorize")
@click.pass_context
def vectorize_command(ctx, probabilities, query, as_json, fail_on_empty, output, preview_png, **kw):
    """Re-vectorise a probability raster (from --probabilities) without running a model.

    \b
      geoseg vectorize probs.tif --threshold 0.6 -o out.gpkg
    """
    from geoseg.io import preview
    from geoseg.run import revectorize  # torch-free: this command never loads a model

    opts = build_options(ctx, kw)
    preview.check_output(preview_png, overwrite=opts.overwrite)
    summary = revectorize.vectorize_raster(probabilities, output, opts, query=query)
    write_preview(preview_png, [probabilities], summary, opts)
    report(summary, as_json, fail_on_empty)
