"""Make the real-raster pictures of the compact model card (docs/models/img/compact-*.jpg).

    .venv/bin/python docs/models/make_card_pictures.py [--shared ../shared]

Each picture is the `--preview` PNG of a `geoseg segment` / `geoseg change` run with the
embedded default models on a raster of ../shared/data, shrunk to at most 800 px (change: 1100 px
wide) and saved as JPEG so that the repository stays small. The commands run are printed.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GEOSEG = REPO / ".venv" / "bin" / "geoseg"
IMG = Path(__file__).resolve().parent / "img"

# picture name -> (geoseg arguments with {data} for ../shared/data, longest side in px)
PICTURES = {
    "compact-naip": (["segment", "{data}/georef-naip-pair/m_4709963_se_14_1_20200831.tif",
                      "--query", "buildings", "--query", "roads", "--query", "water"], 800),
    "compact-vegas": (["segment", "{data}/spacenet-roads-solaris/road_mask_input.tif", "-b", "1,1,1",
                       "--query", "roads", "--query", "buildings"], 800),
    "compact-landsat": (["segment", "{data}/georef-rasterio/RGB.byte.tif", "--query", "water",
                         "--query", "fields"], 800),
    "compact-change-naip": (["change", "{data}/georef-naip-pair/m_4709963_se_14_1_20090818.tif",
                             "{data}/georef-naip-pair/m_4709963_se_14_1_20200831.tif",
                             "new buildings", "flooded fields"], 1100),
}


def make_picture(name: str, args: list[str], side: int, data: Path, work: Path) -> Path:
    from PIL import Image

    png = work / f"{name}.png"
    cmd = [str(GEOSEG), "-q", *(a.format(data=data) for a in args), "-o", str(work / f"{name}.gpkg"),
           "--preview", str(png)]
    print("$", shlex.join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    out = IMG / f"{name}.jpg"
    with Image.open(png) as im:
        im = im.convert("RGB")
        im.thumbnail((side, side))
        im.save(out, quality=80, optimize=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared", help="the shared folder (default ../shared)")
    ap.add_argument("names", nargs="*", default=list(PICTURES), help="pictures to make (default: all)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.names:
            cmd, side = PICTURES[name]
            print(make_picture(name, cmd, side, args.shared / "data", Path(tmp)))


if __name__ == "__main__":
    main()
