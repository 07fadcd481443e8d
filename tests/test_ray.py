"""The Ray executor on a local 2-CPU cluster: same outputs as the local executor, replicas used,
failures isolated. Skipped when Ray is not installed (it is the optional extra geoseg[ray])."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install \"geoseg[ray]\"); Ray executor tests skipped")

from test_batch import (  # noqa: E402
    CRASHING_RUN,
    SCENE_OPTS,
    layer_rows,
    resume_jobs,
    run_cli,
    write_jobs,
)

from doubles import ConvOracle  # noqa: E402
from geoseg import batch  # noqa: E402
from geoseg.batch.executors import ray_executor  # noqa: E402
from geoseg.batch.executors.local import LocalExecutor  # noqa: E402
from geoseg.batch.executors.ray_executor import RayExecutor  # noqa: E402
from geoseg.errors import GeosegError  # noqa: E402

TESTS = Path(__file__).parent


def conv_oracle(spec, **kw):
    """Module-level, so Ray workers can import it (tests/ is on their PYTHONPATH)."""
    return ConvOracle(tile_size=128, overlap=32)


def broken_model(spec, **kw):
    class Broken(ConvOracle):
        def predict(self, images, queries):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    return Broken(tile_size=128, overlap=32)


def jobs():
    return [
        batch.Job(1, "j:1", "segment", ["a.tif"], ["roads", "rivers"], "seg.gpkg", dict(SCENE_OPTS)),
        batch.Job(2, "j:2", "segment", ["b.tif", "a.tif"], ["fields"], "multi.gpkg", dict(SCENE_OPTS)),
        batch.Job(3, "j:3", "change", ["b.tif", "a.tif"], ["new roads"], "change.gpkg", dict(SCENE_OPTS)),
        batch.Job(4, "j:4", "segment", ["a.tif"], ["roads"], "one.gpkg", {**SCENE_OPTS, "probabilities": "p.tif"}),
    ]


def run_in(d: Path, executor) -> list[batch.JobResult]:
    d.mkdir()
    for name in ("a.tif", "b.tif"):
        (d / name).symlink_to(d.parent / name)
    os.chdir(d)
    try:
        return list(batch.BatchRunner(executor).run(jobs()))
    finally:
        executor.close()


def test_ray_outputs_identical_to_local(cluster, scenes):
    ray_ex = RayExecutor(workers=2, replicas=2, load=conv_oracle)
    from_ray = run_in(scenes / "ray", ray_ex)
    from_local = run_in(scenes / "local", LocalExecutor(workers=1, load=conv_oracle))
    assert [r.status for r in from_ray] == [r.status for r in from_local] == ["ok"] * 4, \
        [r.error for r in from_ray]
    for name in ("seg.gpkg", "multi.gpkg", "change.gpkg", "one.gpkg"):
        assert layer_rows(scenes / "ray" / name) == layer_rows(scenes / "local" / name), name
    with rasterio.open(scenes / "ray" / "p.tif") as a, rasterio.open(scenes / "local" / "p.tif") as b:
        assert np.array_equal(a.read(), b.read())
    assert sorted(map(str, (r.features for r in from_ray))) == sorted(map(str, (r.features for r in from_local)))
    assert all(n > 0 for n in ray_ex.pool().chunks), ray_ex.pool().chunks  # both replicas did work


def test_replica_failure_is_a_job_error_and_the_batch_goes_on(cluster, scenes):
    ex = RayExecutor(workers=1, replicas=1, load=broken_model)
    try:
        runner = batch.BatchRunner(ex)
        got = list(runner.run(jobs()[:2]))
        assert len(ex.pool().actors) == 1
    finally:
        ex.close()
    assert [r.status for r in got] == ["error", "error"]
    assert "a model replica failed" in got[0].error and "illegal memory access" in got[0].error


def test_cli_executor_ray(cluster, scenes, monkeypatch):
    monkeypatch.setattr(ray_executor, "load_segmenter", conv_oracle)
    jobs_file = write_jobs(scenes / "jobs.jsonl", [
        {"inputs": ["b.tif"], "queries": ["roads"], "output": "b.gpkg", "options": SCENE_OPTS}])
    r = run_cli("-q", "batch", jobs_file, "--executor", "ray", "--replicas", "2", "--workers", "2")
    assert r.exit_code == 0, r.output
    (line,) = [json.loads(x) for x in r.stdout.splitlines()]
    assert line["status"] == "ok" and line["tiles_predicted"] == 9
    assert ray.is_initialized()  # the executor left the cluster it did not start running


def test_no_cluster_starts_for_jobs_that_are_all_refused(scenes, monkeypatch):
    started = []
    monkeypatch.setattr(ray_executor.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray_executor.ray, "init", lambda **kw: started.append(kw))
    (scenes / "done.gpkg").write_bytes(b"")  # exists: refused without --overwrite
    refused = [batch.Job(1, "j:1", "segment", ["b.tif"], ["roads"], "done.gpkg", dict(SCENE_OPTS)),
               batch.Job(2, "j:2", "segment", [], ["roads"], "x.gpkg", problem="j:2: inputs must be a non-empty list")]
    ex = RayExecutor(workers=2)  # the registry's loader: a job's key needs no cluster
    got = list(batch.BatchRunner(ex).run(refused))
    ex.close()
    assert [r.status for r in got] == ["error", "error"] and started == []


def test_the_cluster_is_joined_in_the_main_thread_before_the_first_job_that_runs(cluster, scenes, monkeypatch):
    import threading

    threads = []  # who calls connect first joins the cluster (Ray's signal handlers need the main thread)
    connect = RayExecutor.connect
    monkeypatch.setattr(RayExecutor, "connect", lambda self: (threads.append(threading.current_thread()), connect(self)))
    monkeypatch.setattr(ray_executor, "load_segmenter", conv_oracle)  # the registry's loader: keys need no cluster
    (scenes / "done.gpkg").write_bytes(b"")
    todo = [batch.Job(1, "j:1", "segment", ["b.tif"], ["roads"], "done.gpkg", dict(SCENE_OPTS)),
            batch.Job(2, "j:2", "segment", ["b.tif"], ["roads"], "new.gpkg", dict(SCENE_OPTS))]
    ex = RayExecutor(workers=2, replicas=1)
    try:
        got = list(batch.BatchRunner(ex).run(todo))
    finally:
        ex.close()
    assert [r.status for r in got] == ["error", "ok"], [r.error for r in got]
    assert threads[0] is threading.main_thread()


def test_batch_killed_locally_resumes_on_ray(cluster, scenes):
    write_jobs(scenes / "jobs.jsonl", resume_jobs(scenes)[:2])
    proc = subprocess.run([sys.executable, "-c", CRASHING_RUN.format(tests=str(TESTS), calls=8 + 3 + 4)],
                          cwd=scenes, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 137, proc.stderr
    ex = RayExecutor(workers=2, replicas=2, load=conv_oracle)
    try:
        got = list(batch.BatchRunner(ex, resume=True).run(batch.read_jobs(scenes / "jobs.jsonl")))
    finally:
        ex.close()
    assert [r.status for r in got] == ["skipped", "ok"], [r.error for r in got]
    assert (got[1].tiles_resumed, got[1].tiles_predicted) == (9 + 16, 14)
    control = scenes / "control"
    control.mkdir()
    for name in ("a.tif", "b.tif"):
        (control / name).symlink_to(scenes / name)
    write_jobs(control / "jobs.jsonl", resume_jobs(control)[:2])
    os.chdir(control)
    list(batch.BatchRunner(LocalExecutor(load=conv_oracle)).run(batch.read_jobs(control / "jobs.jsonl")))
    assert layer_rows(scenes / "two.gpkg") == layer_rows(control / "two.gpkg")


@pytest.mark.parametrize("resources,replicas,expect", [
    ({"CPU": 16, "GPU": 4}, None, (4, {"num_gpus": 1.0, "num_cpus": 1})),  # one host per GPU
    ({"CPU": 16, "GPU": 4}, 8, (8, {"num_gpus": 0.5, "num_cpus": 1})),
    ({"CPU": 8}, None, (1, {"num_cpus": 8})),  # no GPU: one host on the node's CPUs
    ({"CPU": 8}, 2, (2, {"num_cpus": 4})),
])
def test_placement_one_host_per_gpu(cluster, monkeypatch, resources, replicas, expect):
    monkeypatch.setattr(ray_executor.ray, "cluster_resources", lambda: resources)
    monkeypatch.setattr(ray_executor.ray, "nodes", lambda: [{"Alive": True, "Resources": resources}])
    assert RayExecutor(replicas=replicas, load=conv_oracle).placement() == expect


def test_more_cpu_replicas_than_cpus_is_refused(cluster):
    with pytest.raises(GeosegError, match="--replicas 3: the Ray cluster has 2 CPUs"):
        RayExecutor(replicas=3, load=conv_oracle).placement()


def test_joining_the_cluster_keeps_the_callers_sigterm_handler():
    """ray.init sets a SIGTERM handler that exits on the spot; geoseg's console script handles
    SIGTERM as Ctrl-C (a batch ends with its `interrupted` lines, exit 143), so connect puts the
    caller's handler back."""
    code = (
        "import signal\n"
        "from geoseg.batch.executors.ray_executor import RayExecutor\n"
        "def mine(signum, frame): pass\n"
        "signal.signal(signal.SIGTERM, mine)\n"
        "ex = RayExecutor(workers=1, init={'num_cpus': 1})\n"
        "ex.connect()\n"
        "print(signal.getsignal(signal.SIGTERM) is mine)\n"
        "ex.close()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.stdout.split()[-1:] == ["True"], proc.stderr
