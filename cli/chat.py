"""`geoseg chat SCENE -o out.gpkg`: a conversation about one scene, one layer per turn."""

from __future__ import annotations

import json
import sys

import click

from .options import output_opt, run_options
from .run import build_options


@click.command(no_args_is_help=True)
@click.argument("scene")
@run_options("chat", model="A generative SegEarth checkpoint directory or hub id (model_type segearth_r1_generative).")
@output_opt
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
    from geoseg.run.dialogue import ChatSession

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
