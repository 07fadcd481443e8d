"""Make the pictures in docs/img/ with geoseg's own commands (and real QGIS for the screenshot).

    .venv/bin/python docs/make_pictures.py

1. `geoseg segment sample_tiles/town_utm_0p5m.tif buildings --preview docs/img/segment-town.png`
2. `geoseg change sample_tiles/pair_before.tif sample_tiles/pair_after.tif "new buildings"
   "demolished buildings" --preview docs/img/change-pair.png`
3. the GeoPackage of (1) opened in headless QGIS with its default style, rendered over the scene
   (docs/qgis_render.py under /usr/bin/python3): docs/img/qgis-town.png

The commands actually run, and their JSON summaries, are written to docs/img/pictures.json.
The PNGs are then re-encoded with a 256-colour palette (same pixels' layout and size, a third of
the bytes) so that the repository stays small.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GEOSEG = REPO / ".venv" / "bin" / "geoseg"
QGIS_PYTHON = "/usr/bin/python3"


def run(cmd: list[str], env: dict | None = None) -> str:
    shown = " ".join(shlex.quote(str(c)) for c in cmd)
    print(f"$ {shown}", file=sys.stderr)
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, **(env or {})})
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {shown}\n{r.stderr[-3000:]}")
    return r.stdout


def palette_png(path: Path) -> None:
    """Re-encode a picture with 256 colours: the same size, about a third of the bytes."""
    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    small.save(path, optimize=True)


def embedded_weights() -> dict[str, str]:
    """SHA-256 of each installed embedded model, so a picture can be traced to its weights."""
    import hashlib

    out = {}
    for weights in sorted((REPO / "geoseg" / "models" / "compact" / "weights").glob("*/model.safetensors")):
        out[weights.parent.name] = hashlib.sha256(weights.read_bytes()).hexdigest()
    return out


def default_change_model() -> str | None:
    """None (geoseg's default, compact-change) when installed; else the single-date compact model,
    which geoseg runs on both dates and compares (see docs/concepts.md, change semantics)."""
    weights = REPO / "geoseg" / "models" / "compact" / "weights"
    if (weights / "compact-change" / "model.safetensors").exists():
        return None
    return "compact"


def relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    ap.add_argument("--model", help="--model for segment (default: geoseg's default)")
    ap.add_argument("--change-model", help="--model for change (default: geoseg's default)")
    ap.add_argument("--no-qgis", action="store_true", help="skip the QGIS screenshot")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    samples = REPO / "sample_tiles"
    record = []
    with tempfile.TemporaryDirectory(prefix="geoseg-pictures-") as tmp:
        town_gpkg = Path(tmp) / "town-buildings.gpkg"
        seg = [GEOSEG, "-q", "segment", relative(samples / "town_utm_0p5m.tif"), "buildings",
               "-o", town_gpkg, "--json", "--preview", relative(args.out / "segment-town.png"), "--overwrite"]
        if args.model:
            seg += ["--model", args.model]
        record.append({"picture": "segment-town.png", "command": shlex.join(map(str, seg)),
                       "summary": json.loads(run(seg))})

        change = [GEOSEG, "-q", "change", relative(samples / "pair_before.tif"), relative(samples / "pair_after.tif"),
                  "new buildings", "demolished buildings", "-o", Path(tmp) / "pair-change.gpkg", "--json",
                  "--preview", relative(args.out / "change-pair.png"), "--overwrite"]
        change_model = args.change_model or default_change_model()
        if change_model:
            change += ["--model", change_model]
        record.append({"picture": "change-pair.png", "command": shlex.join(map(str, change)),
                       "summary": json.loads(run(change))})

        if not args.no_qgis:
            qgis = [QGIS_PYTHON, relative(REPO / "docs" / "qgis_render.py"), relative(args.out / "qgis-town.png"),
                    relative(samples / "town_utm_0p5m.tif"), town_gpkg]
            out = run(qgis, env={"QT_QPA_PLATFORM": "offscreen"})
            record.append({"picture": "qgis-town.png", "command": shlex.join(map(str, qgis)), "qgis": out.strip()})
    for item in record:  # the temporary GeoPackage paths mean nothing later
        item["command"] = item["command"].replace(tmp, "$TMP")
        for key in ("output",):
            if key in item.get("summary", {}):
                item["summary"][key] = item["summary"][key].replace(tmp, "$TMP")
    for item in record:
        palette_png(args.out / item["picture"])
    payload = {"weights_sha256": embedded_weights(), "pictures": record}
    (args.out / "pictures.json").write_text(json.dumps(payload, indent=1) + "\n")
    print(f"written: {', '.join(r['picture'] for r in record)} in {relative(args.out)}", file=sys.stderr)


if __name__ == "__main__":
    main()
