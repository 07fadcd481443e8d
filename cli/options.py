"""Options shared by several commands (rasterio's `rio` keeps them in one place too)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from geoseg.stitch import BLEND_MODES


def _bands(ctx, param, value: str | None) -> tuple[int, ...] | None:
    if not value:
        return None
    try:
        return tuple(int(b) for b in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: give 1-based band numbers separated by commas, e.g. 3,2,1") from None


def _nodata(ctx, param, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: give a number or 'nan'") from None


def _gsd(ctx, param, value: str) -> str | float:
    from geoseg.errors import InputError
    from geoseg.gsd import parse_gsd

    try:
        return parse_gsd(value)
    except InputError as e:
        raise click.BadParameter(str(e).removeprefix(f"--gsd {value!r}: ")) from None


def _stack(*decorators: Callable) -> Callable:
    def apply(f: Callable) -> Callable:
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


output_opt = click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
    help="GeoPackage to write (a layer per query).",
)

write_opts = _stack(
    output_opt,
    click.option("--overwrite", is_flag=True, help="Replace an existing output file."),
    click.option("--append", is_flag=True, help="Add the layer(s) to an existing GeoPackage."),
    click.option("--layer", help="Layer name (default: a slug of the query)."),
    click.option("--json", "as_json", is_flag=True, help="Print one JSON summary object on stdout."),
    click.option("--fail-on-empty", is_flag=True, help="Exit with code 3 when nothing is found."),
)

vector_opts = _stack(
    click.option("--threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True,
                 help="Probability at or above which a pixel belongs to the target."),
    click.option("--min-area", default="0", show_default=True,
                 help="Drop polygons smaller than this: pixels (e.g. 20 or 20px) or square metres (e.g. 50m2)."),
    click.option("--simplify", type=click.FloatRange(0), default=0.0, show_default=True,
                 help="Topology-preserving simplification tolerance, in pixels."),
    click.option("--fill-holes", is_flag=True, help="Fill holes inside polygons."),
)

raster_opts = _stack(
    click.option("-b", "--bands", callback=_bands, help="1-based bands to read, in model order (e.g. 3,2,1). Default: the first three."),
    click.option("--nodata", callback=_nodata, help="Override the input nodata value."),
    click.option("--gsd", default="auto", show_default=True, callback=_gsd, metavar="auto|native|METRES",
                 help="Ground resolution to read at: auto reads scenes much finer than the model's range at its "
                      "finest resolution; native keeps the file's pixels; a number forces that many metres."),
    click.option("--tile-size", type=click.IntRange(16), help="Tile size in pixels (default: the model's native size)."),
    click.option("--overlap", type=click.IntRange(0), help="Overlap between tiles in pixels (default: the model's)."),
    click.option("--batch-size", type=click.IntRange(1), help="Tiles per model call (default: from device memory)."),
    click.option("--blend", type=click.Choice(BLEND_MODES), default="cosine", show_default=True,
                 help="How overlapping tiles are combined."),
    click.option("--workers", type=click.IntRange(1), default=2, show_default=True, help="Reader threads."),
    click.option("--probabilities", type=click.Path(dir_okay=False, path_type=Path),
                 help="Also write the blended probabilities as a COG (uint8, scale 1/254)."),
    click.option("--mask-out", type=click.Path(dir_okay=False, path_type=Path),
                 help="Also write the thresholded mask as a COG (1 = target, 0 = not, 255 = nodata)."),
)

model_opts = _stack(
    click.option("--model", help="Registry name, checkpoint directory or Hugging Face hub id (see `geoseg models`)."),
    click.option("--device", default="auto", show_default=True, help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps."),
    click.option("--allow-pickle", is_flag=True, help="Allow pickled .bin checkpoints (loaded with weights_only=True)."),
    click.option("--dry-run", is_flag=True, help="Print the tile plan and a memory estimate; run nothing."),
)

preview_opt = click.option(
    "--preview", "preview_png", type=click.Path(dir_okay=False, path_type=Path),
    help="Also write a quick-look PNG of the scene(s) with the polygons drawn.",
)

# Everything `segment` and `change` share: reading, tiling, model, vectorising, writing.
model_run_opts = _stack(raster_opts, vector_opts, model_opts, write_opts, preview_opt)
