"""Click options generated from the library's one options model (geoseg.options), plus the few
that belong to a command rather than to a run (output, --json, --dry-run, --preview)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from geoseg.options import OPTIONS, Option, options_for


class LibraryValue(click.ParamType):
    """A value the library parses (bands, nodata, min-area, gsd): one parser for CLI and jobs."""

    def __init__(self, option: Option):
        self.option = option
        self.name = option.type_name

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        assert self.option.parser is not None  # only "value" options get this type
        try:
            return self.option.parser(value)
        except ValueError as e:
            self.fail(f"{value!r}: {e}", param, ctx)


def click_type(option: Option) -> Any:
    limited = option.low is not None or option.high is not None
    if option.kind == "int":
        low, high = (None if b is None else int(b) for b in (option.low, option.high))  # whole() bounds are ints
        return click.IntRange(low, high) if limited else int
    if option.kind == "float":
        return click.FloatRange(option.low, option.high) if limited else float
    if option.kind == "choice":
        return click.Choice(option.choices)
    if option.kind == "path":
        return click.Path(dir_okay=False, path_type=Path)
    if option.kind == "value":
        return LibraryValue(option)
    return None  # text: Click's default STRING


def click_option(name: str, **override: Any) -> Callable:
    """The Click option for the library option `name`; `override` changes e.g. help or default."""
    option = OPTIONS[name]
    decls = [d for d in (option.short, f"--{option.name}", option.field) if d]
    kw: dict[str, Any] = {"help": option.help}
    if option.kind == "flag":
        kw["is_flag"] = True
    else:
        kw["type"] = click_type(option)
        if option.default is not None:
            kw.update(default=option.default, show_default=True)
    kw.update(override)
    return click.option(*decls, **kw)


def _stack(*decorators: Callable) -> Callable:
    def apply(f: Callable) -> Callable:
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


def run_options(command: str, **help_for: str) -> Callable:
    """Every option that changes `command`'s run, in the order of the flow (read -> write)."""
    return _stack(*(click_option(o.name, **({"help": help_for[o.field]} if o.field in help_for else {}))
                    for o in options_for(command)))


output_opt = click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
    help="Vector file to write, its format from the extension (or --format): .gpkg (a layer per query), "
         ".parquet (GeoParquet), .fgb (FlatGeobuf) or .geojson (one table, a `layer` column).",
)

report_opts = _stack(
    click.option("--json", "as_json", is_flag=True, help="Print one JSON summary object on stdout."),
    click.option("--fail-on-empty", is_flag=True, help="Exit with code 3 when nothing is found."),
)

dry_run_opt = click.option("--dry-run", is_flag=True, help="Print the tile plan and a memory estimate; run nothing.")

preview_opt = click.option(
    "--preview", "preview_png", type=click.Path(dir_okay=False, path_type=Path),
    help="Also write a quick-look PNG of the scene(s) with the polygons drawn.",
)


def command_options(command: str) -> Callable:
    """segment / change / vectorize: the run's options, then output, reporting and preview."""
    extra = (dry_run_opt,) if command != "vectorize" else ()
    return _stack(run_options(command), *extra, output_opt, report_opts, preview_opt)
