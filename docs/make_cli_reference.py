"""Write docs/cli.md from the Click commands themselves, so the reference cannot drift.

    .venv/bin/python docs/make_cli_reference.py           # rewrite docs/cli.md
    .venv/bin/python docs/make_cli_reference.py --check   # exit 1 if docs/cli.md is stale

Everything below the fixed introduction is read from `geoseg_cli.main.cli`: each command's
usage line, its help text, and a table of its options (names, type, default, help).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generated_page import write_or_check  # noqa: E402

OUT = Path(__file__).resolve().parent / "cli.md"
WIDTH = 100

INTRO = """\
# Command-line reference

Generated from the Click commands by `docs/make_cli_reference.py`; do not edit by hand
(`make_cli_reference.py --check` fails when this page is stale). `geoseg COMMAND --help` prints
the same text.

Conventions (all commands): positional inputs, `-o/--output`, nothing is overwritten without
`--overwrite`; stdout carries only machine-readable output (`--json`), progress and logs go to
stderr. Exit codes: 0 ok, 1 runtime error, 2 bad input or usage, 3 nothing found with
`--fail-on-empty`, 130 interrupted (Ctrl-C), 143 stopped by SIGTERM (nothing written either way).
Every error message and its fix: [troubleshooting.md](troubleshooting.md).

Shell completion (Click's own; bash, zsh and fish):

```bash
eval "$(_GEOSEG_COMPLETE=bash_source geoseg)"                 # bash: add to ~/.bashrc
eval "$(_GEOSEG_COMPLETE=zsh_source geoseg)"                  # zsh: add to ~/.zshrc
_GEOSEG_COMPLETE=fish_source geoseg > ~/.config/fish/completions/geoseg.fish
```

For a faster shell start-up, write the script once and source the file instead:
`_GEOSEG_COMPLETE=bash_source geoseg > ~/.geoseg-complete.bash`.
"""


def context_for(command: click.Command, name: str, parent: click.Context | None) -> click.Context:
    settings = {**command.context_settings, "terminal_width": WIDTH, "max_content_width": WIDTH}
    return click.Context(command, info_name=name, parent=parent, **settings)


try:  # Click >= 8.2 marks "no default" with a sentinel instead of None
    from click.core import UNSET
except ImportError:  # pragma: no cover - older Click
    UNSET = None


def type_name(param: click.Parameter) -> str:
    if isinstance(param, click.Option) and param.count:
        return "count"
    if isinstance(param, click.Option) and param.is_flag:
        return "flag"
    if isinstance(param.type, click.Choice):
        return " \\| ".join(f"`{c}`" for c in param.type.choices)
    if isinstance(param.type, click.types._NumberRangeBase):
        return param.type.name.replace("range", "").strip() or param.type.name
    return param.type.name


def default_text(param: click.Parameter) -> str:
    if not isinstance(param, click.Option) or param.is_flag or param.count or param.multiple:
        return ""
    if param.default is UNSET or param.default in (None, (), []):
        return ""
    return f"`{param.default}`"


def cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def options_table(command: click.Command, ctx: click.Context) -> list[str]:
    rows = ["| option | type | default | description |", "|---|---|---|---|"]
    for param in command.get_params(ctx):
        if not isinstance(param, click.Option) or param.hidden:
            continue
        names = ", ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
        required = " (required)" if param.required else ""
        if param.multiple:
            required += " (repeatable)"
        rows.append(f"| {names} | {type_name(param)} | {default_text(param)} | {cell(param.help or '')}{required} |")
    return rows


def arguments(command: click.Command) -> str:
    args = [p for p in command.params if isinstance(p, click.Argument)]
    return " ".join(p.make_metavar(click.Context(command)) if hasattr(p, "make_metavar") else p.name.upper() for p in args)


def help_text(command: click.Command) -> str:
    """The help as Click prints it: paragraphs rewrapped, \\b blocks kept verbatim."""
    text = command.help or ""
    out = []
    for block in text.split("\n\n"):
        lines = [line.rstrip() for line in block.strip("\n").splitlines() if line.strip()]
        if lines and lines[0].strip() == "\b":
            out.append("```\n" + "\n".join(line.strip() for line in lines[1:]) + "\n```")
        else:
            out.append(" ".join(line.strip() for line in lines))
    return "\n\n".join(p for p in out if p)


def command_section(name: str, command: click.Command, parent: click.Context) -> list[str]:
    ctx = context_for(command, name, parent)
    usage = command.get_usage(ctx).replace("Usage: ", "")
    lines = [f"## `geoseg {name}`", "", "```", usage, "```", "", help_text(command), ""]
    lines += options_table(command, ctx)
    return lines + [""]


def render() -> str:
    from geoseg_cli.main import cli

    root = context_for(cli, "geoseg", None)
    lines = [INTRO, "## `geoseg`", "", "```", cli.get_usage(root).replace("Usage: ", ""), "```", "",
             help_text(cli), ""]
    lines += options_table(cli, root)
    lines += ["", "| command | what it does |", "|---|---|"]
    names = cli.list_commands(root)
    for name in names:
        cmd = cli.get_command(root, name)
        lines.append(f"| [`{name}`](#geoseg-{name}) | {cell(cmd.get_short_help_str(limit=200))} |")
    lines.append("")
    for name in names:
        lines += command_section(name, cli.get_command(root, name), root)
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/cli.md differs from the commands")
    args = ap.parse_args()
    return write_or_check(OUT, render(), "make_cli_reference.py", check=args.check)


if __name__ == "__main__":
    sys.exit(main())
