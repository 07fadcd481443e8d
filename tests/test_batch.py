"""geoseg batch: job files, isolated failures, idempotent re-runs, resume after a hard kill, stdin,
workers, multi-scene layers in mixed CRSs."""

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner
from shapely.geometry import box

from conftest import write_truth_scene
from doubles import BandOracle, ConvOracle
from geoseg import batch
from geoseg.batch import resume
from geoseg.batch.executors import local
from geoseg.batch.executors.local import LocalExecutor
from geoseg.errors import InputError
from geoseg.io.raster import Grid
from geoseg.options import MinArea, RunOptions
from geoseg.run import pipeline, stitch, tiling
from geoseg_cli.main import cli

TESTS = Path(__file__).parent
T = Affine(0.5, 0, 500000, 0, -0.5, 5000120)
# 600 x 500 px with 128 px tiles and 32 px overlap: 5 rows x 6 columns = 30 tiles; batches of 4
# straddle tile rows, so a crash lands between a row checkpoint and the next
SCENE_OPTS = {"tile-size": 128, "overlap": 32, "batch-size": 4}


@pytest.fixture
def conv_model(monkeypatch):
    """The CLI's executor loads this deterministic double instead of a real model."""
    monkeypatch.setattr(local, "load_segmenter", lambda spec, **kw: ConvOracle(tile_size=128, overlap=32))


def write_jobs(path: Path, jobs: list[dict], extra_lines: tuple[str, ...] = ()) -> Path:
    path.write_text("\n".join([*(json.dumps(j) for j in jobs), *extra_lines]) + "\n")
    return path


def run_cli(*args, stdin: str | None = None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=stdin, catch_exceptions=False)


def lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def layers(path: Path) -> list[str]:
    return [name for name, geometry in pyogrio.list_layers(path) if geometry is not None]


def layer_rows(path: Path) -> list[tuple]:
    """Everything a layer says except the per-run id: geometry bytes and attributes."""
    out = []
    for name in layers(path):
        gdf = gpd.read_file(path, layer=name)
        for row in gdf.itertuples():
            out.append((name, row.geometry.wkb, round(row.score, 12), row.source, row.query))
    return out


# ---------------------------------------------------------------- parsing


def test_jsonl_csv_and_path_lines_parse_to_the_same_jobs(tmp_path):
    jsonl = tmp_path / "j.jsonl"
    write_jobs(jsonl, [{"inputs": ["a.tif"], "queries": ["roads", "rivers"], "output": "a.gpkg",
                        "options": {"threshold": 0.6}},
                       {"mode": "change", "inputs": ["x.tif", "y.tif"], "queries": "new roads", "output": "c.gpkg"}])
    csv_file = tmp_path / "j.csv"
    csv_file.write_text('mode,inputs,queries,output,threshold\n'
                        'segment,a.tif,roads|rivers,a.gpkg,0.6\n'
                        'change,x.tif|y.tif,new roads,c.gpkg,\n')
    a, b = list(batch.read_jobs(jsonl)), list(batch.read_jobs(csv_file))
    for x, y in zip(a, b, strict=True):
        assert (x.mode, x.inputs, x.queries, x.output, x.problem) == (y.mode, y.inputs, y.queries, y.output, None)
    assert a[0].run_options({}).threshold == b[0].run_options({}).threshold == 0.6
    # bare paths (find) and before<TAB>after pairs (paste) take the batch's defaults
    stream = io.StringIO("scenes/one.tif\n\n# a comment\nscenes/two.tif\n")
    jobs = list(batch.read_jobs(stream, batch.JobDefaults(queries=["roads"])))
    assert [(j.inputs, j.output, j.queries) for j in jobs] == [
        (["scenes/one.tif"], "scenes/one.gpkg", ["roads"]), (["scenes/two.tif"], "scenes/two.gpkg", ["roads"])]
    pairs = list(batch.read_jobs(io.StringIO("b.tif\ta.tif\n"), batch.JobDefaults(
        mode="change", queries=["new roads"], output_template="out/{stem}-{index}.gpkg")))
    assert pairs[0].inputs == ["b.tif", "a.tif"] and pairs[0].output == "out/b-1.gpkg" and not pairs[0].problem


@pytest.mark.parametrize("line,problem", [
    ('{"inputs": ["a.tif"], "queries": ["q"]}', "no output"),
    ('{"inputs": ["a.tif"], "output": "o.gpkg"}', "no queries"),
    ('{"mode": "change", "inputs": ["a.tif"], "queries": ["q"], "output": "o.gpkg"}', "two inputs"),
    ('{"inputs": "a.tif", "queries": ["q"], "output": "o.gpkg", "colour": 1}', "unknown key(s) colour"),
    ('{"inputs": [], "queries": ["q"], "output": "o.gpkg"}', "inputs must be"),
    ('[1, 2]', "must be a JSON object"),
    ('{"inputs": ["a.tif", ', "not a JSON object"),
])
def test_broken_job_lines_name_the_line(line, problem):
    (job,) = batch.read_jobs(io.StringIO(line + "\n"), name="jobs.jsonl")
    assert job.problem.startswith("jobs.jsonl:1: ") and problem in job.problem


def test_options_use_cli_names():
    values = {"tile-size": "256", "bands": "3,2,1", "min-area": "50m2", "fill-holes": "true",
              "dilate": 3, "mask_out": "m.tif", "nodata": "nan", "gsd": "0.5"}
    opts = RunOptions.from_mapping(values, "j:1")
    assert (opts.tile_size, opts.bands, opts.min_area, opts.fill_holes, opts.dilate_px) == (
        256, (3, 2, 1), MinArea(m2=50.0), True, 3)
    assert opts.mask_out == Path("m.tif") and np.isnan(opts.nodata) and opts.gsd == 0.5
    assert RunOptions.from_mapping({"min-area": 20}).min_area == MinArea(px=20)
    with pytest.raises(InputError, match="j:2: unknown option 'colour'"):
        RunOptions.from_mapping({"colour": "red"}, "j:2")
    with pytest.raises(InputError, match="tile-size='big'"):
        RunOptions.from_mapping({"tile-size": "big"}, "j:3")
    with pytest.raises(InputError, match="one of cosine"):
        RunOptions.from_mapping({"blend": "max"}, "j:4")


@pytest.mark.parametrize("options,message", [
    ({"colour": "red"}, "jobs.jsonl:1: unknown option 'colour'; options are: bands, "),
    ({"tile-size": 8}, "jobs.jsonl:1: option tile-size=8: must be at least 16"),
    ({"threshold": 1.5}, "jobs.jsonl:1: option threshold=1.5: must be at most 1"),
    ({"gsd": "-2"}, "jobs.jsonl:1: option gsd='-2': give auto, native or a ground resolution in metres > 0"),
    ({"min-area": "-5"}, "jobs.jsonl:1: option min-area='-5': an area cannot be negative"),
])
def test_bad_job_option_is_one_error_naming_line_and_key(options, message):
    line = json.dumps({"inputs": ["a.tif"], "queries": ["q"], "output": "o.gpkg", "options": options})
    (job,) = batch.read_jobs(io.StringIO(line + "\n"), name="jobs.jsonl")
    assert job.problem.startswith(message) and "\n" not in job.problem


def test_csv_option_column_out_of_range_names_the_line():
    text = "inputs,queries,output,threshold\na.tif,q,o.gpkg,0.5\nb.tif,q,o.gpkg,7\n"
    first, second = batch.read_jobs(io.StringIO(text), name="jobs.csv")
    assert first.problem is None and first.run_options({}).threshold == 0.5
    assert second.problem == "jobs.csv:3: option threshold='7': must be at most 1"


def test_set_defaults_are_checked_once_and_jobs_win():
    with pytest.raises(InputError, match="--set: option workers='0': must be at least 1"):
        batch.JobDefaults(options={"workers": "0"})
    defaults = batch.JobDefaults(options={"threshold": "0.7", "min_area": "10"})
    (job,) = batch.read_jobs(io.StringIO('{"inputs": ["a.tif"], "queries": ["q"], "output": "o.gpkg", '
                                         '"options": {"min-area": "5m2"}}\n'), defaults)
    opts = job.run_options(defaults.options)
    assert opts.threshold == 0.7 and opts.min_area == MinArea(m2=5.0) and opts.progress is False


# ---------------------------------------------------------------- the command


def test_batch_with_broken_jobs_isolates_failures(scenes, conv_model):
    (scenes / "corrupt.tif").write_bytes(b"II*\x00garbage")
    jobs = write_jobs(scenes / "jobs.jsonl", [
        {"inputs": ["a.tif"], "queries": ["roads", "rivers"], "output": "a.gpkg", "options": SCENE_OPTS},
        {"inputs": ["missing.tif"], "queries": ["roads"], "output": "m.gpkg"},
        {"inputs": ["corrupt.tif"], "queries": ["roads"], "output": "x.gpkg"},
        {"inputs": ["b.tif"], "queries": ["roads"], "output": "b.gpkg", "options": {"tile-size": 128, "colour": 1}},
        {"inputs": ["b.tif"], "queries": ["roads"], "output": "b.gpkg", "options": SCENE_OPTS},
    ], extra_lines=("this is not json",))
    r = run_cli("batch", jobs, "--workers", "2")
    assert r.exit_code == 1
    got = {d["job"]: d for d in lines(r.stdout)}
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    assert [got[i]["status"] for i in range(1, 7)] == ["ok", "error", "error", "error", "ok", "error"]
    assert "missing.tif: no such file" in got[2]["error"] and got[2]["line"] == "jobs.jsonl:2"
    assert "corrupt" in got[3]["error"] and "unknown option 'colour'" in got[4]["error"]
    assert "jobs.jsonl:6: not a JSON object" in got[6]["error"]
    assert set(got[1]["features"]) == {"roads", "rivers"} and got[1]["features"]["roads"] > 0
    assert got[1]["tiles"] == got[1]["tiles_predicted"] == 30 and got[1]["seconds"]["total"] > 0
    assert layers(scenes / "a.gpkg") == ["roads", "rivers"]
    assert (scenes / "b.gpkg").exists() and not (scenes / "m.gpkg").exists()
    assert "4 error" in r.stderr and "2 ok" in r.stderr
    assert not list(scenes.glob("*.geoseg-work"))  # finished jobs leave no work files


def test_rerun_does_nothing_and_says_so(scenes, conv_model):
    jobs = write_jobs(scenes / "jobs.jsonl", [
        {"inputs": ["a.tif"], "queries": ["roads"], "output": "a.gpkg", "options": SCENE_OPTS},
        {"inputs": ["b.tif"], "queries": ["roads"], "output": "b.gpkg", "options": SCENE_OPTS},
    ])
    first = run_cli("batch", jobs)
    assert first.exit_code == 0, first.output
    stamp = (scenes / "a.gpkg").stat().st_mtime_ns
    again = run_cli("batch", jobs)
    assert again.exit_code == 0
    assert [d["status"] for d in lines(again.stdout)] == ["skipped", "skipped"]
    assert "already done" in lines(again.stdout)[0]["message"]
    assert lines(again.stdout)[0]["features"] == lines(first.stdout)[0]["features"]
    assert "nothing to do: all 2 jobs were already done" in again.stderr
    assert (scenes / "a.gpkg").stat().st_mtime_ns == stamp
    # other parameters are another job; --force redoes a finished one
    write_jobs(jobs, [{"inputs": ["a.tif"], "queries": ["roads"], "output": "a.gpkg",
                       "options": {**SCENE_OPTS, "threshold": 0.7, "overwrite": True}}])
    assert lines(run_cli("batch", jobs).stdout)[0]["status"] in ("ok", "empty")
    forced = run_cli("batch", jobs, "--force")
    assert lines(forced.stdout)[0]["status"] in ("ok", "empty") and lines(forced.stdout)[0]["tiles_predicted"] == 30
    # a deleted output is not done any more
    (scenes / "a.gpkg").unlink()
    assert lines(run_cli("batch", jobs).stdout)[0]["status"] in ("ok", "empty")


def test_stdin_jsonl_and_bare_paths(scenes, conv_model):
    job = {"inputs": ["b.tif"], "queries": ["roads"], "output": "from-stdin.gpkg", "options": SCENE_OPTS}
    r = run_cli("-q", "batch", "-", stdin=json.dumps(job) + "\n")
    assert r.exit_code == 0 and lines(r.stdout)[0]["status"] == "ok" and r.stderr == ""
    (scenes / "out").mkdir()
    found = "a.tif\nb.tif\n"  # what `find . -name '*.tif'` prints
    r = run_cli("batch", "-", "--query", "roads", "--query", "fields", "--output-template", "out/{stem}.gpkg",
                "--set", "tile-size=128", "--set", "overlap=32", stdin=found)
    assert r.exit_code == 0, r.output
    assert sorted(d["output"] for d in lines(r.stdout)) == ["out/a.gpkg", "out/b.gpkg"]
    assert layers(scenes / "out" / "a.gpkg") == ["roads", "fields"]


def test_output_template_directories_are_made(scenes, conv_model):
    """The README's `find ... | geoseg batch - --output-template 'out/{stem}.gpkg'` with no out/ yet."""
    r = run_cli("-q", "batch", "-", "--query", "roads", "--output-template", "out/{index}/{stem}.gpkg",
                "--set", "tile-size=128", "--set", "overlap=32", stdin="b.tif\n")
    assert r.exit_code == 0, r.output
    assert [d["status"] for d in lines(r.stdout)] == ["ok"]
    assert layers(scenes / "out" / "1" / "b.gpkg") == ["roads"]
    # an output the job names itself is the user's path: its directory is not made
    job = {"inputs": ["b.tif"], "queries": ["roads"], "output": "missing/b.gpkg", "options": SCENE_OPTS}
    r = run_cli("-q", "batch", "-", stdin=json.dumps(job) + "\n")
    assert r.exit_code == 1 and "does not exist; create it first" in lines(r.stdout)[0]["error"]
    assert not (scenes / "missing").exists()


def test_misspelt_set_and_missing_jobs_file_are_usage_errors(scenes, conv_model):
    r = run_cli("batch", "nope.jsonl")
    assert r.exit_code == 2 and "no such jobs file" in r.stderr
    r = run_cli("batch", "-", "--set", "treshold=0.5", stdin="")
    assert r.exit_code == 2 and "unknown option 'treshold'" in r.stderr


def test_on_error_fail_starts_no_more_jobs(scenes, conv_model):
    jobs = write_jobs(scenes / "jobs.jsonl", [
        {"inputs": ["missing.tif"], "queries": ["roads"], "output": "m.gpkg"},
        {"inputs": ["b.tif"], "queries": ["roads"], "output": "b.gpkg", "options": SCENE_OPTS},
    ])
    r = run_cli("batch", jobs, "--on-error", "fail")
    assert r.exit_code == 1 and [d["status"] for d in lines(r.stdout)] == ["error"]
    assert "1 not started" in r.stderr and not (scenes / "b.gpkg").exists()


def test_workers_give_the_same_outputs_and_keep_append_order(scenes):
    def jobs():
        return [
            batch.Job(1, "j:1", "segment", ["a.tif"], ["roads"], "w.gpkg", dict(SCENE_OPTS)),
            batch.Job(2, "j:2", "segment", ["b.tif"], ["rivers"], "w.gpkg", {**SCENE_OPTS, "append": True}),
            batch.Job(3, "j:3", "segment", ["b.tif", "a.tif"], ["fields"], "x.gpkg", dict(SCENE_OPTS)),
        ]

    results = {}
    for workers in (1, 3):
        d = scenes / f"w{workers}"
        d.mkdir()
        os.chdir(d)
        for name in ("a.tif", "b.tif"):
            (d / name).symlink_to(scenes / name)
        runner = batch.BatchRunner(LocalExecutor(workers=workers, load=lambda spec, **kw: ConvOracle(128, 32)))
        got = list(runner.run(jobs()))
        assert {r.status for r in got} == {"ok"}, [r.error for r in got]
        results[workers] = [layer_rows(d / "w.gpkg"), layer_rows(d / "x.gpkg")]
        assert layers(d / "w.gpkg") == ["roads", "rivers"]
    assert results[1] == results[3]


# ---------------------------------------------------------------- resume

CRASHING_RUN = """
import hashlib, os, sys
sys.path.insert(0, {tests!r})
from doubles import ConvOracle
from geoseg import batch
from geoseg.batch.executors.local import LocalExecutor
from geoseg.options import MinArea, RunOptions

class CrashAfter(ConvOracle):
    calls = 0
    def predict(self, images, queries):
        CrashAfter.calls += 1
        if CrashAfter.calls > {calls}:
            os._exit(137)  # a hard kill: no cleanup, no finally, no atexit
        out = super().predict(images, queries)
        with open("predicted.txt", "a") as f:
            f.writelines(hashlib.sha1(t.numpy().tobytes()).hexdigest() + "\\n" for t in images)
        return out

model = CrashAfter(tile_size=128, overlap=32)
runner = batch.BatchRunner(LocalExecutor(load=lambda spec, **kw: model))
for r in runner.run(batch.read_jobs("jobs.jsonl")):
    print(r.status, flush=True)
"""


class Recording(ConvOracle):
    def __init__(self, log: Path):
        super().__init__(tile_size=128, overlap=32)
        self.log = log

    def predict(self, images, queries):
        with open(self.log, "a") as f:
            f.writelines(hashlib.sha1(t.numpy().tobytes()).hexdigest() + "\n" for t in images)
        return super().predict(images, queries)


def resume_jobs(d: Path) -> list[dict]:
    return [
        {"inputs": ["a.tif"], "queries": ["roads"], "output": "one.gpkg", "options": SCENE_OPTS},
        # two scenes into one layer; the kill lands in the second scene's third tile row
        {"inputs": ["b.tif", "a.tif"], "queries": ["roads", "rivers"], "output": "two.gpkg", "options": SCENE_OPTS},
        {"mode": "change", "inputs": ["b.tif", "a.tif"], "queries": ["new roads"], "output": "three.gpkg",
         "options": {**SCENE_OPTS, "probabilities": "three-p.tif"}},
    ]


def run_batch(d: Path, model, *, resume_: bool = False) -> list[batch.JobResult]:
    os.chdir(d)
    runner = batch.BatchRunner(LocalExecutor(load=lambda spec, **kw: model), resume=resume_)
    return list(runner.run(batch.read_jobs(d / "jobs.jsonl")))


def test_killed_batch_resumes_to_the_same_outputs_without_redoing_tiles(scenes):
    killed, control = scenes / "killed", scenes / "control"
    for d in (killed, control):
        d.mkdir()
        for name in ("a.tif", "b.tif"):
            (d / name).symlink_to(scenes / name)
        write_jobs(d / "jobs.jsonl", resume_jobs(d))
    # one.gpkg: 8 calls; two.gpkg: b.tif 3 calls, then a.tif: the kill comes at its 5th call
    proc = subprocess.run([sys.executable, "-c", CRASHING_RUN.format(tests=str(TESTS), calls=8 + 3 + 4)],
                          cwd=killed, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 137, proc.stderr
    assert proc.stdout.split() == ["ok"]  # the first job finished before the kill
    assert (killed / "one.gpkg").exists() and not (killed / "two.gpkg").exists()
    assert (killed / "two.gpkg.geoseg-work").is_dir()
    before_kill = (killed / "predicted.txt").read_text().split()

    results = run_batch(killed, Recording(killed / "resumed.txt"), resume_=True)
    assert [r.status for r in results] == ["skipped", "ok", "ok"], [r.error for r in results]
    # b.tif (9 tiles) was finished, a.tif had 16 of 30: 12 in the checkpoint, 4 recorded after it
    assert results[1].tiles_resumed == 9 + 16 and results[1].tiles_predicted == 30 - 16
    after_kill = (killed / "resumed.txt").read_text().split()

    control_results = run_batch(control, Recording(control / "all.txt"))
    everything = (control / "all.txt").read_text().split()
    # every tile went through the model exactly once across the kill
    assert sorted(before_kill + after_kill) == sorted(everything)
    for name in ("one.gpkg", "two.gpkg", "three.gpkg"):
        assert layer_rows(killed / name) == layer_rows(control / name), name
    with rasterio.open(killed / "three-p.tif") as a, rasterio.open(control / "three-p.tif") as b:
        assert np.array_equal(a.read(), b.read())
    assert [r.features for r in results[1:]] == [r.features for r in control_results[1:]]
    assert not (killed / "two.gpkg.geoseg-work").exists()


def test_without_resume_an_interrupted_job_starts_over(scenes):
    write_jobs(scenes / "jobs.jsonl", [resume_jobs(scenes)[0]])
    proc = subprocess.run([sys.executable, "-c", CRASHING_RUN.format(tests=str(TESTS), calls=5)],
                          cwd=scenes, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 137
    (result,) = run_batch(scenes, ConvOracle(tile_size=128, overlap=32))
    assert result.status == "ok" and result.tiles_resumed == 0 and result.tiles_predicted == 30


SIGNALLED_RUN = """
import os, signal, sys, time
# as in a terminal: a shell that starts a background job without job control makes it ignore SIGINT
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.path.insert(0, {tests!r})
from doubles import ConvOracle
from geoseg.batch.executors import local

class SignalAfter(ConvOracle):
    calls = 0
    def predict(self, images, queries):
        SignalAfter.calls += 1
        if SignalAfter.calls == {at_call}:
            os.kill(os.getpid(), signal.{signal})  # Ctrl-C (or a scheduler's stop) mid-batch
            time.sleep(0.5)  # as a real model would: the main thread handles the signal meanwhile
        return super().predict(images, queries)

local.load_segmenter = lambda spec, **kw: SignalAfter(tile_size=128, overlap=32)
sys.argv = ["geoseg", "batch", "jobs.jsonl", *{args!r}]
from geoseg_cli.main import main
main()
"""


@pytest.mark.parametrize(("signal", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_ctrl_c_or_sigterm_stops_at_a_tile_boundary_and_resume_finishes(scenes, signal, code):
    write_jobs(scenes / "jobs.jsonl", [resume_jobs(scenes)[0]])
    def geoseg_batch(at_call: int, *args: str) -> subprocess.CompletedProcess:
        run = SIGNALLED_RUN.format(tests=str(TESTS), at_call=at_call, signal=signal, args=list(args))
        return subprocess.run([sys.executable, "-c", run], cwd=scenes, capture_output=True, text=True, timeout=300)

    proc = geoseg_batch(4)
    assert proc.returncode == code, proc.stderr
    assert "--resume" in proc.stderr and json.loads(proc.stdout)["status"] == "interrupted"
    proc = geoseg_batch(0, "--resume")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == "ok" and (result["tiles_resumed"], result["tiles_predicted"]) == (16, 14)


def test_blender_snapshot_and_restore_give_the_same_raster(tmp_path):
    grid = Grid(300, 260, T, None)
    plan = tiling.plan_tiles(260, 300, 64, 16)
    rng = np.random.default_rng(0)
    probs = {t.index: rng.random((2, t.height, t.width)).astype(np.float32) for t in plan.tiles}
    valid = np.ones((64, 64), bool)

    def blend(paths, tiles, **kw):
        b = stitch.RollingBlender(grid, paths, 64, 16, **kw)
        for t in tiles:
            b.add(t, probs[t.index], valid)
        return b

    whole = [tmp_path / "w0.tif", tmp_path / "w1.tif"]
    blend(whole, plan.tiles).close()
    parts = [tmp_path / "p0.tif", tmp_path / "p1.tif"]
    states = []
    cut = next(t.index for t in plan.tiles if t.row == 2) + 1  # inside the third tile row
    first = blend(parts, plan.tiles[:cut], on_rows_flushed=lambda b, tile: states.append((tile.index, b.snapshot())))
    first.close()  # writes partial rows below the checkpoint: the resumed blender rewrites them
    next_tile, state = states[-1]
    assert state.y0 == plan.tiles[next_tile].y and state.acc.shape[1] <= 16
    second = blend(parts, plan.tiles[next_tile:], state=state)
    second.close()
    for w, p in zip(whole, parts, strict=True):
        with rasterio.open(w) as a, rasterio.open(p) as b:
            assert np.array_equal(a.read(), b.read())


def test_job_key_follows_inputs_and_parameters(scenes):
    key = lambda **kw: resume.job_key(**{"mode": "segment", "inputs": ["a.tif"], "queries": ["q"],  # noqa: E731
                                         "output": "o.gpkg", "parameters": {"threshold": 0.5, "workers": 2},
                                         "model": {"spec": "m"}, **kw})
    k = key()
    assert k == key(parameters={"threshold": 0.5, "workers": 8})  # workers do not change the output
    assert k != key(parameters={"threshold": 0.6, "workers": 2})
    assert k != key(queries=["other"]) and k != key(model={"spec": "other"})
    os.utime(scenes / "a.tif", ns=(1, 1))
    assert k != key()


# ---------------------------------------------------------------- several scenes, one layer


def test_several_scenes_mixed_crs_into_one_layer_with_dst_crs(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "load_segmenter", lambda *a, **k: BandOracle(tile_size=256, overlap=32))
    utm = [box(500040, 4999990, 500080, 5000030)]
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    write_truth_scene(a, utm, width=400, height=300, transform=T)
    dy, dx = 1 / 111320, 1 / (111320 * np.cos(np.radians(45)))
    geo = [box(15.0 + 40 * dx, 45.0 - 120 * dy, 15.0 + 100 * dx, 45.0 - 60 * dy)]
    write_truth_scene(b, geo, width=200, height=200, transform=Affine(dx, 0, 15.0, 0, -dy, 45.0), crs="EPSG:4326")
    out = tmp_path / "merc.gpkg"
    r = run_cli("-q", "segment", a, b, "things", "-o", out, "--dst-crs", "EPSG:3857", "--json")
    assert r.exit_code == 0, r.output
    got = gpd.read_file(out, layer="things")
    assert got.crs.to_epsg() == 3857 and sorted(got["source"]) == sorted([str(a), str(b)])
    from_b = got[got.source == str(b)].to_crs(4326).geometry.iloc[0]
    assert from_b.intersection(geo[0]).area / from_b.union(geo[0]).area > 0.97
    from_a = got[got.source == str(a)].to_crs(32633).geometry.iloc[0]
    assert from_a.intersection(utm[0]).area / from_a.union(utm[0]).area > 0.97
    assert json.loads(r.stdout)["tiles"] == 4 + 1  # 2 x 2 tiles of 256 px, and one


def test_local_batch_never_imports_ray(scenes):
    code = ("import sys; sys.path.insert(0, " + repr(str(TESTS)) + "); from doubles import ConvOracle; from geoseg import batch; "
            "from geoseg.batch.executors import make_executor; from geoseg.batch.executors import local; "
            "local.load_segmenter = lambda spec, **kw: ConvOracle(tile_size=128, overlap=32); "
            "ex = make_executor('local'); r = batch.BatchRunner(ex); "
            "job = batch.Job(1, 'j:1', 'segment', ['b.tif'], ['q'], 'o.gpkg', {'tile-size': 128}); "
            "print(r.run_job(job).status, 'ray' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=scenes, capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["ok", "False"], proc.stderr


def test_real_rasters_in_three_crss_one_batch(shared_data, tmp_path, monkeypatch, conv_model):
    """Real files: Landsat RGB (EPSG:32618) and a Landsat composite (EPSG:4326) into one layer; a
    NAIP pair whose grids are offset by about a pixel (EPSG:26914) as a change job."""
    monkeypatch.chdir(tmp_path)
    rgb = shared_data / "georef-rasterio" / "RGB.byte.tif"
    pucallpa = shared_data / "georef-landsat-pucallpa" / "2020.tif"
    naip = sorted((shared_data / "georef-naip-pair").glob("*.tif"))
    jobs = write_jobs(tmp_path / "jobs.jsonl", [
        {"inputs": [str(rgb), str(pucallpa)], "queries": ["bright areas"], "output": "two-crs.gpkg",
         "options": {"tile-size": 128, "overlap": 32}},
        {"mode": "change", "inputs": [str(p) for p in naip], "queries": ["new bright areas"], "output": "naip.gpkg",
         "options": {"tile-size": 128, "overlap": 32, "bands": "1,2,3"}},
    ])
    r = run_cli("-q", "batch", jobs, "--workers", "2")
    assert r.exit_code == 0, r.output
    assert {d["status"] for d in lines(r.stdout)} <= {"ok", "empty"}
    got = gpd.read_file(tmp_path / "two-crs.gpkg", layer="bright_areas")
    assert got.crs.to_epsg() == 32618 and set(got["source"]) == {str(rgb), str(pucallpa)}
    for path in (rgb, pucallpa):
        with rasterio.open(path) as src:
            left, bottom, right, top = src.bounds
            own = got[got.source == str(path)].to_crs(src.crs)
        x0, y0, x1, y1 = own.total_bounds
        tol = 1e-6 if src.crs.is_geographic else 1e-3
        assert x0 >= left - tol and x1 <= right + tol and y0 >= bottom - tol and y1 <= top + tol
