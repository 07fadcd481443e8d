"""Remote and catalogued inputs: COGs over HTTP range reads, s3:// on a local S3 server, STAC
Items; failures as one line with the documented exit code. Every server is started here on
127.0.0.1 (tests/remote_server.py, moto's server mode), never the internet."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyogrio
import pytest
import rasterio
import rasterio.shutil
from click.testing import CliRunner
from remote_server import FileServer

from doubles import ConvOracle
from geoseg import batch, provenance
from geoseg.batch.executors import local
from geoseg.batch.executors.local import LocalExecutor
from geoseg.io import formats, raster, remote
from geoseg.run import pipeline
from geoseg_cli.main import cli

SAMPLES = Path(__file__).resolve().parents[1] / "sample_tiles"
TESTS = Path(__file__).resolve().parent


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def make_cog(src: Path, dst: Path) -> Path:
    """A sample tile as a tiled COG with overviews (what a remote scene should be)."""
    rasterio.shutil.copy(src, dst, driver="COG", blocksize=256, compress="deflate", overview_resampling="average")
    with rasterio.open(dst) as ds:
        assert ds.overviews(1) and ds.block_shapes[0] == (256, 256)
    return dst


@pytest.fixture
def www(tmp_path) -> Path:
    d = tmp_path / "www"
    d.mkdir()
    make_cog(SAMPLES / "town_utm_0p5m.tif", d / "town.tif")
    return d


@pytest.fixture
def model(monkeypatch):
    m = ConvOracle(tile_size=256, overlap=32)
    monkeypatch.setattr(pipeline, "load_segmenter", lambda *a, **k: m)
    return m


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    # the user's own GDAL settings win over geoseg's defaults: fail fast in tests
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "1")
    monkeypatch.setenv("GDAL_HTTP_RETRY_DELAY", "0.1")


def record_of(gpkg: Path) -> dict:
    return formats.read_provenance(gpkg, formats.list_layers(gpkg)[0])


def test_segment_reads_a_remote_cog_by_range_requests(www, model, tmp_path):
    out = tmp_path / "town.gpkg"
    size = (www / "town.tif").stat().st_size
    with FileServer(www) as server:
        url = f"{server.url}/town.tif?token=secret&v=2"
        # read at 2 m: the 0.5 m COG is sampled from its overviews and blocks, never fetched whole
        r = run("-q", "segment", url, "buildings", "-o", out, "--json", "--gsd", "2")
        assert r.exit_code == 0, r.output
        ranges = server.range_requests("town.tif")
        sent = server.sent["town.tif"]
        whole = [m for m, p, h in server.requests if m == "GET" and not h]
    assert ranges and all(h.startswith("bytes=") for h in ranges) and not whole
    assert 0 < sent < size, (sent, size)
    assert json.loads(r.stdout)["status"] in ("ok", "empty")
    record = record_of(out)
    [(key, entry)] = record["inputs"].items()
    assert "secret" not in json.dumps(record) and "secret" not in r.output
    assert entry["url"] == key == f"{server.url}/town.tif?v=2"
    assert entry["bytes"] == size and entry["etag"] and entry["last_modified"] and "sha256" not in entry
    sources = set(pyogrio.read_dataframe(out, layer="buildings")["source"]) or {key}
    assert sources == {key}


def test_dry_run_reads_the_header_and_an_overview_only(www, model):
    size = (www / "town.tif").stat().st_size
    with FileServer(www) as server:
        r = run("-q", "segment", f"{server.url}/town.tif", "roads", "-o", "x.gpkg", "--dry-run", "--json")
        assert r.exit_code == 0, r.output
        sent = server.sent["town.tif"]
    assert json.loads(r.stdout)["scenes"][0]["width"] == 1024
    assert 0 < sent < size


def test_vectorize_a_remote_raster_and_hash_it_when_asked(www, tmp_path):
    probs = www / "probs.tif"
    with rasterio.open(www / "town.tif") as src:
        profile = src.profile | {"count": 1, "driver": "GTiff", "tiled": True}
        band = (src.read(1) > 128).astype("uint8") * 254
    with rasterio.open(probs, "w", **profile) as dst:
        dst.write(band, 1)
    out = tmp_path / "v.gpkg"
    with FileServer(www) as server:
        r = run("-q", "vectorize", f"{server.url}/probs.tif", "-o", out, "--hash-inputs", "--json")
        assert r.exit_code == 0, r.output
    [entry] = record_of(out)["inputs"].values()
    assert entry["sha256"] == provenance.sha256_file(probs) and entry["bytes"] == probs.stat().st_size


@pytest.mark.parametrize("name,expect", [
    ("missing.tif", "not found on the server (HTTP 404)"),
    ("secret.tif", "access denied (HTTP 403)"),
    ("notes.tif", "not a raster GDAL can read"),
])
def test_bad_remote_input_is_one_line_exit_2_nothing_written(www, model, tmp_path, name, expect):
    (www / "notes.tif").write_text("not a tiff at all\n" * 100)
    shutil.copy(www / "town.tif", www / "secret.tif")
    out = tmp_path / "o.gpkg"
    with FileServer(www, forbidden=("secret.tif",)) as server:
        r = run("segment", f"{server.url}/{name}?sig=abc", "buildings", "-o", out)
    assert r.exit_code == 2, r.output
    assert r.stderr.count("\n") == 1 and expect in r.stderr and f"{server.url}/{name}" in r.stderr
    assert "sig=abc" not in r.stderr and not out.exists()


def test_server_without_range_support_is_refused_clearly(www, model, tmp_path):
    with FileServer(www, ranges=False) as server:
        r = run("segment", f"{server.url}/town.tif", "buildings", "-o", tmp_path / "o.gpkg")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1
    assert "does not answer HTTP range requests" in r.stderr and "curl -O" in r.stderr
    assert not (tmp_path / "o.gpkg").exists()


def test_unreachable_server_is_bad_input(model, tmp_path):
    with FileServer(tmp_path) as server:
        url = f"{server.url}/town.tif"
    r = run("segment", url, "buildings", "-o", tmp_path / "o.gpkg")  # the server is gone
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "check the URL and the network" in r.stderr


def test_connection_lost_mid_run_is_a_runtime_error(www, monkeypatch, tmp_path):
    server = FileServer(www)

    def load(*args, **kwargs):  # the inputs were validated (header, first block); now the network goes
        server.broken = True
        return ConvOracle(tile_size=256, overlap=32)

    monkeypatch.setattr(pipeline, "load_segmenter", load)
    out = tmp_path / "o.gpkg"
    with server:
        r = run("segment", f"{server.url}/town.tif", "buildings", "-o", out, "--batch-size", "1", "--workers", "1")
    assert r.exit_code == 1, r.output
    assert r.stderr.count("\n") == 1 and "failed mid-run" in r.stderr and str(server.url) in r.stderr
    assert not out.exists() and not list(tmp_path.glob(".geoseg-*"))


def test_redact_removes_credentials_and_signatures():
    assert remote.redact("https://u:p@h.org/a.tif?X-Amz-Signature=s&X-Amz-Date=d&v=1") == "https://h.org/a.tif?v=1"
    assert remote.redact("https://acct.blob.core.windows.net/c/a.tif?sv=1&se=2&sig=3") == \
        "https://acct.blob.core.windows.net/c/a.tif"
    assert remote.redact("/vsicurl/https://h.org/a.tif?token=t") == "/vsicurl/https://h.org/a.tif"
    assert remote.gdal_path("s3://b/k.tif") == "/vsis3/b/k.tif"
    assert remote.gdal_path("https://h/a.tif") == "/vsicurl/https://h/a.tif"
    assert remote.gdal_path("/vsigs/b/k.tif") == "/vsigs/b/k.tif" and not remote.is_remote("a/b.tif")


# ---------------------------------------------------------------- s3:// on a local S3 server


@pytest.fixture
def s3(monkeypatch, www):
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
           "AWS_S3_ENDPOINT": f"{host}:{port}", "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    client = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket="scenes")
    client.upload_file(str(www / "town.tif"), "scenes", "city/town.tif")
    yield client
    server.stop()


def test_segment_an_s3_object(s3, www, model, tmp_path):
    out = tmp_path / "s3.gpkg"
    r = run("-q", "segment", "s3://scenes/city/town.tif", "buildings", "-o", out, "--json")
    assert r.exit_code == 0, r.output
    entry = record_of(out)["inputs"]["s3://scenes/city/town.tif"]
    assert entry["bytes"] == (www / "town.tif").stat().st_size and entry["etag"]
    r = run("segment", "s3://scenes/city/nothere.tif", "buildings", "-o", tmp_path / "no.gpkg")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "s3://scenes/city/nothere.tif" in r.stderr


# ---------------------------------------------------------------- STAC Items


def stac_item(assets: dict, item_id: str = "town-2024", self_href: str | None = None) -> dict:
    links = [{"rel": "self", "href": self_href, "type": "application/geo+json"}] if self_href else []
    return {
        "type": "Feature", "stac_version": "1.0.0", "id": item_id, "properties": {"datetime": "2024-05-01T10:00:00Z"},
        "geometry": None, "links": links, "assets": assets,
    }


def test_stac_item_url_reads_its_visual_asset(www, model, tmp_path):
    with FileServer(www) as server:
        item = stac_item({"thumbnail": {"href": "thumb.png", "roles": ["thumbnail"]},
                          "visual": {"href": "town.tif", "type": "image/tiff; application=geotiff", "roles": ["visual"]}},
                         self_href=f"{server.url}/item.json")
        (www / "item.json").write_text(json.dumps(item))
        out = tmp_path / "stac.gpkg"
        r = run("-q", "segment", f"{server.url}/item.json", "buildings", "-o", out, "--json")
        assert r.exit_code == 0, r.output
        assert server.range_requests("town.tif")
    [(key, entry)] = record_of(out)["inputs"].items()
    assert entry["stac_item"] == "town-2024" and entry["stac_self"] == f"{server.url}/item.json"
    assert entry["stac_assets"] == {"visual": f"{server.url}/town.tif"} and entry["bytes"] > 0
    assert key == f"{server.url}/item.json#visual"


def test_local_stac_item_stacks_red_green_blue_assets(tmp_path, model):
    with rasterio.open(SAMPLES / "town_utm_0p5m.tif") as src:
        profile, data = src.profile | {"count": 1}, src.read()
    for i in range(3):
        with rasterio.open(tmp_path / f"B{i}.tif", "w", **profile) as dst:
            dst.write(data[i], 1)
    assets = {f"B{i}": {"href": f"./B{i}.tif", "type": "image/tiff", "roles": ["data"],
                        "eo:bands": [{"name": f"B{i}", "common_name": c}]}
              for i, c in enumerate(("red", "green", "blue"))}
    (tmp_path / "item.json").write_text(json.dumps(stac_item(assets, "bands")))
    out = tmp_path / "rgb.gpkg"
    r = run("-q", "segment", tmp_path / "item.json", "roads", "-o", out)
    assert r.exit_code == 0, r.output
    [entry] = record_of(out)["inputs"].values()
    assert entry["stac_item"] == "bands" and list(entry["stac_assets"]) == ["B0", "B1", "B2"]
    assert [a["sha256"] for a in entry["assets"]] == [provenance.sha256_file(tmp_path / f"B{i}.tif") for i in range(3)]
    r = run("segment", tmp_path / "item.json", "roads", "-o", tmp_path / "x.gpkg", "--asset", "B0,B1,B9")
    assert r.exit_code == 2 and "has no asset 'B9'" in r.stderr and "B0, B1, B2" in r.stderr
    r = run("-q", "segment", tmp_path / "item.json", "roads", "-o", tmp_path / "one.gpkg", "--asset", "B1")
    assert r.exit_code == 0, r.output
    assert list(record_of(tmp_path / "one.gpkg")["inputs"].values())[0]["stac_assets"] == {"B1": str(tmp_path / "B1.tif")}


# ---------------------------------------------------------------- batch and resume

CRASHING_BATCH = """
import os, sys
sys.path.insert(0, {tests!r})
from doubles import ConvOracle
from geoseg import batch
from geoseg.batch.executors.local import LocalExecutor

class CrashAfter(ConvOracle):
    calls = 0
    def predict(self, images, queries):
        CrashAfter.calls += 1
        if CrashAfter.calls > {calls}:
            os._exit(137)  # a hard kill
        return super().predict(images, queries)

runner = batch.BatchRunner(LocalExecutor(load=lambda spec, **kw: CrashAfter(tile_size=256, overlap=32)))
for r in runner.run(batch.read_jobs("jobs.jsonl")):
    print(r.status, r.error, flush=True)
"""


def test_batch_resumes_and_skips_remote_jobs(www, monkeypatch, tmp_path):
    monkeypatch.setattr(local, "load_segmenter", lambda spec, **kw: ConvOracle(tile_size=256, overlap=32))
    work = tmp_path / "work"
    work.mkdir()
    with FileServer(www) as server:
        jobs = [{"inputs": [f"{server.url}/town.tif"], "queries": ["roads"], "output": "town.gpkg",
                 "options": {"batch-size": 1, "workers": 1}}]
        (work / "jobs.jsonl").write_text("".join(json.dumps(j) + "\n" for j in jobs))
        env = os.environ | {"PYTHONPATH": str(TESTS)}
        proc = subprocess.run([sys.executable, "-c", CRASHING_BATCH.format(tests=str(TESTS), calls=6)],
                              cwd=work, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 137, proc.stderr
        assert (work / "town.gpkg.geoseg-work").is_dir() and not (work / "town.gpkg").exists()
        monkeypatch.chdir(work)
        executor = LocalExecutor(load=lambda spec, **kw: ConvOracle(tile_size=256, overlap=32))
        [result] = batch.BatchRunner(executor, resume=True).run(batch.read_jobs("jobs.jsonl"))
        assert result.status in ("ok", "empty") and result.tiles_resumed >= 6, result.error
        assert result.tiles_resumed + result.tiles_predicted == result.tiles
        [again] = batch.BatchRunner(executor).run(batch.read_jobs("jobs.jsonl"))
        assert again.status == "skipped"
        # a path line (a bare URL): the output goes to ./{stem}.gpkg
        shutil.copy(www / "town.tif", www / "town2.tif")
        r = CliRunner().invoke(cli, ["-q", "batch", "-", "--query", "roads"], input=f"{server.url}/town2.tif?token=t\n")
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["status"] in ("ok", "empty") and (work / "town2.gpkg").exists()


def test_stac_api_item_url_and_asset_without_extension(tmp_path):
    (tmp_path / "collections" / "c" / "items").mkdir(parents=True)
    shutil.copy(SAMPLES / "village_4326_1m.tif", tmp_path / "collections" / "c" / "village")  # no extension
    with FileServer(tmp_path) as server:
        item = stac_item({"image": {"href": f"{server.url}/collections/c/village", "roles": ["visual"]}}, "v")
        (tmp_path / "collections" / "c" / "items" / "v").write_text(json.dumps(item))
        source = raster.open_input(f"{server.url}/collections/c/items/v")
        assert source.native.width == 512 and server.range_requests("collections/c/village")
    assert source.path == f"{server.url}/collections/c/items/v#image"
    assert source.source.stac["stac_assets"] == {"image": f"{server.url}/collections/c/village"}


def test_change_between_two_remote_dates(www, model, tmp_path):
    for name in ("pair_before", "pair_after"):
        make_cog(SAMPLES / f"{name}.tif", www / f"{name}.tif")
    out = tmp_path / "change.gpkg"
    with FileServer(www) as server:
        before, after = f"{server.url}/pair_before.tif", f"{server.url}/pair_after.tif"
        r = run("-q", "change", before, after, "new buildings", "-o", out)
        assert r.exit_code == 0, r.output
        assert server.range_requests("pair_before.tif") and server.range_requests("pair_after.tif")
    assert set(record_of(out)["inputs"]) == {before, after}


def test_remote_settings_leave_the_users_and_local_files_alone(monkeypatch, tmp_path):
    monkeypatch.setenv("GDAL_HTTP_TIMEOUT", "7")
    remote.configure_gdal("https://h.org/a.tif")
    assert os.environ["GDAL_HTTP_TIMEOUT"] == "7" and os.environ["GDAL_HTTP_CONNECTTIMEOUT"]
    # GDAL_DISABLE_READDIR_ON_OPEN is set for remote paths only: a local file still finds its
    # .aux.xml sidecar (here: the nodata value it declares)
    path = tmp_path / "scene.tif"
    shutil.copy(SAMPLES / "village_4326_1m.tif", path)
    (tmp_path / "scene.tif.aux.xml").write_text(
        '<PAMDataset><PAMRasterBand band="1"><NoDataValue>7</NoDataValue></PAMRasterBand></PAMDataset>')
    with rasterio.open(path) as ds:
        assert ds.nodata == 7
