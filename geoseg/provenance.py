"""The run record: everything needed to know how a layer was made and to make it again."""

from __future__ import annotations

import hashlib
import platform
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import geoseg

HASH_CHUNK = 1 << 22


def sha256_file(path: str | Path) -> str:
    """Streaming sha256 of a file (bounded memory whatever its size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def software_versions() -> dict[str, str]:
    import pyogrio
    import rasterio
    import shapely

    versions = {
        "geoseg": geoseg.__version__,
        "python": platform.python_version(),
        "rasterio": rasterio.__version__,
        "gdal": rasterio.__gdal_version__,
        "shapely": shapely.__version__,
        "geos": ".".join(map(str, shapely.geos_version)),
        "pyogrio": pyogrio.__version__,
    }
    # Only what the run used: `geoseg vectorize` never imports torch, and importing it here
    # would cost that command seconds.
    for used in ("torch", "transformers"):
        if used in sys.modules:
            versions[used] = sys.modules[used].__version__
    return versions


def new_run_id() -> str:
    return uuid.uuid4().hex


def run_record(
    *,
    run_id: str,
    command: str,
    query: str,
    inputs: dict[str, dict[str, Any]],
    model: dict[str, Any],
    parameters: dict[str, Any],
    scene: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the provenance JSON stored with every layer."""
    return {
        "run_id": run_id,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "query": query,
        "inputs": inputs,
        "model": model,
        "parameters": parameters,
        "scene": scene,
        "software": software_versions(),
        "argv": sys.argv,
        **(extra or {}),
    }
