"""A STAC Item (a local JSON file or a URL) as a scene: which asset(s) to read, and what to record.

pystac parses the Item; its JSON is fetched through GDAL's virtual file systems (geoseg.io.remote),
so a local path, an https:// URL and an s3:// key work alike, with the same credentials,
timeouts and retries as the raster reads.

The asset read is, in order:
    --asset NAME                      that asset
    --asset red,green,blue            three single-band assets stacked into one RGB raster (a VRT)
    the `visual` asset, or the one whose roles include "visual"
    assets red, green and blue (by key, or by eo:bands common_name): stacked
    the only raster (image/*) asset with role "data"
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from geoseg.errors import InputError
from geoseg.io import remote

RGB = ("red", "green", "blue")
RASTER_TYPES = ("image/tiff", "image/vnd.stac.geotiff", "image/jp2", "application/x-geotiff")

_lock = threading.Lock()
_memory_files: dict[str, Any] = {}  # stacked VRTs in /vsimem, kept open for the process


@dataclass(frozen=True)
class ItemAssets:
    """What a STAC Item resolved to: the GDAL path to read and the provenance record."""

    href: str  # GDAL path: the asset, or a VRT stacking several
    name: str  # display: the item's href (no credentials) and the asset key(s)
    record: dict[str, Any] = field(default_factory=dict)
    asset_hrefs: tuple[str, ...] = ()  # absolute hrefs of the assets read


def is_stac(source: str | Path) -> bool:
    """A STAC Item input: a .json path or URL, or a STAC API item URL (/items/<id>)."""
    text = str(source)
    return remote.suffix(text) in (".json", ".geojson") or ("://" in text and "/items/" in text
                                                             and remote.suffix(text) == "")


def resolve(source: str | Path, asset: str | None = None) -> ItemAssets:
    """Read the Item and choose its asset(s); every failure is one line naming the item."""
    import pystac

    text = str(source)
    what = remote.redact(text)
    if remote.is_remote(text):
        remote.configure_gdal(text)
        body = remote.read_text(remote.gdal_path(text), what)
        self_href = text
    else:
        path = Path(text)
        if not path.is_file():
            raise InputError(f"{path}: no such file; check the path")
        body = path.read_text(encoding="utf-8-sig")
        self_href = str(path.resolve())
    try:
        data = json.loads(body)
    except json.JSONDecodeError as e:
        raise InputError(f"{what}: not JSON ({e.msg} at line {e.lineno}); give a STAC Item") from None
    if not isinstance(data, dict) or data.get("type") != "Feature" or "assets" not in data:
        kind = data.get("type") if isinstance(data, dict) else type(data).__name__
        raise InputError(f"{what}: not a STAC Item (type {kind!r}); give an Item, not a Collection or search result")
    try:
        item = pystac.Item.from_dict(data, href=self_href, migrate=True, preserve_dict=False)
    except Exception as e:  # pystac raises several types for a malformed item
        raise InputError(f"{what}: not a valid STAC Item ({remote.redact(str(e).splitlines()[0])})") from None
    keys = choose_assets(item, asset, what)
    hrefs = tuple(item.assets[k].get_absolute_href() or item.assets[k].href for k in keys)
    self_link = item.get_single_link("self")
    self_abs = self_link.get_absolute_href() if self_link else text
    record = {
        "stac_item": item.id,
        "stac_self": remote.redact(self_abs if self_abs is not None else text),
        "stac_href": what,
        "stac_assets": {k: remote.redact(h) for k, h in zip(keys, hrefs, strict=True)},
    }
    name = f"{what}#{'+'.join(keys)}"
    if len(keys) == 1:
        return ItemAssets(open_path(hrefs[0]), name, record, hrefs)
    return ItemAssets(stacked_vrt(hrefs, name), name, record, hrefs)


def open_path(href: str) -> str:
    """The GDAL path of an asset href (a URL, a /vsi path or a local file)."""
    if href.startswith("file://"):
        href = href[len("file://"):]
    if remote.is_remote(href):
        remote.configure_gdal(href)
    return remote.gdal_path(href)


def choose_assets(item: Any, asked: str | None, what: str) -> list[str]:
    assets = item.assets
    listing = ", ".join(sorted(assets)) or "none"
    if asked:
        keys = [k.strip() for k in asked.split(",") if k.strip()]
        missing = [k for k in keys if k not in assets]
        if missing:
            raise InputError(f"{what}: has no asset {missing[0]!r}; its assets: {listing}")
        if len(keys) not in (1, 3):
            raise InputError(f"--asset {asked!r}: name one asset or three (red,green,blue) to stack")
        return keys
    if "visual" in assets:
        return ["visual"]
    visual = [k for k, a in assets.items() if "visual" in (a.roles or [])]
    if visual:
        return [visual[0]]
    by_colour: dict[str, str] = {}
    for key, a in assets.items():
        names = {key.lower()} | {b.get("common_name") for b in a.extra_fields.get("eo:bands", []) or []
                                 if isinstance(b, dict)}
        names |= {b.get("common_name") for b in a.extra_fields.get("bands", []) or [] if isinstance(b, dict)}
        for colour in RGB:
            if colour in names and len(a.extra_fields.get("eo:bands", []) or [1]) == 1:
                by_colour.setdefault(colour, key)
    if all(c in by_colour for c in RGB):
        return [by_colour[c] for c in RGB]
    data = [k for k, a in assets.items() if "data" in (a.roles or [])
            and (a.media_type or "").split(";")[0].strip() in RASTER_TYPES]
    if len(data) == 1:
        return data
    raise InputError(f"{what}: no visual asset and no red/green/blue assets; choose one with --asset "
                     f"(its assets: {listing})")


def stacked_vrt(hrefs: tuple[str, ...], name: str) -> str:
    """A VRT (in /vsimem) stacking the first band of each asset; they must share one grid."""
    import rasterio
    from rasterio.errors import RasterioIOError
    from rasterio.io import MemoryFile

    paths = [open_path(h) for h in hrefs]
    grids = []
    for href, path in zip(hrefs, paths, strict=True):
        try:
            with rasterio.open(path) as ds:
                grids.append((ds.width, ds.height, ds.transform, ds.crs, ds.dtypes[0], ds.nodata))
        except RasterioIOError as e:
            remote.raise_for(remote.redact(href), str(e), opening=True)
    width, height, transform, crs, dtype, nodata = grids[0]
    for href, grid in zip(hrefs[1:], grids[1:], strict=True):
        if grid[:4] != (width, height, transform, crs):
            raise InputError(f"{name}: asset {remote.redact(href)} is on another grid than {remote.redact(hrefs[0])}; "
                             "stack assets of one resolution (e.g. --asset red,green,blue at 10 m) or name one asset")
    gdal_type = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32", "int32": "Int32",
                 "float32": "Float32", "float64": "Float64"}.get(dtype, "Float32")
    nodata_xml = f"<NoDataValue>{nodata!r}</NoDataValue>" if nodata is not None else ""
    bands = "".join(
        f'<VRTRasterBand dataType="{gdal_type}" band="{i}">{nodata_xml}<SimpleSource>'
        f'<SourceFilename relativeToVRT="0">{escape(p)}</SourceFilename><SourceBand>1</SourceBand>'
        f"</SimpleSource></VRTRasterBand>"
        for i, p in enumerate(paths, 1))
    xml = (f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">'
           f"<SRS>{escape(crs.to_wkt()) if crs else ''}</SRS>"
           f"<GeoTransform>{', '.join(repr(v) for v in transform.to_gdal())}</GeoTransform>{bands}</VRTDataset>")
    with _lock:
        if xml not in _memory_files:
            _memory_files[xml] = MemoryFile(xml.encode(), ext=".vrt")
        return _memory_files[xml].name
