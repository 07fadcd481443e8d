"""Build the installable QGIS plugin zip: dist/geoseg_processing.zip (`make qgis-plugin`).

    python3 docs/qgis/build_plugin.py [--out dist/geoseg_processing.zip]

One top-level folder, geoseg_processing/, with metadata.txt and __init__.py (classFactory), as
QGIS's *Plugins > Manage and Install Plugins > Install from ZIP* and the plugin repository expect.
No QGIS needed to build it; entries are sorted and carry a fixed date, so the same sources give
the same bytes.
"""

from __future__ import annotations

import argparse
import configparser
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "geoseg_processing"
REPO = HERE.parents[1]
REQUIRED = ("name", "qgisMinimumVersion", "qgisMaximumVersion", "description", "about", "version", "author",
            "email", "hasProcessingProvider")


def files(source: Path = SOURCE) -> list[Path]:
    return sorted(p for p in source.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo"))


def check_metadata(source: Path = SOURCE) -> configparser.ConfigParser:
    meta = configparser.ConfigParser()
    meta.read(source / "metadata.txt", encoding="utf-8")
    missing = [key for key in REQUIRED if not meta.get("general", key, fallback="").strip()]
    if missing:
        raise SystemExit(f"{source / 'metadata.txt'}: missing {', '.join(missing)}")
    return meta


def build(out: Path, source: Path = SOURCE) -> Path:
    check_metadata(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in files(source):
            info = zipfile.ZipInfo(f"{source.name}/{path.relative_to(source).as_posix()}", (2024, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, path.read_bytes())
    tmp.replace(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "dist" / "geoseg_processing.zip")
    args = ap.parse_args()
    out = build(args.out)
    print(f"{out} ({out.stat().st_size} bytes, {len(files())} files)", file=sys.stderr)


if __name__ == "__main__":
    main()
