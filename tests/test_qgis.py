"""A real, headless QGIS opens what geoseg writes: valid, styled, described, editable.

QGIS is not a pip package: the check runs Debian's python3-qgis (QGIS 3.22 LTR with GDAL 3.6 on
bookworm, the oldest combination users still run) in a subprocess, with the system interpreter.
It is skipped, with the reason, where `/usr/bin/python3 -c "import qgis"` fails.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from geoseg.io.gpkg import LayerData, write_geopackage
from geoseg.io.qgis_style import style_colour
from geoseg.queries import layer_name_for
from geoseg.vectorize import VectorizeOptions, vectorize_probabilities

SYSTEM_PYTHON = "/usr/bin/python3"
QUERY = "damaged buildings near the 'river' — 🏠 \"north\"; DROP TABLE x;--"


def _qgis_missing() -> str | None:
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found"
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import qgis.core"], capture_output=True, text=True,
                           env=_env(), timeout=120)
    if probe.returncode != 0:
        return "QGIS Python bindings not installed (apt-get install python3-qgis)"
    return None


def _env(runtime_dir: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["QT_QPA_PLATFORM"] = "offscreen"
    if runtime_dir is not None:  # Qt wants a private (0700) runtime directory
        runtime_dir.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(runtime_dir)
    return env


pytestmark = pytest.mark.qgis
_MISSING = _qgis_missing()

# Runs inside QGIS's Python: prints one JSON object describing what QGIS sees.
QGIS_SCRIPT = r"""
import json, os, shutil, sys
from osgeo import gdal
from qgis.core import (QgsApplication, QgsFeature, QgsGeometry, QgsProviderRegistry, QgsVectorLayer,
                       QgsWkbTypes, Qgis)

path, layers = sys.argv[1], sys.argv[2:]
gdal_messages = []
gdal.PushErrorHandler(lambda cls, no, msg: gdal_messages.append(msg))
ds = gdal.OpenEx(path, gdal.OF_VECTOR)
ds = None
gdal.PopErrorHandler()

app = QgsApplication([], False)
app.initQgis()
out = {"qgis": Qgis.QGIS_VERSION, "gdal": gdal.__version__, "gdal_messages": gdal_messages,
       "sublayers": sorted(s.name() for s in QgsProviderRegistry.instance().querySublayers(path)),
       "layers": {}}
for name in layers:
    layer = QgsVectorLayer(f"{path}|layername={name}", name, "ogr")
    info = {"valid": layer.isValid()}
    if layer.isValid():
        renderer = layer.renderer()
        symbol = renderer.symbol() if hasattr(renderer, "symbol") else None
        info.update(
            crs=layer.crs().authid(),
            features=layer.featureCount(),
            wkb=QgsWkbTypes.displayString(layer.wkbType()),
            fields=[f.name() for f in layer.fields()],
            renderer=renderer.type(),
            fill=list(symbol.color().getRgb()) if symbol else None,
            outline=list(symbol.symbolLayer(0).strokeColor().getRgb()) if symbol else None,
            styles=(lambda n, ids, names, *rest: names[:n])(*layer.listStylesInDatabase()),
            title=layer.metadata().title(),
            queries=[f["query"] for f in layer.getFeatures()],
        )
    out["layers"][name] = info

# editing must work: no second fid column to collide with GDAL's primary key
copy = path + ".edit.gpkg"
shutil.copyfile(path, copy)
layer = QgsVectorLayer(f"{copy}|layername={layers[0]}", "edit", "ogr")
layer.startEditing()
feature = QgsFeature(layer.fields())
feature.setGeometry(QgsGeometry.fromWkt("MULTIPOLYGON(((500000 4000000, 500001 4000000, 500001 3999999, 500000 4000000)))"))
feature["query"] = "added in QGIS"
layer.addFeature(feature)
out["edit_commit"] = layer.commitChanges()
out["edit_errors"] = layer.commitErrors()
out["edit_count"] = QgsVectorLayer(f"{copy}|layername={layers[0]}", "check", "ogr").featureCount()
print("QGIS-RESULT " + json.dumps(out), flush=True)
del layer
app.exitQgis()
os._exit(0)  # QGIS 3.22's Python bindings can crash while the interpreter tears down
"""


def _probability_raster(path: Path) -> Path:
    prob = np.zeros((64, 64), dtype=np.uint8)
    prob[8:20, 8:30] = 230
    prob[30:50, 20:40] = 200
    prob[36:44, 26:34] = 0  # a hole
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=1, dtype="uint8", nodata=255,
                       crs="EPSG:32618", transform=from_origin(500000, 4000000, 0.5, 0.5)) as dst:
        dst.write(prob, 1)
        dst.scales = (1 / 254,)
    return path


@pytest.mark.skipif(_MISSING is not None, reason=str(_MISSING))
def test_qgis_opens_styled_layers(tmp_path):
    polygons = vectorize_probabilities(_probability_raster(tmp_path / "p.tif"), VectorizeOptions(block_size=16))
    assert len(polygons) == 2
    polygons["query"] = QUERY
    polygons["model"] = "compact"
    name = layer_name_for(QUERY)
    empty = polygons.iloc[:0]
    out = tmp_path / "out.gpkg"
    write_geopackage(out, [
        LayerData(name, polygons, QUERY, {"run_id": "r1", "query": QUERY}),
        LayerData("nothing_found", empty, "nothing", {"run_id": "r1", "query": "nothing"}),
    ])

    proc = subprocess.run([SYSTEM_PYTHON, "-c", QGIS_SCRIPT, str(out), name, "nothing_found"],
                          capture_output=True, text=True, env=_env(tmp_path / "xdg"), timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("QGIS-RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    seen = json.loads(lines[-1].removeprefix("QGIS-RESULT "))

    assert seen["gdal_messages"] == []  # e.g. GDAL 3.6's warning on GeoPackage 1.4 files
    assert seen["sublayers"] == sorted([name, "nothing_found"])  # layer_styles is not offered as data

    main = seen["layers"][name]
    assert main["valid"]
    assert main["crs"] == "EPSG:32618"
    assert main["features"] == 2
    assert main["wkb"] == "MultiPolygon"
    assert "fid" in main["fields"] and main["fields"].count("fid") == 1
    assert main["renderer"] == "singleSymbol"
    rgb = style_colour(name)
    assert main["fill"] == [*rgb, 90]  # our default style was loaded from layer_styles
    assert main["outline"][3] == 255
    assert main["styles"] == [name[:30]]
    assert main["title"] == QUERY
    assert main["queries"] == [QUERY, QUERY]

    empty_seen = seen["layers"]["nothing_found"]
    assert empty_seen["valid"] and empty_seen["features"] == 0 and empty_seen["wkb"] == "MultiPolygon"
    assert empty_seen["fill"] == [*style_colour("nothing_found"), 90]

    assert seen["edit_commit"], seen["edit_errors"]
    assert seen["edit_count"] == 3
