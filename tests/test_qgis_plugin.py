"""The QGIS plugin (docs/qgis/geoseg_processing/): its zip, its runner, and the real thing in QGIS.

The zip and the runner (how geoseg's stderr becomes progress, warnings and one error line; how
Cancel stops it; where the executable is found) are checked everywhere. The rest runs Debian's
python3-qgis (QGIS 3.22 LTR, the oldest version the plugin declares) headless in a subprocess
(tests/qgis_plugin_driver.py): the zip is installed into a fresh profile and started the way QGIS
starts a Processing plugin; Segment, Change and Vectorize run through processing.run and call
this checkout's real `geoseg` (default embedded models) on the sample tiles. These skip, with the
reason, where the system Python has no QGIS, unless GEOSEG_REQUIRE_QGIS=1 (.ci/run sets it after
installing python3-qgis), where they fail instead.
"""

from __future__ import annotations

import configparser
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

from geoseg.io.qgis_style import style_colour

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "docs" / "qgis" / "geoseg_processing"
DRIVER = REPO / "tests" / "qgis_plugin_driver.py"
SAMPLES = REPO / "sample_tiles"
SYSTEM_PYTHON = "/usr/bin/python3"
GEOSEG = Path(sys.executable).parent / "geoseg"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


runner = _load("geoseg_plugin_runner", PLUGIN / "runner.py")
build_plugin = _load("geoseg_build_plugin", REPO / "docs" / "qgis" / "build_plugin.py")


# ---------------------------------------------------------------- the zip
def test_plugin_zip_is_an_installable_processing_plugin(tmp_path):
    out = build_plugin.build(tmp_path / "geoseg_processing.zip")
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        meta = configparser.ConfigParser()
        meta.read_string(zf.read("geoseg_processing/metadata.txt").decode("utf-8"))
        init = zf.read("geoseg_processing/__init__.py").decode("utf-8")
    assert {n.split("/")[0] for n in names} == {"geoseg_processing"}  # one top-level folder
    assert {"geoseg_processing/__init__.py", "geoseg_processing/metadata.txt", "geoseg_processing/provider.py",
            "geoseg_processing/algorithms.py", "geoseg_processing/runner.py", "geoseg_processing/icon.svg"} <= set(names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    general = meta["general"]
    assert general["hasProcessingProvider"] == "yes"
    assert general["qgisMinimumVersion"] == "3.22"
    assert general["qgisMaximumVersion"] == "4.99"  # the plugin repository offers it to QGIS 4 only so
    assert general["icon"] in {n.split("/", 1)[1] for n in names}
    assert "def classFactory(iface)" in init
    # reproducible: the same sources give the same bytes
    again = build_plugin.build(tmp_path / "again.zip")
    assert again.read_bytes() == out.read_bytes()


def test_makefile_builds_the_zip_outside_make_test():
    makefile = (REPO / "Makefile").read_text()
    assert "qgis-plugin:" in makefile and "dist/geoseg_processing.zip" in makefile
    test_rule = next(line for line in makefile.splitlines() if line.startswith("test:"))
    assert "qgis" not in test_rule


# ---------------------------------------------------------------- the runner (no QGIS needed)
FAKE = textwrap.dedent(r"""
    import signal, sys, time
    mode, marker = sys.argv[1], sys.argv[2]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as under a QGIS started by `qgis &` in a script

    def terminated(signum, frame):  # geoseg's console script: SIGTERM stops it as Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminated)
    try:
        sys.stderr.write("scene.tif:   0%|          | 0/10 [00:00<?, ?tile/s]")
        sys.stderr.write("\rgeoseg: WARNING: 'gizmos' is close to no concept the model knows\n")
        for i in range(1, 11):
            sys.stderr.write(f"\rscene.tif:  {i * 10}%|##        | {i}/10 [00:01<00:01, 5tile/s]")
            sys.stderr.flush()
            time.sleep(0.05 if mode != "slow" else 1.0)
        sys.stderr.write("\rvectorise: 100%|##########| 1/1 [00:00<00:00, 4block/s]\n")
        if mode == "fail":
            sys.stderr.write("geoseg: error: scene.tif: has 3 band(s); -b 9 does not exist\n")
            sys.exit(2)
        print('{"status": "ok", "layers": [{"name": "gizmos", "features": 2}]}')
    except KeyboardInterrupt:
        open(marker, "w").write("interrupted")
        sys.stderr.write("geoseg: interrupted; no output was written\n")
        sys.exit(130)
""")


def _fake_run(tmp_path, mode, cancel_at=None):
    script = tmp_path / "fake_geoseg.py"
    script.write_text(FAKE)
    seen = {"progress": [], "info": [], "warning": []}

    def canceled():
        return cancel_at is not None and any(p >= cancel_at for p in seen["progress"])

    outcome = runner.run([sys.executable, str(script), mode, str(tmp_path / "marker")],
                         progress=seen["progress"].append, info=seen["info"].append,
                         warning=seen["warning"].append, canceled=canceled, tail=90.0)
    return outcome, seen


def test_runner_maps_progress_warnings_and_the_summary(tmp_path):
    outcome, seen = _fake_run(tmp_path, "ok")
    assert outcome.returncode == 0 and not outcome.canceled
    assert json.loads(outcome.stdout)["layers"][0]["features"] == 2
    assert seen["progress"] == [9.0, 18.0, 27.0, 36.0, 45.0, 54.0, 63.0, 72.0, 81.0, 90.0, 100.0]
    assert seen["warning"] == ["'gizmos' is close to no concept the model knows"]
    assert seen["info"] == []


def test_runner_returns_geosegs_one_line_error(tmp_path):
    outcome, _ = _fake_run(tmp_path, "fail")
    assert outcome.returncode == 2
    assert outcome.message() == "scene.tif: has 3 band(s); -b 9 does not exist"


def test_runner_cancel_interrupts_geoseg_like_ctrl_c(tmp_path):
    start = time.monotonic()
    outcome, seen = _fake_run(tmp_path, "slow", cancel_at=20)
    assert outcome.canceled
    assert time.monotonic() - start < 8  # the fake would have run 10 s
    assert seen["progress"][-1] < 50
    if os.name == "posix":  # SIGTERM, which geoseg handles as Ctrl-C (cleaning up)
        assert (tmp_path / "marker").read_text() == "interrupted"


def test_progress_map_is_monotonic_over_several_bars():
    bar = runner.ProgressMap(tail=90.0)
    assert bar.update("a.tif", 50) == 45.0
    assert bar.update("b.tif", 10) is None  # a second scene's bar does not move it back
    assert bar.update("vectorise", 50) == 95.0
    assert runner.ProgressMap().update("vectorise", 40) == 40.0


def test_executable_lookup_order(tmp_path):
    bins = {}
    for name in ("param", "setting", "env", "path"):
        folder = tmp_path / name
        folder.mkdir()
        exe = folder / "geoseg"
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
        bins[name] = str(exe)
    environ = {"PATH": str(tmp_path / "path"), "GEOSEG_EXECUTABLE": bins["env"]}
    assert runner.find_executable(bins["param"], bins["setting"], environ) == bins["param"]
    assert runner.find_executable("", bins["setting"], environ) == bins["setting"]
    assert runner.find_executable("", "", environ) == bins["env"]
    assert runner.find_executable("", "", {"PATH": environ["PATH"]}) == bins["path"]
    with pytest.raises(runner.GeosegNotFound, match="GEOSEG_EXECUTABLE"):
        runner.find_executable("", "", {"PATH": str(tmp_path / "nowhere")})
    with pytest.raises(runner.GeosegNotFound, match="from the algorithm's 'geoseg executable' parameter"):
        runner.find_executable(str(tmp_path / "no-such-geoseg"), bins["setting"], environ)
    env = runner.child_environment({"PYTHONHOME": "/qgis/apps/Python39", "GDAL_DRIVER_PATH": "/qgis", "HOME": "/h"})
    assert "PYTHONHOME" not in env and "GDAL_DRIVER_PATH" not in env and env["HOME"] == "/h"


# ---------------------------------------------------------------- real QGIS
def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700, exist_ok=True)
    return env | {"QT_QPA_PLATFORM": "offscreen", "XDG_RUNTIME_DIR": str(runtime),
                  "GEOSEG_EXECUTABLE": str(GEOSEG), "GEOSEG_THREADS": "2"}


def _qgis_missing(tmp_path: Path) -> str | None:
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found"
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import qgis.core"], capture_output=True, env=_env(tmp_path))
    if probe.returncode != 0:
        return "QGIS Python bindings not installed (apt-get install python3-qgis)"
    if not GEOSEG.exists():
        return f"{GEOSEG} not installed (pip install -e .)"
    return None


@pytest.fixture
def qgis(tmp_path):
    """(zip, run): the built plugin and a function running the driver in real QGIS."""
    missing = _qgis_missing(tmp_path)
    if missing:
        if os.environ.get("GEOSEG_REQUIRE_QGIS") == "1":
            pytest.fail(f"GEOSEG_REQUIRE_QGIS=1 but {missing}")
        pytest.skip(missing)
    plugin_zip = build_plugin.build(tmp_path / "dist" / "geoseg_processing.zip")

    def run(*args: str) -> dict:
        r = subprocess.run([SYSTEM_PYTHON, str(DRIVER), str(plugin_zip), str(tmp_path / "profile"), *args],
                           capture_output=True, text=True, env=_env(tmp_path), timeout=600)
        lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
        assert r.returncode == 0 and lines, (r.stdout[-2000:], r.stderr[-3000:])
        seen = json.loads(lines[-1].removeprefix("RESULT "))
        assert seen["loaded"] and seen["started"] and seen["provider"], seen
        assert seen["module_file"].startswith(str(tmp_path / "profile" / "python" / "plugins")), seen
        return seen

    return run


@pytest.mark.qgis
def test_qgis_installs_the_zip_and_lists_the_algorithms(qgis):
    seen = qgis("inspect")
    assert seen["available"] == ["geoseg_processing"] and seen["hasProcessingProvider"] == "yes"
    algs = seen["algorithms"]
    assert set(algs) == {"geoseg:segment", "geoseg:change", "geoseg:vectorize"}
    segment = algs["geoseg:segment"]["parameters"]
    assert segment["INPUT"]["type"] == "raster" and not segment["INPUT"]["optional"]
    assert segment["QUERY"] == {"type": "string", "optional": False, "default": "buildings"}
    assert segment["OUTPUT"]["type"] == "fileDestination"
    assert segment["PROBABILITIES"] == {"type": "rasterDestination", "optional": True, "default": None}
    assert {"THRESHOLD", "MIN_AREA", "SIMPLIFY", "FILL_HOLES", "MODEL", "DEVICE", "BANDS", "EXTRA",
            "GEOSEG"} <= set(segment)
    change = algs["geoseg:change"]["parameters"]
    assert {"BEFORE", "AFTER", "QUERY", "DILATE", "OUTPUT"} <= set(change)
    vectorize = algs["geoseg:vectorize"]["parameters"]
    assert vectorize["INPUT"]["type"] == "raster" and vectorize["QUERY"]["optional"]
    assert "MODEL" not in vectorize
    for alg in algs.values():
        assert {"OUTPUT", "SUMMARY", "FEATURES"} <= set(alg["outputs"])
    assert seen["setting"]  # Processing > Options > Providers > geoseg > geoseg executable
    assert seen["after_unload"] is False  # unload() removes the provider


@pytest.mark.qgis
def test_qgis_segment_runs_real_geoseg_and_loads_the_styled_layer(qgis, tmp_path):
    out, probs = tmp_path / "town.gpkg", tmp_path / "town-probs.tif"
    seen = qgis("run", "geoseg:segment", json.dumps({
        "INPUT": str(SAMPLES / "town_utm_0p5m.tif"), "QUERY": "buildings", "PROBABILITIES": str(probs),
        "OUTPUT": str(out)}))
    assert seen["exception"] is None and seen["errors"] == [], seen
    assert seen["commands"][0].startswith(f"{GEOSEG} segment {SAMPLES / 'town_utm_0p5m.tif'} buildings")
    assert out.exists() and probs.exists()
    assert seen["results"]["OUTPUT"] == str(out) and seen["results"]["PROBABILITIES"] == str(probs)
    summary = seen["summary"]
    assert summary["command"] == "segment" and summary["layers"][0]["name"] == "buildings"
    assert seen["results"]["FEATURES"] == summary["layers"][0]["features"] > 10
    progress = seen["progress"]
    assert len(progress) >= 3 and progress == sorted(progress) and progress[-1] == 100 and 0 < progress[0] < 100
    # loaded into the project as the Processing dialog does, with geoseg's style from layer_styles
    assert seen["to_load"] == [f"{out}|layername=buildings"] and seen["loaded_ok"]
    layer = seen["project_layers"]["buildings"]
    assert layer["source"] == f"{out}|layername=buildings"
    assert layer["features"] == summary["layers"][0]["features"]
    assert layer["renderer"] == "singleSymbol" and layer["fill"] == [*style_colour("buildings"), 90]
    assert {"score", "area_m2", "query", "run_id"} <= set(layer["fields"])

    # Vectorize re-thresholds the probabilities Segment wrote, without the model
    seen = qgis("run", "geoseg:vectorize", json.dumps({
        "INPUT": str(probs), "THRESHOLD": 0.8, "MIN_AREA": "20m2", "OUTPUT": str(tmp_path / "v.gpkg")}))
    assert seen["exception"] is None, seen
    assert seen["summary"]["command"] == "vectorize" and seen["summary"]["layers"][0]["name"] == "buildings"
    assert seen["progress"][-1] == 100
    assert seen["project_layers"]["buildings"]["fill"] == [*style_colour("buildings"), 90]


@pytest.mark.qgis
def test_qgis_change_runs_real_geoseg(qgis, tmp_path):
    out = tmp_path / "change.gpkg"
    seen = qgis("run", "geoseg:change", json.dumps({
        "BEFORE": str(SAMPLES / "pair_before.tif"), "AFTER": str(SAMPLES / "pair_after.tif"),
        "QUERY": "new buildings\ndemolished buildings", "OUTPUT": str(out)}))
    assert seen["exception"] is None and seen["errors"] == [], seen
    assert seen["summary"]["command"] == "change"
    names = [layer["name"] for layer in seen["summary"]["layers"]]
    assert names == ["new_buildings", "demolished_buildings"]
    assert set(seen["project_layers"]) == set(names)
    for name in names:
        assert "change_type" in seen["project_layers"][name]["fields"]
        assert seen["project_layers"][name]["fill"] == [*style_colour(name), 90]


@pytest.mark.qgis
def test_qgis_reports_geosegs_error_in_the_processing_log(qgis, tmp_path):
    seen = qgis("run", "geoseg:segment", json.dumps({
        "INPUT": str(SAMPLES / "town_utm_0p5m.tif"), "QUERY": "buildings", "BANDS": "9",
        "OUTPUT": str(tmp_path / "bad.gpkg")}))
    message = "town_utm_0p5m.tif: has 3 band(s); -b 9 does not exist"
    assert seen["errors"] and message in seen["errors"][0] and "\n" not in seen["errors"][0]
    assert seen["exception"].startswith("geoseg failed (exit code 2): ") and message in seen["exception"]
    assert not (tmp_path / "bad.gpkg").exists()


@pytest.mark.qgis
def test_qgis_cancel_stops_geoseg_and_nothing_is_written(qgis, tmp_path):
    out = tmp_path / "cancelled.gpkg"
    seen = qgis("run", "geoseg:segment", json.dumps({
        "INPUT": str(SAMPLES / "town_utm_0p5m.tif"), "QUERY": "buildings", "OUTPUT": str(out)}), "1")
    assert seen["canceled"] and seen["exception"] == "geoseg was cancelled; it wrote nothing", seen
    assert 100 not in seen["progress"]
    assert not out.exists() and not list(tmp_path.glob("cancelled*"))


@pytest.mark.qgis
def test_qgis_reports_a_missing_executable(qgis, tmp_path):
    seen = qgis("run", "geoseg:segment", json.dumps({
        "INPUT": str(SAMPLES / "town_utm_0p5m.tif"), "QUERY": "buildings",
        "GEOSEG": str(tmp_path / "no-such-geoseg"), "OUTPUT": str(tmp_path / "o.gpkg")}))
    assert seen["exception"] and "geoseg not found" in seen["exception"]
    assert any("no-such-geoseg" in e and "full path of geoseg" in e for e in seen["errors"]), seen
