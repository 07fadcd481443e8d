"""`geoseg chat SCENE -o out.gpkg`: a conversation about one scene, one layer per turn."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from geoseg_cli.options import _bands, _nodata, output_opt, vector_opts
from geoseg_cli.run import build_options


@click.command(no_args_is_help=True)
@click.argument("scene", type=click.Path(path_type=Path))
@output_opt
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@click.option("--append", is_flag=True, help="Add the turns' layers to an existing GeoPackage.")
@click.option("--model", help="A generative SegEarth checkpoint directory or hub id (model_type segearth_r1_generative).")
@click.option("--device", default="auto", show_default=True, help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps.")
@click.option("--allow-pickle", is_flag=True, help="Allow pickled .bin checkpoints (loaded with weights_only=True).")
@click.option("-b", "--bands", callback=_bands, help="1-based bands to read, in model order (e.g. 3,2,1).")
@click.option("--nodata", callback=_nodata, help="Override the input nodata value.")
@click.option("--tile-size", type=click.IntRange(16), help="Tile size in pixels (default: the model's native size).")
@click.option("--overlap", type=click.IntRange(0), help="Overlap between tiles in pixels (default: the model's).")
@click.option("--batch-size", type=click.IntRange(1), help="Tiles per model call (default: from device memory).")
@vector_opts
@click.option("--json", "as_json", is_flag=True, help="One JSON object per turn on stdout.")
@click.pass_context
def chat_command(ctx, scene, output, as_json, **kw):
    """Talk to a generative model about SCENE: each line read from stdin is a turn.

    Every turn is answered with the earlier turns in the prompt, so a turn can refine the last
    one; each turn writes its own layer (turn_N_...) whose provenance holds the turn number, the
    query, the history and the model's answer. Each named target of an answer is its own set of
    polygons (field `target`). Interactive on a terminal (an empty line or Ctrl-D ends), or piped:

    \b
      printf 'buildings\\nonly the damaged ones\\nthe ones next to the river\\n' |
          geoseg chat scene.tif -o chat.gpkg --model runs/r2/checkpoints/final
    """
    from geoseg.dialogue import ChatSession

    opts = build_options(ctx, kw)
    session = ChatSession(scene, output, opts)
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            click.echo(f"turn {len(session.history) + 1}> ", nl=False, err=True)
        line = sys.stdin.readline()
        if not line or (interactive and not line.strip()):
            break
        query = line.strip()
        if not query:
            continue
        result = session.turn(query)
        if as_json:
            click.echo(json.dumps(result.to_dict(), ensure_ascii=False))
        else:
            click.echo(f"{result.turn}\t{result.layer}\t{result.features} features\t{result.answer}")
