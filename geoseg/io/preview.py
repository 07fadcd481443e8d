"""Quick-look PNG: the scene (or both dates side by side) with the polygons drawn over it.

For people who would rather look than open a GIS. The image is read decimated (the longest side
of each panel becomes `max_side` pixels, so memory does not follow the scene size), stretched
between the 2nd and 98th percentile of all its bands together (colours stay balanced), and every polygon is filled
translucently and outlined in its layer's colour -- the colour of the layer's default QGIS style,
so the preview and QGIS agree. In change mode polygons are coloured by `change_type` instead
(appeared green, disappeared red).

Layout of the PNG, exactly (tests rely on it):

    width  = sum of panel widths + GAP * (panels - 1)
    height = tallest panel + LEGEND_HEIGHT
    panel  = the raster scaled so that its longest side is `max_side` pixels

A title (file name, or "before"/"after") sits in the panel's top-left corner; the legend strip at
the bottom names each layer with its polygon count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from affine import Affine
from PIL import Image, ImageDraw, ImageFont
from rasterio.enums import Resampling

from geoseg.errors import InputError, OutputExistsError
from geoseg.io.qgis_style import FILL_ALPHA, style_colour

GAP = 8
LEGEND_HEIGHT = 28
BACKGROUND = (24, 24, 24)
NODATA_GREY = (48, 48, 48)
CHANGE_COLOURS = {"appeared": (46, 204, 64), "disappeared": (255, 65, 54), "changed": (255, 170, 0)}
OUTLINE_PX = 2


@dataclass
class PreviewLayer:
    """Polygons to draw, a legend label and a colour (RGB)."""

    label: str
    gdf: gpd.GeoDataFrame
    colour: tuple[int, int, int]


def preview_geopackage(
    rasters: Sequence[str | Path],
    geopackage: str | Path,
    out: str | Path,
    *,
    layers: Sequence[str] | None = None,
    titles: Sequence[str] | None = None,
    bands: Sequence[int] | None = None,
    max_side: int = 1024,
    output_format: str | None = None,
    asset: str | None = None,
) -> Path:
    """Draw the polygon layers of `geopackage` (all, or `layers`) over each raster; write a PNG.
    Any output geoseg writes works (geoseg.io.formats: by its extension, or `output_format`)."""
    from geoseg.io import formats

    names = list(layers) if layers is not None else formats.list_layers(geopackage, output_format)
    drawn: list[PreviewLayer] = []
    for name in names:
        gdf = formats.read_layer(geopackage, name, output_format)
        if "change_type" in gdf.columns and len(gdf):
            for kind, part in gdf.groupby("change_type", sort=True):
                colour = CHANGE_COLOURS.get(str(kind), style_colour(f"{name}:{kind}"))
                # a GeoDataFrame's groups are GeoDataFrames (the stubs type them as DataFrames)
                drawn.append(PreviewLayer(f"{name} [{kind}]", cast(gpd.GeoDataFrame, part), colour))
        else:
            drawn.append(PreviewLayer(name, gdf, style_colour(name)))
    return render_preview(rasters, drawn, out, titles=titles, bands=bands, max_side=max_side, asset=asset)


def check_output(path: str | Path | None, *, overwrite: bool) -> None:
    """Refuse a preview path that cannot be written, before any heavy work starts."""
    if path is None:
        return
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")
    if not path.parent.is_dir():
        raise InputError(f"{path}: its directory does not exist; create it first")


def render_preview(
    rasters: Sequence[str | Path],
    layers: Sequence[PreviewLayer],
    out: str | Path,
    *,
    titles: Sequence[str] | None = None,
    bands: Sequence[int] | None = None,
    max_side: int = 1024,
    asset: str | None = None,
) -> Path:
    """Panels of `rasters` side by side, every layer drawn on each, a legend below; PNG at `out`.
    A raster may be a URL or a STAC Item (`asset` chooses its asset, as in geoseg.io.raster.resolve)."""
    from geoseg.io import raster

    if not rasters:
        raise InputError("a preview needs at least one raster to draw on")
    if max_side < 16:
        raise InputError(f"preview size {max_side} is too small; use at least 16 pixels")
    out = Path(out)
    if not out.parent.is_dir():
        raise InputError(f"{out}: its directory does not exist; create it first")
    sources = [raster.resolve(r, asset) for r in rasters]
    titles = list(titles) if titles is not None else [s.short_name for s in sources]
    panels = [draw_panel(s.href, layers, title, bands, max_side) for s, title in zip(sources, titles, strict=True)]
    width = sum(p.width for p in panels) + GAP * (len(panels) - 1)
    height = max(p.height for p in panels) + LEGEND_HEIGHT
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    x = 0
    for panel in panels:
        sheet.paste(panel, (x, 0))
        x += panel.width + GAP
    draw_legend(sheet, layers, top=height - LEGEND_HEIGHT)
    part = out.with_name(f".{out.name}.part")
    try:  # written beside the target and renamed: never a half-written PNG
        sheet.save(part, format="PNG", optimize=True)
        part.replace(out)
    finally:
        part.unlink(missing_ok=True)
    return out


# ------------------------------------------------------------------------------ one panel


def draw_panel(
    path: str | Path, layers: Sequence[PreviewLayer], title: str, bands: Sequence[int] | None, max_side: int
) -> Image.Image:
    with rasterio.open(path) as src:
        scale = max_side / max(src.width, src.height)
        width, height = max(1, round(src.width * scale)), max(1, round(src.height * scale))
        image = read_quicklook(src, width, height, bands)
        # the panel's own geotransform: pixel (col, row) of the panel -> map coordinates
        transform = src.transform @ Affine.scale(src.width / width, src.height / height)
        crs = src.crs
    panel = Image.fromarray(image, "RGB").convert("RGBA")
    for layer in layers:  # one overlay per layer: a hole clears only its own layer's fill
        overlay = Image.new("RGBA", panel.size, (0, 0, 0, 0))
        draw_polygons(overlay, layer, transform, crs)
        panel = Image.alpha_composite(panel, overlay)
    panel = panel.convert("RGB")
    draw_title(panel, title)
    return panel


def read_quicklook(src, width: int, height: int, bands: Sequence[int] | None) -> np.ndarray:
    """height x width x 3 uint8: the chosen bands, decimated and stretched; nodata in grey."""
    if bands is None:
        bands = [1, 2, 3] if src.count >= 3 else [1]
    bands = list(bands)[:3]
    for b in bands:
        if not 1 <= b <= src.count:
            raise InputError(f"{src.name}: has {src.count} band(s); band {b} does not exist")
    downsampling = width < src.width
    resampling = Resampling.average if downsampling else Resampling.nearest
    data = src.read(bands, out_shape=(len(bands), height, width), resampling=resampling, masked=True)
    valid = ~np.ma.getmaskarray(data).any(axis=0)
    values = np.ma.getdata(data).astype(np.float64)
    if np.issubdtype(src.dtypes[0], np.floating):
        valid &= np.isfinite(values).all(axis=0)
    # One stretch for all bands: per-band stretches shift the colour balance (grey roads turn
    # blue), and the preview should look like the scene.
    rgb = stretch(values, np.broadcast_to(valid, values.shape))
    if len(bands) == 1:
        rgb = np.repeat(rgb, 3, axis=0)
    elif len(bands) == 2:
        rgb = np.concatenate([rgb, rgb[:1]])
    out = np.moveaxis(rgb, 0, -1).copy()
    out[~valid] = NODATA_GREY
    return out


def stretch(band: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Linear 2-98 percentile stretch of the valid pixels to 0..255."""
    if not valid.any():
        return np.zeros(band.shape, np.uint8)
    low, high = np.percentile(band[valid], [2, 98])
    if high <= low:
        high = low + 1
    return (np.clip((band - low) / (high - low), 0, 1) * 255).astype(np.uint8)


def draw_polygons(overlay: Image.Image, layer: PreviewLayer, transform: Affine, crs) -> None:
    """Fill (translucent) and outline (opaque) every polygon of the layer on the RGBA overlay."""
    gdf = layer.gdf
    if gdf.empty:
        return
    if crs is not None and gdf.crs is not None and gdf.crs != crs:
        gdf = gdf.to_crs(crs)
    inverse = ~transform
    polygons = [p for geom in gdf.geometry.values if geom is not None for p in shapely.get_parts(geom)]
    # Largest first: an island inside another polygon's hole is drawn after the hole is cleared.
    polygons.sort(key=lambda p: -p.area)
    draw = ImageDraw.Draw(overlay)
    fill = (*layer.colour, FILL_ALPHA)
    line = (*layer.colour, 255)
    for poly in polygons:
        if poly.is_empty or poly.geom_type != "Polygon":
            continue
        exterior = to_pixels(poly.exterior, inverse)
        holes = [to_pixels(ring, inverse) for ring in poly.interiors]
        draw.polygon(exterior, fill=fill)
        for hole in holes:
            draw.polygon(hole, fill=(0, 0, 0, 0))
        for ring in (exterior, *holes):
            draw.line([*ring, ring[0]], fill=line, width=OUTLINE_PX, joint="curve")


def to_pixels(ring, inverse: Affine) -> list[tuple[float, float]]:
    xy = np.asarray(ring.coords)[:, :2]
    a, b, c, d, e, f = inverse[:6]
    cols = a * xy[:, 0] + b * xy[:, 1] + c
    rows = d * xy[:, 0] + e * xy[:, 1] + f
    return list(zip(cols.tolist(), rows.tolist(), strict=True))


# ------------------------------------------------------------------------------ text


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def draw_title(panel: Image.Image, title: str) -> None:
    draw = ImageDraw.Draw(panel)
    font = _font()
    left, top, right, bottom = draw.textbbox((6, 4), title, font=font)
    draw.rectangle((left - 4, top - 3, right + 4, bottom + 3), fill=(0, 0, 0))
    draw.text((6, 4), title, fill=(255, 255, 255), font=font)


def draw_legend(sheet: Image.Image, layers: Sequence[PreviewLayer], top: int) -> None:
    draw = ImageDraw.Draw(sheet)
    font = _font()
    x, mid = 8, top + LEGEND_HEIGHT // 2
    if not layers or all(layer.gdf.empty for layer in layers):
        draw.text((x, mid), "no polygons found", fill=(230, 230, 230), font=font, anchor="lm")
        return
    for layer in layers:
        draw.rectangle((x, mid - 6, x + 12, mid + 6), fill=layer.colour, outline=(255, 255, 255))
        label = f"{layer.label} ({len(layer.gdf)})"
        draw.text((x + 18, mid), label, fill=(230, 230, 230), font=font, anchor="lm")
        x += 18 + int(draw.textlength(label, font=font)) + 16
        if x >= sheet.width:
            break
