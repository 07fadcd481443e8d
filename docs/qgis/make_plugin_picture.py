"""Make docs/img/qgis-plugin-dialog.png and qgis-plugin-segment.png: the plugin in real (headless) QGIS.

    make qgis-plugin
    QT_QPA_PLATFORM=offscreen /usr/bin/python3 docs/qgis/make_plugin_picture.py [--geoseg .venv/bin/geoseg]

Runs under the system Python that has QGIS's bindings (Debian: python3-qgis). It installs
dist/geoseg_processing.zip into a throw-away QGIS profile, starts it as QGIS starts a Processing
plugin, grabs the Segment dialog as the Processing Toolbox opens it (qgis-plugin-dialog.png), runs "geoseg:segment" on sample_tiles/town_utm_0p5m.tif for "buildings" with
processing.run, loads the result as the Processing dialog does (the layer gets geoseg's style from
the GeoPackage), and renders that layer over the scene with docs/qgis_render.py
(qgis-plugin-segment.png). The Processing
log (the geoseg command, its progress) is printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import zipfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "docs"))
sys.path.insert(0, "/usr/share/qgis/python/plugins")

from qgis.core import (  # noqa: E402
    Qgis,
    QgsApplication,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)


class LogFeedback(QgsProcessingFeedback):
    """Prints what the Processing dialog's log would show."""

    def setProgress(self, value):  # noqa: N802
        super().setProgress(value)
        print(f"  progress {value:5.1f} %", file=sys.stderr)

    def pushCommandInfo(self, text):  # noqa: N802
        print(f"  command: {text}", file=sys.stderr)

    def pushInfo(self, text):  # noqa: N802
        print(f"  {text}", file=sys.stderr)

    def reportError(self, error, fatalError=False):  # noqa: N802
        print(f"  ERROR: {error}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zip", type=Path, default=REPO / "dist" / "geoseg_processing.zip")
    ap.add_argument("--geoseg", default=str(REPO / ".venv" / "bin" / "geoseg"),
                    help="geoseg executable (sets GEOSEG_EXECUTABLE for the plugin)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    args = ap.parse_args()
    if not args.zip.exists():
        raise SystemExit(f"{args.zip} not found: run `make qgis-plugin` first")
    os.environ["GEOSEG_EXECUTABLE"] = args.geoseg
    scene = REPO / "sample_tiles" / "town_utm_0p5m.tif"

    with tempfile.TemporaryDirectory(prefix="geoseg-qgis-") as tmp:
        plugins = Path(tmp) / "profile" / "python" / "plugins"
        plugins.mkdir(parents=True)
        with zipfile.ZipFile(args.zip) as zf:
            zf.extractall(plugins)
        app = QgsApplication([], True, str(Path(tmp) / "profile"))
        app.initQgis()
        try:
            from processing.core.Processing import Processing

            Processing.initialize()
            import processing
            import qgis.utils
            from processing.gui.Postprocessing import handleAlgorithmResults
            from qgis_render import render_layers

            sys.path.insert(0, str(plugins))
            qgis.utils.plugin_paths = [str(plugins)]
            qgis.utils.updateAvailablePlugins()
            if not (qgis.utils.loadPlugin("geoseg_processing") and qgis.utils.startProcessingPlugin("geoseg_processing")):
                raise SystemExit("QGIS could not start the geoseg_processing plugin")
            dialog_picture(args.out / "qgis-plugin-dialog.png", scene)
            QgsProject.instance().clear()
            context, feedback = QgsProcessingContext(), LogFeedback()
            context.setProject(QgsProject.instance())
            params = {"INPUT": str(scene), "QUERY": "buildings", "OUTPUT": str(Path(tmp) / "buildings.gpkg")}
            print(f"QGIS {Qgis.QGIS_VERSION}: processing.run('geoseg:segment', {params})", file=sys.stderr)
            results = processing.run("geoseg:segment", params, context=context, feedback=feedback)
            alg = QgsApplication.processingRegistry().createAlgorithmById("geoseg:segment")
            if not handleAlgorithmResults(alg, context, feedback, False, params):
                raise SystemExit("QGIS could not load the result")
            vectors = [lyr for lyr in QgsProject.instance().mapLayers().values() if isinstance(lyr, QgsVectorLayer)]
            render_layers(args.out / "qgis-plugin-segment.png", QgsRasterLayer(str(scene), scene.stem), vectors)
            print(f"{results['FEATURES']} polygons", file=sys.stderr)
        finally:
            app.exitQgis()
    for name in ("qgis-plugin-dialog.png", "qgis-plugin-segment.png"):
        palette_png(args.out / name)


def dialog_picture(out: Path, scene: Path) -> None:
    """The Segment dialog, as *Processing Toolbox > geoseg > Segment* opens it, the scene loaded."""
    from processing.gui.AlgorithmDialog import AlgorithmDialog

    QgsProject.instance().addMapLayer(QgsRasterLayer(str(scene), scene.stem))
    dialog = AlgorithmDialog(QgsApplication.processingRegistry().createAlgorithmById("geoseg:segment"))
    dialog.resize(900, 640)
    dialog.show()
    QgsApplication.processEvents()
    if not dialog.grab().save(str(out), "PNG"):
        raise SystemExit(f"could not write {out}")
    dialog.close()
    print(f"rendered {out}", file=sys.stderr)


def palette_png(path: Path) -> None:
    """256 colours: the same picture, a third of the bytes (as docs/make_pictures.py does)."""
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    small.save(path, optimize=True)


if __name__ == "__main__":
    main()
