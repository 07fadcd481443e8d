"""The generated CLI reference matches the commands (regenerate: docs/make_cli_reference.py)."""

import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_cli_reference_is_current():
    r = subprocess.run([sys.executable, str(DOCS / "make_cli_reference.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_every_command_and_option_is_in_the_reference():
    import click

    from geoseg_cli.main import cli

    text = (DOCS / "cli.md").read_text()
    ctx = click.Context(cli, info_name="geoseg")
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        assert f"## `geoseg {name}`" in text
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("-"):
                    assert f"`{opt}`" in text, (name, opt)
