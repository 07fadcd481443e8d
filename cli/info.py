"""`geoseg models`: what can be passed to --model, with sizes and licences."""

from __future__ import annotations

import json
from pathlib import Path

import click

OTHER_SOURCES = (
    "--model also takes a checkpoint directory (config.json + *.safetensors) of a family above, "
    "or a Hugging Face hub id (downloaded once into your cache). Model cards: docs/models/."
)


def _size_mb(path: Path) -> float | None:
    files = [f for f in path.glob("*") if f.is_file()] if path.is_dir() else []
    return round(sum(f.stat().st_size for f in files) / 2**20, 1) if files else None


def _config(path: Path) -> dict:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def embedded_rows() -> list[dict]:
    """The registry's models: installed or not, size on disk, plan and licence from config.json."""
    from geoseg.models import registry

    default_for = {name: command for command, name in registry.DEFAULT_MODELS.items()}
    rows = []
    for name, where in registry.REGISTRY.items():
        path = where()
        weights = path / "model.safetensors"
        config = _config(path)
        family = next((f for f in registry.FAMILIES if config.get("model_type") in f.model_types), None)
        rows.append({
            "name": name, "kind": "embedded", "installed": weights.exists(),
            "size_mb": _size_mb(path) if weights.exists() else None,
            "default_for": default_for.get(name), "version": config.get("version"),
            "tile_size": config.get("tile_size"), "overlap": config.get("overlap"),
            "family": family.name if family else None,
            "license": family.license if family else "Apache-2.0", "path": str(path),
        })
    return rows


def family_rows() -> list[dict]:
    from geoseg.models import registry

    return [{"name": f.name, "kind": "family", "model_types": list(f.model_types), "license": f.license,
             "description": f.description} for f in registry.FAMILIES]


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def models_command(as_json: bool) -> None:
    """List the registry's models and the checkpoint families --model accepts.

    Embedded models ship inside the package (size on disk, the tile plan they run with, the
    commands they are the default for); families are the checkpoint formats a directory or hub id
    given to --model may hold.
    """
    rows = embedded_rows() + family_rows()
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    click.echo(f"{'NAME':<16} {'KIND':<9} {'DEFAULT FOR':<12} {'SIZE':<14} {'TILE/OVERLAP':<13} LICENCE")
    for row in rows:
        if row["kind"] == "embedded":
            size = f"{row['size_mb']} MB" if row["installed"] else "not installed"
            plan = f"{row['tile_size']}/{row['overlap']} px" if row["tile_size"] else "-"
            click.echo(f"{row['name']:<16} {'embedded':<9} {row['default_for'] or '-':<12} {size:<14} "
                       f"{plan:<13} {row['license']}")
    for row in rows:
        if row["kind"] == "family":
            click.echo(f"{row['name']:<16} {'family':<9} {'-':<12} {'-':<14} {'-':<13} {row['license']}  "
                       f"{row['description']}")
    click.echo(f"\n{OTHER_SOURCES}")
