"""Render a GeoPackage layer over its raster with real (headless) QGIS, as a user would see it.

Runs under the system Python that has QGIS's bindings (Debian: python3-qgis), not the venv:

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 docs/qgis_render.py OUT.png RASTER GPKG [LAYER...]

The vector layers are opened exactly as QGIS's "Add Vector Layer" opens them, so each one is
drawn with the default style stored in the GeoPackage's `layer_styles` table (the script fails if
QGIS did not load one: the point is to show geoseg's style, not QGIS's random colour). The map is
rendered with QgsMapRendererParallelJob at the raster's extent; the QGIS version is printed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from qgis.core import (  # noqa: E402
    Qgis,
    QgsApplication,
    QgsMapRendererParallelJob,
    QgsMapSettings,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QSize  # noqa: E402
from qgis.PyQt.QtGui import QColor  # noqa: E402

WIDTH = 900


def polygon_layers(gpkg: Path) -> list[str]:
    """The GeoPackage's layers that have geometries (not layer_styles)."""
    from osgeo import ogr

    ds = ogr.Open(str(gpkg))
    if ds is None:
        raise SystemExit(f"{gpkg}: not a GeoPackage QGIS's GDAL can open")
    layers = (ds.GetLayerByIndex(i) for i in range(ds.GetLayerCount()))
    return [lyr.GetName() for lyr in layers if lyr.GetGeomType() != ogr.wkbNone]


def load_vector(gpkg: Path, name: str) -> QgsVectorLayer:
    layer = QgsVectorLayer(f"{gpkg}|layername={name}", name, "ogr")
    if not layer.isValid():
        raise SystemExit(f"QGIS could not open layer {name!r} of {gpkg}")
    # QgsVectorLayer loads the default style from the provider's style table on construction;
    # loadDefaultStyle() reports whether it found one (it reloads the same style).
    message, found = layer.loadDefaultStyle()
    if not found:
        raise SystemExit(f"QGIS found no default style for {name!r} in {gpkg}: {message}")
    return layer


def render(out: Path, raster: Path, gpkg: Path, names: list[str]) -> None:
    base = QgsRasterLayer(str(raster), raster.stem)
    if not base.isValid():
        raise SystemExit(f"QGIS could not open {raster}")
    vectors = [load_vector(gpkg, n) for n in (names or polygon_layers(gpkg))]
    render_layers(out, base, vectors)


def render_layers(out: Path, base: QgsRasterLayer, vectors: list[QgsVectorLayer]) -> None:
    """Draw the vector layers, as they are styled, over the raster at its extent."""
    settings = QgsMapSettings()
    settings.setLayers([*vectors, base])  # first is on top
    settings.setDestinationCrs(base.crs())
    extent = base.extent()
    settings.setExtent(extent)
    height = round(WIDTH * extent.height() / extent.width())
    settings.setOutputSize(QSize(WIDTH, height))
    settings.setBackgroundColor(QColor(255, 255, 255))
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    if not job.renderedImage().save(str(out), "PNG"):
        raise SystemExit(f"could not write {out}")
    features = {v.name(): v.featureCount() for v in vectors}
    print(f"QGIS {Qgis.QGIS_VERSION}: rendered {out} ({WIDTH}x{height}) with {features}")


def main() -> None:
    if len(sys.argv) < 4:
        raise SystemExit(__doc__)
    out, raster, gpkg = (Path(a) for a in sys.argv[1:4])
    app = QgsApplication([], False)
    app.initQgis()
    try:
        render(out, raster, gpkg, sys.argv[4:])
    finally:
        app.exitQgis()


if __name__ == "__main__":
    main()
