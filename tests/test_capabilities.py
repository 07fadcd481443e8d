"""Model capabilities survive the batch wrappers: a job's model (local lock, Ray replicas) has exactly
the capabilities of the real model, so `geoseg batch` writes the same layers as `geoseg change` and
`geoseg segment` for a tiny SegEarth model in change mode (its own predict_change, not the per-date
comparison) and in generative mode (one answer per scene, its phrases in `target`, the answer in
the provenance). The Ray tests run when Ray is installed (the optional extra geoseg[ray])."""

from __future__ import annotations

import functools
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import torch
from affine import Affine
from click.testing import CliRunner

from conftest import write_rgb
from doubles import ConvOracle
from geoseg.batch.executors import Interrupted, job_segmenter
from geoseg.io import gpkg
from geoseg.models.base import (
    CAPABILITIES,
    DATA_MEMBERS,
    ChangeAware,
    Dialogue,
    EncodesQueries,
    Generative,
    Grounded,
    KnowsConcepts,
    Prediction,
    ProvenanceSource,
    capabilities,
)
from geoseg.models.concepts import Neighbour, QueryKnowledge
from geoseg.models.registry import load_segmenter
from geoseg.models.segearth import generate
from geoseg.run import pipeline
from geoseg_cli.main import cli

T = Affine(0.5, 0, 500000, 0, -0.5, 5000120)
QUERY = "red square and blue circle"  # segment: the generative answer names two targets
CHANGE_QUERY = "new blue circle"
ANSWER = "<p>red square</p>[SEG] and <p>blue circle</p>[SEG]."


# ---------------------------------------------------------------- doubles, one per capability


@dataclass(frozen=True)
class Said:
    query: str
    text: str
    phrases: tuple[str, ...]


class ChangeDouble(ConvOracle):
    def change_types(self, query):
        return ("appeared", "disappeared")

    def predict_change(self, after, before, queries, *, direction="appeared"):
        sign = 1.0 if direction == "appeared" else -1.0
        return self.predict((after - before) * sign + 0.5, queries)


class GroundedDouble(ConvOracle):
    def __init__(self, answers):
        super().__init__()
        self.answers = list(answers)

    def provenance(self, query_index):
        return {"dialogue": {"answer": self.answers[query_index].text}}


class GenerativeDouble(ChangeDouble):
    def answer(self, images, queries):
        return [[Said(q, f"{q} at {float(image.mean()):.3f}", (q,)) for q in queries] for image in images]

    def grounded(self, answers):
        return GroundedDouble(answers)

    def with_history(self, history):
        return self


class EncodingDouble(ConvOracle):
    """Encodes queries ahead: predict waits for encode_queries (as the text encoder's lock makes
    it wait) and refuses a query it was not given; every call is logged with its thread."""

    def __init__(self):
        super().__init__()
        self.encoded: set[str] = set()
        self.ready = threading.Event()
        self.calls: list[tuple[str, str]] = []

    def encode_queries(self, queries):
        self.calls.append(("encode_queries", threading.current_thread().name))
        self.encoded |= set(queries)
        self.ready.set()

    def predict(self, images, queries):
        self.ready.wait(timeout=30)
        assert set(queries) <= self.encoded, "predict before encode_queries"
        self.calls.append(("predict", threading.current_thread().name))
        return super().predict(images, queries)


class KnowingDouble(ConvOracle):
    """Declares what it was trained on: "roads" only."""

    def check_queries(self, queries):
        return [QueryKnowledge(q, q == "roads", (Neighbour("roads", 1.0 if q == "roads" else 0.2, "roads"),), 0.5,
                               "knowing double") for q in queries]


DOUBLES = {"conv": ConvOracle, "change": ChangeDouble, "generative": GenerativeDouble, "encodes": EncodingDouble,
           "knows": KnowingDouble}
EXPECTED = {
    "conv": (),
    "change": (ChangeAware,),
    "generative": (ChangeAware, Generative, Dialogue),
    "encodes": (EncodesQueries,),
    "knows": (KnowsConcepts,),
}


def load_double(spec, **kw):
    """Module-level, so Ray workers can import it (tests/ is on their PYTHONPATH)."""
    return DOUBLES[spec]()


class CountingLock:
    def __init__(self):
        self.entered = 0

    def __enter__(self):
        self.entered += 1

    def __exit__(self, *exc):
        return False


def check_wrapper(wrapper, spec: str, lock: CountingLock | None = None) -> None:
    """`wrapper` (a job's view of the double `spec`) exposes what the double does, and each call
    (views included) goes through the lock and the job's meter."""
    model = load_double(spec)
    assert capabilities(model) == EXPECTED[spec]
    assert capabilities(wrapper) == EXPECTED[spec]
    images = torch.rand(5, 3, 32, 32)
    queries = ["roads", "fields"]
    if isinstance(model, EncodesQueries):
        model.encode_queries(queries)
        wrapper.encode_queries(queries)
    assert torch.equal(wrapper.predict(images, queries).probabilities, model.predict(images, queries).probabilities)
    if isinstance(model, ChangeAware):
        before = torch.rand(5, 3, 32, 32)
        got = wrapper.predict_change(images, before, queries, direction="disappeared")
        assert torch.equal(got.probabilities, model.predict_change(images, before, queries, direction="disappeared").probabilities)
        assert wrapper.change_types("roads") == model.change_types("roads")
    if isinstance(model, Generative):
        answers = wrapper.answer(images, queries)
        assert answers == model.answer(images, queries)
        view = wrapper.grounded(answers[0])
        assert capabilities(view) == capabilities(model.grounded(answers[0])) == (Grounded, ProvenanceSource)
        assert view.answers == answers[0]
        assert view.provenance(1) == {"dialogue": {"answer": answers[0][1].text}}
        assert capabilities(wrapper.with_history([])) == EXPECTED[spec]
    if isinstance(model, KnowsConcepts):
        assert wrapper.check_queries(queries) == model.check_queries(queries)
    calls = {"conv": 1, "change": 3, "generative": 7, "encodes": 2, "knows": 2}[spec]
    assert wrapper.meter.calls == calls
    if lock is not None:
        assert lock.entered == calls


@pytest.mark.parametrize("spec", sorted(DOUBLES))
def test_local_job_model_has_exactly_the_models_capabilities(spec):
    lock, cancel = CountingLock(), threading.Event()
    wrapper = job_segmenter(load_double(spec), lock=lock, cancel=cancel)
    check_wrapper(wrapper, spec, lock)
    cancel.set()  # every forwarded call stops the job, like predict
    with pytest.raises(Interrupted):
        wrapper.predict(torch.rand(1, 3, 8, 8), ["roads"])
    if spec == "change":
        with pytest.raises(Interrupted):
            wrapper.predict_change(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), ["roads"])


def test_every_data_member_of_a_capability_is_copied_by_wrappers():
    # DATA_MEMBERS is what wrappers copy; the Protocols' own annotations are what they declare
    for cap in CAPABILITIES:
        assert set(DATA_MEMBERS.get(cap, ())) == set(cap.__dict__.get("__annotations__", {})), cap.__name__


def test_segment_encodes_the_queries_in_a_thread_before_predicting(tmp_path):
    scene = tmp_path / "s.tif"
    write_rgb(scene, np.random.default_rng(0).integers(0, 255, (3, 96, 96), dtype=np.uint8), transform=T)
    model = EncodingDouble()
    pipeline.segment([scene], ["roads", "fields"], tmp_path / "o.gpkg", pipeline.RunOptions(tile_size=64),
                     segmenter=model)
    assert model.encoded == {"roads", "fields"}
    assert model.calls[0][0] == "encode_queries" and model.calls[0][1] != threading.main_thread().name
    assert {name for name, _ in model.calls[1:]} == {"predict"}


def test_a_grounded_view_shares_the_jobs_lock_meter_and_cancel():
    lock, cancel = CountingLock(), threading.Event()
    wrapper = job_segmenter(GenerativeDouble(), lock=lock, cancel=cancel)
    view = wrapper.grounded([Said("roads", "roads!", ("roads",))])
    view.predict(torch.rand(2, 3, 32, 32), ["roads"])
    assert (wrapper.meter.calls, lock.entered) == (2, 2)
    cancel.set()
    with pytest.raises(Interrupted):
        view.provenance(0)


def test_prediction_concat_joins_targets_and_text():
    a = Prediction(torch.zeros(2, 1, 4, 4), targets=[[[]], [[]]], text=["x"])
    b = Prediction(torch.ones(1, 1, 4, 4), targets=[[[]]], text=["y"])
    joined = Prediction.concat([a, b])
    assert joined.probabilities.shape[0] == 3 and len(joined.targets) == 3 and joined.text == ["x\ny"]
    assert Prediction.concat([a, Prediction(torch.ones(1, 1, 4, 4))]).targets is None


# ---------------------------------------------------------------- a tiny SegEarth model end to end


@functools.cache
def _tokenizer():
    from mllm_helpers import tiny_tokenizer

    return tiny_tokenizer()


PROMPTS: list[int] = []  # one entry per generated answer (per image) in this process


def scripted_generate(net, batch, eos_id, max_new_tokens):
    """The tiny model's random language model replaced at the point where tokens are chosen."""
    PROMPTS.extend(range(batch.embeds.shape[0]))
    ids = _tokenizer().encode(" " + ANSWER, add_special_tokens=False)
    return [ids + [eos_id] for _ in range(batch.embeds.shape[0])]


def load_scripted(spec, **kw):
    """A Ray worker's loader: the scripted answers in that process too."""
    generate.greedy_generate = scripted_generate
    return load_segmenter(spec, **kw)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny generative SegEarth checkpoint (SegEarth-R1 based, so also change-aware), a pair of
    dates (a blue circle appears) and the reference outputs of `geoseg segment` and `geoseg change`."""
    from mllm_helpers import shapes_image, write_tiny_checkpoint

    root = tmp_path_factory.mktemp("capabilities")
    model = write_tiny_checkpoint(root / "gen")
    after, masks = shapes_image(7, size=96)  # 96 px: four 64 px tiles with overlap
    before = after.clone()
    before[:, masks["blue circle"] > 0] = 0.47
    for name, image in (("before", before), ("after", after)):
        write_rgb(root / f"{name}.tif", (image.numpy() * 255).round().astype(np.uint8), T)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(generate, "greedy_generate", scripted_generate)
        PROMPTS.clear()
        common = ["--model", str(model), "--device", "cpu", "--threshold", "0.3"]
        invoke("segment", root / "after.tif", QUERY, "-o", root / "segment.gpkg", *common)
        assert len(PROMPTS) == 1  # one answer for the scene, not one per tile
        invoke("change", root / "before.tif", root / "after.tif", CHANGE_QUERY, "-o", root / "change.gpkg", *common)
        yield root, model


def invoke(*args):
    # one math thread, as each of the two Ray replicas gets on the 2-CPU test cluster: the same
    # arithmetic everywhere, so the layers can be compared exactly
    result = CliRunner().invoke(cli, ["-q", "--threads", "1", *map(str, args)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def batch_jobs(root: Path, out: Path, model: Path) -> Path:
    options = {"model": str(model), "device": "cpu", "threshold": 0.3}
    jobs = [
        {"inputs": [str(root / "after.tif")], "queries": [QUERY], "output": str(out / "segment.gpkg"), "options": options},
        {"mode": "change", "inputs": [str(root / "before.tif"), str(root / "after.tif")], "queries": [CHANGE_QUERY],
         "output": str(out / "change.gpkg"), "options": options},
    ]
    out.mkdir()
    path = out / "jobs.jsonl"
    path.write_text("".join(json.dumps(j) + "\n" for j in jobs))
    return path


def layer_view(path: Path) -> list:
    """A GeoPackage as the user sees it, less the per-run id: rows and the provenance's answer."""
    out = []
    for name, geometry in gpkg_layers(path):
        gdf = gpd.read_file(path, layer=name)
        rows = sorted(
            (r.geometry.wkb, round(r.score, 6), round(r.area_m2, 6), r.target, r.query, getattr(r, "change_type", None))
            for r in gdf.itertuples()
        )
        record = gpkg.read_provenance(path, name)
        out.append((name, geometry, rows, record.get("dialogue"), record["model"], record.get("change_direction")))
    return out


def gpkg_layers(path: Path) -> list:
    import pyogrio

    return [(n, g) for n, g in pyogrio.list_layers(path) if g is not None]


def check_same_layers(root: Path, out: Path) -> None:
    for name in ("segment.gpkg", "change.gpkg"):
        expected = layer_view(root / name)
        assert all(rows for _, _, rows, *_ in expected), f"{name}: the reference found nothing"
        assert layer_view(out / name) == expected, name
    (segment,) = layer_view(root / "segment.gpkg")
    assert {row[3] for row in segment[2]} == {"red square", "blue circle"}  # target: the answer's phrases
    assert segment[3]["answer"] == "red square and blue circle."


def batch_results(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_local_batch_writes_the_same_layers_as_segment_and_change(tiny):
    root, model = tiny
    PROMPTS.clear()
    jobs = batch_jobs(root, root / "local", model)
    got = batch_results(invoke("batch", jobs, "--workers", "2"))
    assert [r["status"] for r in got] == ["ok", "ok"], got
    assert len(PROMPTS) == 1  # the segment job answered once for its scene; the change job never
    check_same_layers(root, root / "local")


def test_ray_batch_writes_the_same_layers_as_segment_and_change(tiny, cluster, monkeypatch):
    from geoseg.batch.executors import ray_executor

    root, model = tiny
    monkeypatch.setattr(ray_executor, "load_segmenter", load_scripted)
    jobs = batch_jobs(root, root / "ray", model)
    got = batch_results(invoke("batch", jobs, "--executor", "ray", "--replicas", "2", "--workers", "2"))
    assert [r["status"] for r in got] == ["ok", "ok"], got
    check_same_layers(root, root / "ray")


def test_ray_job_model_has_exactly_the_models_capabilities(cluster):
    from geoseg.batch.executors.ray_executor import RayExecutor

    ex = RayExecutor(workers=1, replicas=2, load=load_double)
    try:
        for spec in sorted(DOUBLES):  # one pool of two replicas hosts all three
            wrapper, opts = ex.job_model(spec, pipeline.RunOptions(batch_size=2), threading.Event())
            check_wrapper(wrapper, spec)  # 5 tiles in chunks of 2 on two replicas, joined in order
        assert all(n > 0 for n in ex.pool().chunks)
    finally:
        ex.close()
