"""The default QGIS style of a geoseg layer: its colour, the QML and SLD documents, and the row
in QGIS's `layer_styles` table that makes QGIS open the layer styled.

The colour depends on the layer name only, so the same query is drawn the same way in every file
(and in the PNG previews, which use `style_colour` and `FILL_ALPHA` too).
"""

from __future__ import annotations

import colorsys
import hashlib
import re
import sqlite3
from datetime import datetime, timezone
from xml.sax.saxutils import escape

FILL_ALPHA = 90  # of 255: the image stays visible under the polygons
OUTLINE_WIDTH_MM = 0.5

# The table exactly as QGIS 3.22 creates it through GDAL (QgsOgrProviderMetadata::saveStyle).
# GDAL has no API for it: QGIS writes it with SQL, and so do we.
LAYER_STYLES_DDL = (
    'CREATE TABLE IF NOT EXISTS "layer_styles" ( "id" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, '
    '"f_table_catalog" TEXT(256), "f_table_schema" TEXT(256), "f_table_name" TEXT(256), '
    '"f_geometry_column" TEXT(256), "styleName" TEXT(30), "styleQML" TEXT, "styleSLD" TEXT, '
    '"useAsDefault" BOOLEAN, "description" TEXT, "owner" TEXT(30), "ui" TEXT(30), '
    "\"update_time\" DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')))"
)


def style_colour(name: str) -> tuple[int, int, int]:
    """A saturated colour picked deterministically from the layer name."""
    hue = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:4], "big") / 2**32
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.9)
    return round(r * 255), round(g * 255), round(b * 255)


def _outline_colour(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    r, g, b = rgb
    return round(r * 0.6), round(g * 0.6), round(b * 0.6)


_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def xml_text(value: str) -> str:
    """Text for an XML element: escaped, and the control characters XML 1.0 cannot carry replaced
    by U+FFFD (JSON, where geoseg keeps the verbatim query, has no such limit)."""
    return escape(_XML_INVALID.sub("\ufffd", value))


def style_qml(name: str) -> str:
    """A QGIS 3 single-symbol style: semi-transparent fill, darker solid outline."""
    rgb = style_colour(name)
    fill = ",".join(map(str, (*rgb, FILL_ALPHA)))
    line = ",".join(map(str, (*_outline_colour(rgb), 255)))
    props = {
        "color": fill, "joinstyle": "bevel", "offset": "0,0", "offset_unit": "MM",
        "outline_color": line, "outline_style": "solid", "outline_width": str(OUTLINE_WIDTH_MM),
        "outline_width_unit": "MM", "style": "solid",
    }
    options = "".join(f'       <Option type="QString" name="{k}" value="{v}"/>\n' for k, v in props.items())
    legacy = "".join(f'      <prop k="{k}" v="{v}"/>\n' for k, v in props.items())  # read by older QGIS
    return (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        '<qgis version="3.22.0" styleCategories="Symbology">\n'
        ' <renderer-v2 type="singleSymbol" symbollevels="0" enableorderby="0" forceraster="0">\n'
        "  <symbols>\n"
        '   <symbol type="fill" name="0" alpha="1" clip_to_extent="1" force_rhr="0">\n'
        '    <layer class="SimpleFill" enabled="1" locked="0" pass="0">\n'
        '     <Option type="Map">\n'
        f"{options}"
        "     </Option>\n"
        f"{legacy}"
        "    </layer>\n"
        "   </symbol>\n"
        "  </symbols>\n"
        "  <rotation/>\n"
        "  <sizescale/>\n"
        " </renderer-v2>\n"
        " <blendMode>0</blendMode>\n"
        " <featureBlendMode>0</featureBlendMode>\n"
        " <layerOpacity>1</layerOpacity>\n"
        "</qgis>\n"
    )


def style_sld(name: str) -> str:
    """The same style as an OGC SLD 1.1 document (for clients that read SLD)."""
    rgb = style_colour(name)
    fill = "#{:02x}{:02x}{:02x}".format(*rgb)
    line = "#{:02x}{:02x}{:02x}".format(*_outline_colour(rgb))
    opacity = f"{FILL_ALPHA / 255:.2f}"
    stroke_px = f"{OUTLINE_WIDTH_MM * 96 / 25.4:.0f}"
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<StyledLayerDescriptor xmlns="http://www.opengis.net/sld" xmlns:se="http://www.opengis.net/se"'
        ' xmlns:ogc="http://www.opengis.net/ogc" version="1.1.0">\n'
        " <NamedLayer>\n"
        f"  <se:Name>{xml_text(name)}</se:Name>\n"
        "  <UserStyle>\n"
        f"   <se:Name>{xml_text(name)}</se:Name>\n"
        "   <se:FeatureTypeStyle>\n"
        "    <se:Rule>\n"
        "     <se:Name>Single symbol</se:Name>\n"
        "     <se:PolygonSymbolizer>\n"
        "      <se:Fill>\n"
        f'       <se:SvgParameter name="fill">{fill}</se:SvgParameter>\n'
        f'       <se:SvgParameter name="fill-opacity">{opacity}</se:SvgParameter>\n'
        "      </se:Fill>\n"
        "      <se:Stroke>\n"
        f'       <se:SvgParameter name="stroke">{line}</se:SvgParameter>\n'
        f'       <se:SvgParameter name="stroke-width">{stroke_px}</se:SvgParameter>\n'
        '       <se:SvgParameter name="stroke-linejoin">bevel</se:SvgParameter>\n'
        "      </se:Stroke>\n"
        "     </se:PolygonSymbolizer>\n"
        "    </se:Rule>\n"
        "   </se:FeatureTypeStyle>\n"
        "  </UserStyle>\n"
        " </NamedLayer>\n"
        "</StyledLayerDescriptor>\n"
    )


def timestamp() -> str:
    """Now, as GeoPackage and QGIS write timestamps (UTC, milliseconds, Z)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _table_exists(con: sqlite3.Connection, name: str) -> bool:
    row = con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
    return row is not None


def ensure_layer_styles(con: sqlite3.Connection) -> None:
    """Create `layer_styles` as QGIS does, registered in gpkg_contents (and GDAL's feature-count
    cache, with its triggers, where the file has one) so that GDAL lists it as a table."""
    if _table_exists(con, "layer_styles"):
        return
    con.execute(LAYER_STYLES_DDL)
    con.execute(
        "INSERT INTO gpkg_contents (table_name, data_type, identifier, description, last_change, srs_id) "
        "VALUES ('layer_styles', 'attributes', 'layer_styles', '', ?, 0)",
        (timestamp(),),
    )
    if _table_exists(con, "gpkg_ogr_contents"):  # GDAL's feature-count cache
        con.execute("INSERT INTO gpkg_ogr_contents (table_name, feature_count) VALUES ('layer_styles', 0)")
        con.execute(
            'CREATE TRIGGER "trigger_insert_feature_count_layer_styles" AFTER INSERT ON "layer_styles" '
            "BEGIN UPDATE gpkg_ogr_contents SET feature_count = feature_count + 1 "
            "WHERE lower(table_name) = lower('layer_styles'); END"
        )
        con.execute(
            'CREATE TRIGGER "trigger_delete_feature_count_layer_styles" AFTER DELETE ON "layer_styles" '
            "BEGIN UPDATE gpkg_ogr_contents SET feature_count = feature_count - 1 "
            "WHERE lower(table_name) = lower('layer_styles'); END"
        )


def add_default_style(con: sqlite3.Connection, table: str, geometry_column: str, description: str) -> None:
    """The layer's default style row (useAsDefault = 1, `f_table_schema` '' as QGIS expects)."""
    con.execute(
        "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, f_geometry_column, "
        "styleName, styleQML, styleSLD, useAsDefault, description, owner, ui, update_time) "
        "VALUES ('', '', ?, ?, ?, ?, ?, 1, ?, '', NULL, ?)",
        (table, geometry_column, table[:30], style_qml(table), style_sld(table), description, timestamp()),
    )
