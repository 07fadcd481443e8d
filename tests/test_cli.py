"""The command line: exit codes, stdout/stderr discipline, one-line errors, nothing clobbered."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner
from shapely.geometry import box

from conftest import write_rgb, write_truth_scene
from doubles import BandOracle
from geoseg.run import pipeline
from geoseg_cli.main import cli

T = Affine(0.5, 0, 500000, 0, -0.5, 5000120)


@pytest.fixture
def scene(tmp_path):
    path = tmp_path / "scene.tif"
    write_truth_scene(path, [box(500020, 5000020, 500060, 5000080)], width=256, height=240, transform=T)
    return path


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_segment_json_on_stdout_only(oracle, scene, tmp_path):
    out = tmp_path / "o.gpkg"
    r = run("-q", "segment", scene, "buildings", "-o", out, "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["status"] == "ok" and summary["layers"][0]["features"] == 1
    assert summary["output"] == str(out)


def test_existing_output_exit_2_and_untouched(oracle, scene, tmp_path):
    out = tmp_path / "o.gpkg"
    out.write_bytes(b"keep me")
    r = run("segment", scene, "buildings", "-o", out)
    assert r.exit_code == 2
    assert r.stderr.count("\n") == 1 and "--overwrite" in r.stderr and str(out) in r.stderr
    assert out.read_bytes() == b"keep me"


@pytest.mark.parametrize("make,expect", [
    (lambda p: None, "no such file"),
    (lambda p: p.write_text("not a tiff"), "not a readable raster"),
])
def test_bad_inputs_one_line_exit_2(oracle, tmp_path, make, expect):
    bad = tmp_path / "bad.tif"
    make(bad)
    out = tmp_path / "o.gpkg"
    r = run("segment", bad, "buildings", "-o", out)
    assert r.exit_code == 2 and expect in r.stderr and str(bad) in r.stderr
    assert r.stderr.strip().count("\n") == 0 and r.stdout == ""
    assert not out.exists() and list(tmp_path.iterdir()) == ([bad] if bad.exists() else [])


def test_missing_output_directory(oracle, scene, tmp_path):
    r = run("segment", scene, "q", "-o", tmp_path / "nowhere" / "o.gpkg")
    assert r.exit_code == 2 and "nowhere" in r.stderr


def test_empty_query_exit_2(oracle, scene, tmp_path):
    r = run("segment", scene, "", "-o", tmp_path / "o.gpkg")
    assert r.exit_code == 2 and "query is empty" in r.stderr


def test_fail_on_empty_exit_3_after_writing_empty_layer(oracle, tmp_path):
    empty = tmp_path / "empty.tif"
    write_truth_scene(empty, [], width=128, height=128, transform=T)
    out = tmp_path / "o.gpkg"
    r = run("-q", "segment", empty, "unicorns", "-o", out, "--fail-on-empty", "--json")
    assert r.exit_code == 3 and json.loads(r.stdout)["status"] == "empty" and out.exists()
    r = run("segment", empty, "unicorns", "-o", out, "--overwrite")
    assert r.exit_code == 0 and "found nothing" in r.stderr


def test_ctrl_c_leaves_nothing(monkeypatch, scene, tmp_path):
    class Interrupted(BandOracle):
        def predict(self, *a, **k):
            raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "load_segmenter", lambda *a, **k: Interrupted(tile_size=128))
    out = tmp_path / "o.gpkg"
    r = run("segment", scene, "buildings", "-o", out, "--probabilities", tmp_path / "p.tif")
    assert r.exit_code == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]


SIGTERM_RUN = """
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)  # as for a background job of a script (`qgis &`)
sys.path.insert(0, {tests!r})
from doubles import BandOracle
from geoseg.run import pipeline

class TerminatedWhilePredicting(BandOracle):
    def predict(self, *a, **k):
        os.kill(os.getpid(), signal.SIGTERM)  # a scheduler's stop, `timeout`, QGIS's Cancel
        time.sleep(5)  # as a real model would: the main thread handles the signal meanwhile
        return super().predict(*a, **k)

pipeline.load_segmenter = lambda *a, **k: TerminatedWhilePredicting(tile_size=128)
sys.argv = ["geoseg", *{args!r}]
from geoseg_cli.main import main
main()
"""


def test_sigterm_stops_like_ctrl_c_and_leaves_nothing(scene, tmp_path):
    """The console script handles SIGTERM as Ctrl-C even where SIGINT is ignored: exit 143, one
    line, no output and no temporary file."""
    args = ["segment", str(scene), "buildings", "-o", str(tmp_path / "o.gpkg"), "--probabilities", str(tmp_path / "p.tif")]
    code = SIGTERM_RUN.format(tests=str(Path(__file__).parent), args=args)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 143, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "geoseg: terminated (SIGTERM); no output was written"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]


def test_dry_run_prints_plan(oracle, scene):
    r = run("segment", scene, "q", "-o", "unused.gpkg", "--dry-run", "--json")
    assert r.exit_code == 0
    plan = json.loads(r.stdout)["scenes"][0]
    assert plan["tiles"] == 3 * 2 and plan["tile_size"] == 128  # 256 x 240 px, step 112
    memory = plan["memory_estimate_mb"]
    assert set(memory) == {"blend_window_per_query", "polygon_rows_per_query", "input_batch", "model_parameters"}
    assert all(isinstance(mb, (int, float)) and mb >= 0 for mb in memory.values()), memory
    # one tile-high band of the scene's width, float32 sum + weight: 2 x 4 B x 128 x 256 px
    assert memory["blend_window_per_query"] == round(2 * 4 * 128 * 256 / 2**20, 1)


def test_change_command_and_append(oracle, tmp_path):
    before, after = tmp_path / "b.tif", tmp_path / "a.tif"
    write_truth_scene(before, [], width=256, height=256, transform=T)
    write_truth_scene(after, [box(500020, 5000020, 500060, 5000080)], width=256, height=256, transform=T)
    out = tmp_path / "c.gpkg"
    r = run("-q", "change", before, after, "new buildings", "-o", out, "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["layers"][0]["change_type"] == "appeared"
    r = run("-q", "change", before, after, "demolished buildings", "-o", out, "--append")
    assert r.exit_code == 0, r.stderr
    import pyogrio

    assert [n for n, geom in pyogrio.list_layers(out) if geom] == ["new_buildings", "demolished_buildings"]


def test_change_takes_query_options_like_segment(oracle, tmp_path):
    before, after = tmp_path / "b.tif", tmp_path / "a.tif"
    write_truth_scene(before, [], width=256, height=256, transform=T)
    write_truth_scene(after, [box(500020, 5000020, 500060, 5000080)], width=256, height=256, transform=T)
    out = tmp_path / "c.gpkg"
    r = run("-q", "change", before, after, "--query", "new buildings", "--query", "demolished buildings",
            "-o", out, "--json")
    assert r.exit_code == 0, r.stderr
    layers = json.loads(r.stdout)["layers"]
    assert [(ly["query"], ly["change_type"]) for ly in layers] == [
        ("new buildings", "appeared"), ("demolished buildings", "disappeared")]
    r = run("change", before, after, "-o", tmp_path / "none.gpkg")
    assert r.exit_code == 2 and "give a QUERY after BEFORE and AFTER, or --query" in r.stderr


def test_min_area_units(oracle, scene, tmp_path):
    out = tmp_path / "o.gpkg"
    # the building is 40 x 60 m = 2400 m2
    r = run("-q", "segment", scene, "b", "-o", out, "--min-area", "3000m2", "--json")
    assert json.loads(r.stdout)["status"] == "empty"
    r = run("-q", "segment", scene, "b", "-o", out, "--min-area", "2000m2", "--json", "--overwrite")
    assert json.loads(r.stdout)["status"] == "ok"
    r = run("segment", scene, "b", "-o", out, "--min-area", "lots")
    assert r.exit_code == 2 and "--min-area" in r.stderr


def test_uint16_single_band_input(oracle, tmp_path):
    p = tmp_path / "grey.tif"
    write_rgb(p, (np.arange(128 * 128).reshape(1, 128, 128) % 2048).astype(np.uint16), T)
    oracle.info = type(oracle.info)("band-oracle", "test", 128, 16, bands=3)
    r = run("-q", "segment", p, "x", "-o", tmp_path / "o.gpkg")
    assert r.exit_code == 0, r.stderr


def test_version_and_models():
    assert run("--version").output.startswith("geoseg")
    r = run("models", "--json")
    assert r.exit_code == 0 and any(json.loads(line)["name"] == "compact" for line in r.stdout.splitlines())


def test_probability_cog_is_georeferenced(oracle, scene, tmp_path):
    probs = tmp_path / "p.tif"
    r = run("-q", "segment", scene, "b", "-o", tmp_path / "o.gpkg", "--probabilities", probs)
    assert r.exit_code == 0
    with rasterio.open(probs) as src:
        assert src.transform == T and src.crs.to_epsg() == 32633


def test_start_up_imports_no_torch():
    """`geoseg --help`, `--version` and shell completion run the CLI module on every keystroke;
    torch (and the pipeline) load only when a command that needs them runs."""
    import subprocess
    import sys

    code = ("import sys; from click.testing import CliRunner; from geoseg_cli.main import cli; "
            "r = CliRunner().invoke(cli, ['--threads', '1', 'segment', '--help']); "
            "assert r.exit_code == 0, r.output; import os; "
            "print(sorted(m for m in ('torch', 'geoseg.run.pipeline') if m in sys.modules), os.environ['OMP_NUM_THREADS'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["[]", "1"]


def test_batch_modes_match_the_library():
    from geoseg import batch
    from geoseg_cli.batch import JOB_MODES

    assert JOB_MODES == batch.MODES


@pytest.mark.parametrize("load", [0.0, 1.2, 9.0])
def test_default_threads_depend_on_the_machine_not_its_load(monkeypatch, load):
    import os

    from geoseg_cli import main

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # as in a fresh CLI process
    assert main.machine_cores() == 4
    main.set_model_threads(None)
    assert os.environ["OMP_NUM_THREADS"] == "4"


def test_vectorize_never_imports_torch_or_the_models(tmp_path):
    """`geoseg vectorize` (probability raster -> GeoPackage) runs without the model stack."""
    import subprocess

    probs = tmp_path / "p.tif"
    data = np.zeros((1, 64, 64), np.float32)
    data[0, 10:30, 20:40] = 0.9
    with rasterio.open(probs, "w", driver="GTiff", width=64, height=64, count=1, dtype="float32",
                       crs="EPSG:32633", transform=T) as dst:
        dst.write(data)
    out = tmp_path / "o.gpkg"
    code = ("import sys, json; from click.testing import CliRunner; from geoseg_cli.main import cli; "
            f"r = CliRunner().invoke(cli, ['-q', 'vectorize', {str(probs)!r}, '-o', {str(out)!r}, '--json']); "
            "assert r.exit_code == 0, r.output; "
            "print(json.dumps([json.loads(r.stdout)['layers'][0]['features'], "
            "sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'geoseg.models', 'geoseg.run.pipeline')))]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [1, []]


@pytest.mark.parametrize(("args", "code", "stdout"), [
    (["--version"], 0, "geoseg, version"),
    (["vectorize", "missing.tif", "-o", "x.gpkg"], 2, ""),
    (["no-such-command"], 2, ""),
])
def test_console_script_keeps_exit_codes_and_output(tmp_path, args, code, stdout):
    """The console script leaves with os._exit (skipping the interpreter's teardown): the exit
    code, stdout and the one error line must come through as from `cli` itself."""
    import subprocess

    result = subprocess.run([sys.executable, "-c", "from geoseg_cli.main import main; main()", *args],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == code
    assert result.stdout.startswith(stdout)
    if code:
        assert result.stderr.strip()
    if args[0] == "vectorize":
        assert result.stderr.strip().splitlines() == ["geoseg: error: missing.tif: no such file; check the path"]


@pytest.mark.parametrize(("env", "mmap_ok", "calls"), [
    ({}, 1, [(-3, 32 << 20), (-1, 1 << 30)]),
    ({}, 0, [(-3, 32 << 20)]),  # the trim threshold alone would turn off glibc's adaptive mmap threshold
    ({"MALLOC_ARENA_MAX": "2"}, 1, []),  # the user's own allocator settings win
])
def test_cli_keeps_freed_memory_only_as_a_pair_and_never_over_the_users_settings(monkeypatch, env, mmap_ok, calls):
    import ctypes
    import os

    from geoseg_cli import main

    made = []

    class Libc:
        def mallopt(self, param, value):
            made.append((param, value))
            return mmap_ok if param == -3 else 1

    for key in [k for k in os.environ if k.startswith("MALLOC_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(ctypes, "CDLL", lambda name: Libc())
    main.keep_freed_memory()
    assert made == calls
