"""Make the composited-damage pictures of the compact model card (docs/models/img/damage-*.jpg).

    .venv/bin/python docs/models/make_damage_pictures.py

On the repository's own sample tile `sample_tiles/town_utm_0p5m.tif` (never on training chips),
the intact buildings of its truth get damage composited by geoseg.train.damage in the training
style and, separately, in the validation style (disjoint palettes, grain, tarp hues, spill);
the validation composite is written as a GeoTIFF with the tile's georeferencing and segmented
with `geoseg segment ... "damaged buildings" "destroyed buildings" --preview`. The picture is
the original, the two composites and the preview side by side; the commands run are printed.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
GEOSEG = REPO / ".venv" / "bin" / "geoseg"
IMG = Path(__file__).resolve().parent / "img"
TILE = REPO / "sample_tiles" / "town_utm_0p5m.tif"
WINDOW = (256, 256, 512, 512)  # col, row, width, height: a built-up part of the tile


def composites(seed: int = 7) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """The window, its training-style and validation-style composites, and its rasterio profile."""
    import geopandas as gpd
    import rasterio
    from rasterio.features import rasterize
    from rasterio.windows import Window

    from geoseg.train.damage import TRAIN_STYLE, VALIDATION_STYLE, composite_damage

    with rasterio.open(TILE) as src:
        window = Window(*WINDOW)
        image = src.read(window=window).transpose(1, 2, 0).astype(np.float32) / 255
        profile = {**src.profile, "width": WINDOW[2], "height": WINDOW[3], "transform": src.window_transform(window)}
    truth = gpd.read_file(TILE.with_name(TILE.stem + "_truth.gpkg"), layer="building")
    shape = (WINDOW[3], WINDOW[2])
    buildings = rasterize(truth[truth["damage"] == "intact"].geometry, out_shape=shape,
                          transform=profile["transform"]).astype(bool)
    train = composite_damage(np.random.default_rng(seed), image, buildings, TRAIN_STYLE).image
    val = composite_damage(np.random.default_rng(seed), image, buildings, VALIDATION_STYLE).image
    return image, train, val, profile


def main() -> None:
    import rasterio
    from PIL import Image

    image, train, val, profile = composites()
    with tempfile.TemporaryDirectory() as tmp:
        tif, png = Path(tmp) / "damaged.tif", Path(tmp) / "preview.png"
        with rasterio.open(tif, "w", **profile) as dst:
            dst.write((val * 255).round().astype(np.uint8).transpose(2, 0, 1))
        cmd = [str(GEOSEG), "-q", "segment", str(tif), "--query", "damaged buildings", "--query", "destroyed buildings",
               "-o", str(Path(tmp) / "out.gpkg"), "--preview", str(png)]
        print("$", shlex.join(cmd), file=sys.stderr)
        subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        with Image.open(png) as im:
            preview = im.convert("RGB").resize((WINDOW[2], WINDOW[3]))
        panels = [Image.fromarray((a * 255).round().astype(np.uint8)) for a in (image, train, val)] + [preview]
    sheet = Image.new("RGB", (sum(p.width for p in panels), WINDOW[3]))
    x = 0
    for p in panels:
        sheet.paste(p, (x, 0))
        x += p.width
    sheet.thumbnail((1400, 1400))
    out = IMG / "damage-town.jpg"
    sheet.save(out, quality=82, optimize=True)
    print(out)


if __name__ == "__main__":
    main()
