"""`geoseg models`: what can be passed to --model."""

from __future__ import annotations

import json

import click

from geoseg.models import registry


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def models_command(as_json: bool) -> None:
    """List the registry's models and the checkpoint families --model accepts."""
    rows = []
    for name, where in registry.REGISTRY.items():
        path = where()
        weights = path / "model.safetensors"
        rows.append({
            "name": name, "kind": "embedded", "installed": weights.exists(),
            "size_mb": round(weights.stat().st_size / 2**20, 1) if weights.exists() else None,
            "license": "Apache-2.0", "path": str(path),
        })
    for family in registry.FAMILIES:
        rows.append({"name": family.name, "kind": "family", "model_types": list(family.model_types),
                     "license": family.license, "description": family.description})
    for row in rows:
        if as_json:
            click.echo(json.dumps(row))
        elif row["kind"] == "embedded":
            state = f"{row['size_mb']} MB" if row["installed"] else "not installed"
            click.echo(f"{row['name']:<16} embedded  {state:<14} {row['license']}")
        else:
            click.echo(f"{row['name']:<16} family    {row['license']:<14} {row['description']}")
