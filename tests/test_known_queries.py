"""A model says what it knows (issue 23, items 3 and 4): the concepts and wordings it was trained on
travel in config.json; a query close to none of them is warned once (or refused), recorded in the
provenance and the --json summary; a scene outside the model's resolution range is warned too."""

from __future__ import annotations

import json
import logging
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from click.testing import CliRunner

from doubles import ConvOracle
from geoseg.batch.executors import job_segmenter
from geoseg.io.gpkg import read_provenance
from geoseg.models.base import KnowsConcepts, ModelInfo, capabilities
from geoseg.models.compact.config import CompactConfig, tiny_config
from geoseg.models.compact.model import CompactModel
from geoseg.models.compact.segmenter import (
    CompactSegmenter,
    InventoriedSegmenter,
    load_compact_segmenter,
    write_inventory_vectors,
)
from geoseg.models.compact.text import TextEncoder
from geoseg.models.concepts import Inventory, KnownRule, Neighbour, QueryKnowledge, TrainedConcept
from geoseg.options import RunOptions
from geoseg.queries import parse_queries
from geoseg.run import pipeline
from geoseg.train.config import train_config_from_dict
from geoseg.train.inventory import inventory_for
from geoseg.train.queries import KNOWN_EVAL, UNRELATED_EVAL, UNRELATED_TRAIN, UNRELATED_TUNE
from geoseg_cli.main import cli

ROOT = Path(__file__).resolve().parents[1]
VILLAGE = ROOT / "sample_tiles" / "village_4326_1m.tif"

INVENTORY = Inventory((
    TrainedConcept("buildings", "real", ("buildings", "building", "roofs", "rooftops", "structures")),
    TrainedConcept("roads", "real", ("roads", "road", "road network", "roadways")),
    TrainedConcept("water", "real", ("water", "water bodies", "lake", "rivers")),
    TrainedConcept("damaged buildings", "composited", ("damaged buildings", "rubble")),
), KnownRule(0.53, "test"), "test")


@pytest.fixture(scope="module")
def knowing_dir(tmp_path_factory) -> Path:
    """A tiny compact checkpoint whose config.json declares INVENTORY."""
    path = tmp_path_factory.mktemp("knowing")
    cfg = tiny_config()
    cfg.inventory = INVENTORY
    CompactModel(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def knowing(knowing_dir) -> InventoriedSegmenter:
    model = load_compact_segmenter(knowing_dir)
    assert isinstance(model, InventoriedSegmenter)
    return model


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_inventory_round_trips_through_config_json(tmp_path):
    cfg = tiny_config()
    cfg.inventory = INVENTORY
    cfg.save(tmp_path)
    assert CompactConfig.load(tmp_path).inventory == INVENTORY
    assert json.loads((tmp_path / "config.json").read_text())["inventory"]["concepts"][3]["origin"] == "composited"
    tiny_config().save(tmp_path)
    assert CompactConfig.load(tmp_path).inventory is None
    with pytest.raises(ValueError, match="origin"):
        TrainedConcept("x", "imagined", ("x",))


def test_stored_wording_vectors_are_used_and_a_stale_file_is_not(knowing_dir, tmp_path, monkeypatch, caplog):
    copy = tmp_path / "model"
    shutil.copytree(knowing_dir, copy)
    path = write_inventory_vectors(copy)
    computed = load_compact_segmenter(knowing_dir)._inventory_vectors()
    loaded = load_compact_segmenter(copy)
    encoded: list = []
    monkeypatch.setattr(loaded.text, "encode", lambda texts: encoded.append(texts) or TextEncoder.encode(loaded.text, texts))
    assert torch.equal(loaded._inventory_vectors(), computed) and not encoded  # read, not encoded again
    assert loaded.check_queries(["roads"])[0].known and encoded == [["roads"]]
    cfg = CompactConfig.load(copy)  # the same file beside another inventory is not believed
    cfg.inventory = Inventory(INVENTORY.concepts[:2], INVENTORY.rule, "test")
    cfg.save(copy)
    assert path.is_file() and load_compact_segmenter(copy)._wording_vectors is None
    # the next export replaces the stale file without warning about it, and the new one is used
    caplog.clear()  # the load above warned, as it should
    with caplog.at_level(logging.WARNING, logger="geoseg"):
        write_inventory_vectors(copy)
    assert not caplog.records and load_compact_segmenter(copy)._wording_vectors is not None


def test_known_wording_and_heldout_synonym_are_known_unrelated_is_not(knowing):
    answers = {k.query: k for k in knowing.check_queries(["roads", "houses", "streets", "solar panels"])}
    assert answers["roads"].known and answers["roads"].similarity == pytest.approx(1.0, abs=1e-4)
    assert answers["houses"].known and answers["houses"].nearest[0].concept == "buildings"
    assert answers["streets"].known and answers["streets"].nearest[0].concept == "roads"
    solar = answers["solar panels"]
    assert not solar.known and len(solar.nearest) == 3
    assert [n.similarity for n in solar.nearest] == sorted((n.similarity for n in solar.nearest), reverse=True)
    assert "solar panels" in solar.describe() and "tiny" not in solar.describe()


def test_a_model_without_an_inventory_is_not_checked(tmp_path):
    CompactModel(tiny_config()).save_pretrained(tmp_path)
    model = load_compact_segmenter(tmp_path)
    assert type(model) is CompactSegmenter and not isinstance(model, KnowsConcepts)
    asked = parse_queries(["solar panels"])
    for unchecked in (model, ConvOracle()):  # run, never refused, and nothing is said about the query
        [query] = pipeline.checked_queries(unchecked, asked, RunOptions(unknown_query="error"))
        assert query.knowledge is None and query.text == "solar panels"


class KnowingDouble(ConvOracle):
    """A double that knows only "roads"."""

    def check_queries(self, queries):
        return [QueryKnowledge(q, q == "roads", (Neighbour("roads", 0.9 if q == "roads" else 0.2, "roads"),), 0.5, "double")
                for q in queries]


def test_batch_job_model_forwards_the_capability():
    model = KnowingDouble()
    wrapper = job_segmenter(model)
    assert capabilities(wrapper) == capabilities(model) == (KnowsConcepts,)
    assert wrapper.check_queries(["roads", "boats"]) == model.check_queries(["roads", "boats"])
    assert wrapper.meter.calls == 1


def test_cli_warns_once_records_provenance_and_json(knowing_dir, tmp_path):
    out = tmp_path / "o.gpkg"
    r = run("segment", VILLAGE, "--query", "solar panels", "--query", "roofs", "-o", out, "--model", knowing_dir, "--json")
    assert r.exit_code == 0, r.output
    lines = [line for line in r.stderr.splitlines() if "is not a concept" in line]
    assert len(lines) == 1 and '"solar panels"' in lines[0] and "WARNING" in lines[0] and "nearest: " in lines[0]
    summary = json.loads(r.stdout)
    check = {c["query"]: c for c in summary["query_check"]}
    assert check["solar panels"]["known"] is False and check["roofs"]["known"] is True
    assert len(check["solar panels"]["nearest"]) == 3 and lines[0].split("WARNING: ")[1] in summary["warnings"]
    record = read_provenance(out, "solar_panels")
    assert record["query_check"]["known"] is False
    assert record["query_check"]["nearest"] == check["solar panels"]["nearest"]
    assert read_provenance(out, "roofs")["query_check"]["known"] is True


def test_unknown_query_error_exits_2_and_writes_nothing(knowing_dir, tmp_path):
    out = tmp_path / "o.gpkg"
    r = run("segment", VILLAGE, "solar panels", "-o", out, "--model", knowing_dir, "--unknown-query", "error")
    assert r.exit_code == 2
    assert "solar panels" in r.stderr and "--unknown-query warn" in r.stderr and r.stderr.count("\n") == 1
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".geoseg-")]


def test_batch_jobs_accept_unknown_query():
    assert RunOptions.from_mapping({"unknown-query": "error"}, "jobs.jsonl:1").unknown_query == "error"
    with pytest.raises(Exception, match="unknown-query"):
        RunOptions.from_mapping({"unknown-query": "ignore"}, "jobs.jsonl:1")


def test_the_shipped_compact_warns_solar_panels_through_the_cli(tmp_path):
    r = run("segment", VILLAGE, "solar panels", "-o", tmp_path / "o.gpkg", "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)
    assert plan["query_check"][0]["known"] is False
    assert sum("is not a concept compact" in line for line in r.stderr.splitlines()) == 1


def _coarse_scene(path: Path) -> Path:
    """A 64 x 64 RGB GeoTIFF with 30 m pixels (Landsat-like), far coarser than compact's range."""
    data = np.random.default_rng(0).integers(0, 255, (3, 64, 64), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8", crs="EPSG:32633",
                       transform=Affine(30, 0, 500000, 0, -30, 5000000)) as dst:
        dst.write(data)
    return path


class RangedConv(ConvOracle):
    def __init__(self):
        super().__init__(tile_size=64, overlap=16)
        self.info = ModelInfo("ranged", "test", 64, 16, bands=3, gsd_range=(0.07, 2.0))


def test_a_coarse_scene_is_warned_in_the_log_provenance_and_dry_run(tmp_path, caplog):
    scene = _coarse_scene(tmp_path / "landsat.tif")
    plan = pipeline.dry_run([scene], RunOptions(progress=False), segmenter=RangedConv())
    assert plan["scenes"][0]["gsd"]["outside_model_range"] == "coarser"
    said = [r.getMessage() for r in caplog.records if "trained for" in r.getMessage()]
    assert len(said) == 1 and "30 m" in said[0] and "0.07-2 m" in said[0]
    out = tmp_path / "o.gpkg"
    summary = pipeline.segment([scene], ["roads"], out, RunOptions(progress=False), segmenter=RangedConv())
    assert any("30 m" in w for w in summary.warnings)
    assert read_provenance(out, summary.layers[0].name)["scene"]["gsd"][0]["outside_model_range"] == "coarser"


def test_a_native_fine_scene_is_warned_finer(tmp_path):
    path = tmp_path / "fine.tif"
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8", crs="EPSG:32633",
                       transform=Affine(0.02, 0, 500000, 0, -0.02, 5000000)) as dst:
        dst.write(np.zeros((3, 64, 64), np.uint8) + 100)
    native = pipeline.dry_run([path], RunOptions(gsd="native"), segmenter=RangedConv())["scenes"][0]["gsd"]
    auto = pipeline.dry_run([path], RunOptions(gsd="auto"), segmenter=RangedConv())["scenes"][0]["gsd"]
    assert (native["outside_model_range"], auto["outside_model_range"]) == ("finer", None)


def test_inventory_from_a_training_config_never_holds_unrelated_or_heldout_wordings():
    words = types.SimpleNamespace(
        concepts={"buildings": ["buildings", "building", "roofs"], "farmland": ["fields", "farmland"]},
        composited={"damaged buildings": ["damaged buildings", "rubble"]},
        change={"damaged_buildings": ["destroyed buildings"]},
    )
    cfg = train_config_from_dict({"stage": "segment", "data": {"real": [], "real_share": 0.0}})
    synthetic = inventory_for(cfg, words)
    assert {c.origin for c in synthetic.concepts} == {"synthetic"}
    assert "buildings" in {c.name for c in synthetic.concepts}
    wordings = {w for w, _ in synthetic.wordings()}
    assert "roofs" in wordings and "red roofs" in wordings
    banned = set(KNOWN_EVAL) | set(UNRELATED_TRAIN) | set(UNRELATED_TUNE) | set(UNRELATED_EVAL) | {"pond", "ponds"}
    assert not wordings & banned
    change = inventory_for(train_config_from_dict({"stage": "change"}), words)
    assert "new buildings" in {c.name for c in change.concepts}


def test_inventory_origins_follow_the_manifests(tmp_path):
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(json.dumps({"image": "a.png", "mask": "m.png", "expression": "buildings", "empty": False,
                                    "tags": ["src", "area-split:train"]}) + "\n")
    words = types.SimpleNamespace(concepts={"buildings": ["buildings", "building"], "farmland": ["fields", "farmland"]},
                                  composited={"damaged buildings": ["damaged buildings", "rubble"]}, change={})
    cfg = train_config_from_dict({"stage": "segment", "data": {"real": [str(manifest)], "real_share": 0.5,
                                                               "damage_share": 0.5}})
    origins = {c.name: c.origin for c in inventory_for(cfg, words).concepts}
    assert origins["buildings"] == "real" and origins["farmland"] == "synthetic"
    assert origins["damaged buildings"] == "composited"


def test_the_shipped_models_declare_an_inventory_with_a_rule():
    for name in ("compact", "compact-change"):
        cfg = CompactConfig.load(ROOT / "geoseg" / "models" / "compact" / "weights" / name)
        assert cfg.inventory is not None and cfg.inventory.rule is not None
        assert not {w for w, _ in cfg.inventory.wordings()} & (set(KNOWN_EVAL) | set(UNRELATED_EVAL))


def test_sentence_embeddings_are_unit_length(knowing):
    vectors = knowing._inventory_vectors()
    assert torch.allclose(vectors.norm(dim=1), torch.ones(len(vectors)), atol=1e-5)


def test_the_trainers_export_writes_the_inventory_and_its_rule(tmp_path):
    from geoseg.train.inventory import export_inventory

    CompactModel(tiny_config()).save_pretrained(tmp_path)
    written = export_inventory(tmp_path, train_config_from_dict({"stage": "segment"}))
    loaded = CompactConfig.load(tmp_path).inventory
    assert loaded == written and loaded.rule is not None and "UNRELATED_TUNE" in loaded.rule.chosen_on
    assert isinstance(load_compact_segmenter(tmp_path), KnowsConcepts)


def test_the_open_vocabulary_mllm_declares_no_inventory():
    from geoseg.models.segearth.bitemporal import BitemporalSegmenter
    from geoseg.models.segearth.generate import GenerativeSegmenter, GroundedSegmenter
    from geoseg.models.segearth.segmenter import SegEarthSegmenter

    for cls in (SegEarthSegmenter, GenerativeSegmenter, GroundedSegmenter, BitemporalSegmenter):
        assert "check_queries" not in dir(cls), cls  # so isinstance(model, KnowsConcepts) is False
