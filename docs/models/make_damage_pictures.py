"""Make the composited-damage pictures of the compact model card (docs/models/img/damage-*.jpg).

    .venv/bin/python docs/models/make_damage_pictures.py

On the repository's own sample tile `sample_tiles/town_utm_0p5m.tif` (never on training chips),
the intact buildings of its truth get damage composited by geoseg.train.damage:

- damage-town.jpg: in the training style and, separately, in the validation style (disjoint
  palettes, grain, tarp hues, spill); the validation composite is written as a GeoTIFF with the
  tile's georeferencing and segmented with `geoseg segment ... "damaged buildings" "destroyed
  buildings" --preview`. The original, the two composites and the preview side by side.
- damage-change-town.jpg: a validation-style change pair (destroyed_pair: before = the tile,
  after = buildings damaged, destroyed or cleared), run through `geoseg change before.tif
  after.tif "damaged buildings" "destroyed buildings" --preview`. Before, after and the preview.

The commands run are printed.
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


def window_and_buildings() -> tuple[np.ndarray, np.ndarray, dict]:
    """The window in [0, 1], its intact buildings rasterised from the tile's truth, its profile."""
    import geopandas as gpd
    import rasterio
    from rasterio.features import rasterize
    from rasterio.windows import Window

    with rasterio.open(TILE) as src:
        window = Window(*WINDOW)
        image = src.read(window=window).transpose(1, 2, 0).astype(np.float32) / 255
        profile = {**src.profile, "width": WINDOW[2], "height": WINDOW[3], "transform": src.window_transform(window)}
    truth = gpd.read_file(TILE.with_name(TILE.stem + "_truth.gpkg"), layer="building")
    shape = (WINDOW[3], WINDOW[2])
    buildings = rasterize(truth[truth["damage"] == "intact"].geometry, out_shape=shape,
                          transform=profile["transform"]).astype(bool)
    return image, buildings, profile


def composites(image: np.ndarray, buildings: np.ndarray, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """The window's training-style and validation-style composites."""
    from geoseg.train.damage import TRAIN_STYLE, VALIDATION_STYLE, composite_damage

    train = composite_damage(np.random.default_rng(seed), image, buildings, TRAIN_STYLE).image
    val = composite_damage(np.random.default_rng(seed), image, buildings, VALIDATION_STYLE).image
    return train, val


def change_pair(image: np.ndarray, buildings: np.ndarray, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """The window before and after a validation-style disaster (geoseg.train.damage.destroyed_pair)."""
    from geoseg.train.damage import VALIDATION_STYLE, destroyed_pair

    before, after, _ = destroyed_pair(np.random.default_rng(seed), image, buildings, VALIDATION_STYLE)
    return before, after


def write_tif(path: Path, image: np.ndarray, profile: dict) -> Path:
    import rasterio

    with rasterio.open(path, "w", **profile) as dst:
        dst.write((np.clip(image, 0, 1) * 255).round().astype(np.uint8).transpose(2, 0, 1))
    return path


def preview_of(command: str, inputs: list[Path], tmp: Path) -> np.ndarray:
    """`geoseg COMMAND INPUTS --query "damaged buildings" --query "destroyed buildings" --preview`."""
    from PIL import Image

    png = tmp / f"{command}.png"
    cmd = [str(GEOSEG), "-q", command, *map(str, inputs), "--query", "damaged buildings", "--query", "destroyed buildings",
           "-o", str(tmp / f"{command}.gpkg"), "--preview", str(png)]
    print("$", shlex.join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    with Image.open(png) as im:  # the change preview shows both dates side by side: keep its aspect
        size = (round(im.width * WINDOW[3] / im.height), WINDOW[3])
        return np.asarray(im.convert("RGB").resize(size)).astype(np.float32) / 255


def save_sheet(panels: list[np.ndarray], name: str) -> None:
    """Panels of one height side by side, at most 1400 px wide, as docs/models/img/NAME."""
    from PIL import Image

    sheet = Image.fromarray((np.concatenate(panels, axis=1).clip(0, 1) * 255).round().astype(np.uint8))
    sheet.thumbnail((1400, 1400))
    out = IMG / name
    sheet.save(out, quality=82, optimize=True)
    print(out)


def main() -> None:
    image, buildings, profile = window_and_buildings()
    train, val = composites(image, buildings)
    before, after = change_pair(image, buildings)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        single = preview_of("segment", [write_tif(t / "damaged.tif", val, profile)], t)
        save_sheet([image, train, val, single], "damage-town.jpg")
        pair = [write_tif(t / "before.tif", before, profile), write_tif(t / "after.tif", after, profile)]
        save_sheet([before, after, preview_of("change", pair, t)], "damage-change-town.jpg")


if __name__ == "__main__":
    main()
