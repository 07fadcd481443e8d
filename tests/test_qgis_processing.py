"""QGIS runs geoseg as an external tool: the Processing script in docs/qgis/ works in real QGIS.

Debian's python3-qgis (QGIS 3.22 LTR) runs docs/qgis/geoseg_processing.py headless in a
subprocess; the algorithm calls this checkout's `geoseg` executable with a tiny random compact
checkpoint, forwards its progress, and hands the written layer to QGIS to load. Skipped, with the
reason, where the system Python has no QGIS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from conftest import smooth_field, write_rgb

SYSTEM_PYTHON = "/usr/bin/python3"
REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "docs" / "qgis" / "geoseg_processing.py"
GEOSEG = Path(sys.executable).parent / "geoseg"

DRIVER = r"""
import importlib.util, json, sys
from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingFeedback, QgsProject
app = QgsApplication([], False)
app.initQgis()
spec = importlib.util.spec_from_file_location("geoseg_processing", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
alg = module.GeosegAlgorithm()
alg.initAlgorithm()
context = QgsProcessingContext()
context.setProject(QgsProject.instance())

class Feedback(QgsProcessingFeedback):
    progress, errors = [], []
    def setProgress(self, value):
        self.progress.append(value)
        super().setProgress(value)
    def reportError(self, error, fatalError=False):
        self.errors.append(error)

feedback = Feedback()
params = json.loads(sys.argv[2])
results, ok = alg.run(params, context, feedback)
print(json.dumps({"ok": ok, "results": results, "progress": feedback.progress, "errors": feedback.errors,
                  "to_load": list(context.layersToLoadOnCompletion().keys())}))
del alg
app.exitQgis()
"""


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700, exist_ok=True)
    return env | {"QT_QPA_PLATFORM": "offscreen", "XDG_RUNTIME_DIR": str(runtime)}


@pytest.fixture
def qgis_python(tmp_path):
    if not Path(SYSTEM_PYTHON).exists():
        pytest.skip(f"{SYSTEM_PYTHON} not found")
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import qgis.core"], capture_output=True, env=_env(tmp_path))
    if probe.returncode != 0:
        pytest.skip("QGIS Python bindings not installed (apt-get install python3-qgis)")
    if not GEOSEG.exists():
        pytest.skip(f"{GEOSEG} not installed (pip install -e .)")
    return SYSTEM_PYTHON


@pytest.mark.qgis
@pytest.mark.slow
def test_processing_script_runs_geoseg_and_loads_the_layer(qgis_python, tmp_path):
    from geoseg.models.compact.config import tiny_config
    from geoseg.models.compact.model import CompactModel

    checkpoint = tmp_path / "tiny-compact"
    CompactModel(tiny_config()).save_pretrained(checkpoint)
    scene = tmp_path / "scene.tif"
    g = smooth_field(160, 160, seed=2)
    write_rgb(scene, np.stack([g, g * 0.9, g * 0.8]).astype(np.uint8), Affine(0.5, 0, 500000, 0, -0.5, 5000080))
    out = tmp_path / "out.gpkg"
    params = {"INPUT": str(scene), "QUERY": "buildings", "THRESHOLD": 0.0, "MIN_AREA": "0",
              "MODEL": str(checkpoint), "EXTRA": "", "GEOSEG": str(GEOSEG), "OUTPUT": str(out)}
    r = subprocess.run([qgis_python, "-c", DRIVER, str(SCRIPT), json.dumps(params)], capture_output=True,
                       text=True, env=_env(tmp_path), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["ok"] and result["results"]["OUTPUT"] == str(out)
    assert out.exists()
    summary = json.loads(result["results"]["SUMMARY"])
    assert summary["command"] == "segment" and summary["layers"][0]["name"] == "buildings"
    # threshold 0 makes every valid pixel foreground: one polygon covering the scene
    assert summary["layers"][0]["features"] == 1
    assert result["to_load"] == [f"{out}|layername=buildings"]
    assert result["progress"][-1] == 100


@pytest.mark.qgis
def test_processing_script_reports_a_missing_executable(qgis_python, tmp_path):
    scene = tmp_path / "scene.tif"
    write_rgb(scene, np.zeros((3, 32, 32), np.uint8) + 100, Affine(1, 0, 0, 0, -1, 32))
    params = {"INPUT": str(scene), "QUERY": "x", "GEOSEG": str(tmp_path / "no-such-geoseg"),
              "OUTPUT": str(tmp_path / "o.gpkg")}
    r = subprocess.run([qgis_python, "-c", DRIVER, str(SCRIPT), json.dumps(params)], capture_output=True,
                       text=True, env=_env(tmp_path), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert not result["ok"]
    assert any("not found: give the full path of geoseg" in e for e in result["errors"]), result
