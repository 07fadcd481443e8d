"""A change query that names no direction ("buildings") gets each change only in its own
direction (issue 24 item 1): never one mask written as both `appeared` and `disappeared`.

- compact-change, the default change model, on a rendered pair with one new and one demolished
  building (the seed chosen by the data alone): asked once per direction with that direction's
  wording, by `geoseg change` and by `geoseg batch` alike;
- a generative change model (Generative + ChangeAware, SegEarth-R1's per-date comparison), by
  `geoseg change` and `geoseg batch`;
- a change-native model that reads a direction only from the query's words cannot tell them apart:
  one set of polygons, `change_type` "changed".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from click.testing import CliRunner
from shapely import affinity
from shapely.geometry import box
from shapely.ops import unary_union

from conftest import write_truth_scene
from doubles import BandOracle
from geoseg.batch.executors import local
from geoseg.io import gpkg
from geoseg.models.base import ChangeAware, Generative, ModelInfo, Prediction, capabilities
from geoseg.models.change import combine, directed_change_types, per_query
from geoseg.options import RunOptions
from geoseg.queries import change_direction
from geoseg.run import pipeline
from geoseg_cli.main import cli

T = Affine(0.5, 0, 500000, 0, -0.5, 5000128)


def invoke(*args):
    result = CliRunner().invoke(cli, ["-q", *map(str, args)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def by_direction(path: Path) -> dict[str, gpd.GeoSeries]:
    (layer,) = [n for n, g in gpkg_layers(path)]
    gdf = gpd.read_file(path, layer=layer)
    return {kind: gdf[gdf.change_type == kind].geometry for kind in sorted(set(gdf.change_type))}


def gpkg_layers(path: Path) -> list:
    import pyogrio

    return [(n, g) for n, g in pyogrio.list_layers(path) if g is not None]


def covered(polygons: gpd.GeoSeries, building) -> float:
    """The share of `building` that `polygons` cover."""
    return unary_union(list(polygons)).intersection(building).area / building.area if len(polygons) else 0.0


def check_own_direction(path: Path, new, demolished, *, found: float = 0.5) -> None:
    got = by_direction(path)
    assert set(got) == {"appeared", "disappeared"}, set(got)
    assert covered(got["appeared"], new) >= found and covered(got["disappeared"], demolished) >= found
    assert covered(got["appeared"], demolished) < 0.05 and covered(got["disappeared"], new) < 0.05
    wkb = {kind: {g.wkb for g in polys} for kind, polys in got.items()}
    assert not wkb["appeared"] & wkb["disappeared"]  # no polygon written as both directions


# ---------------------------------------------------------------- compact-change, the default


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """A rendered pair (0.5 m, 256 px: one tile) whose only changes are one new and one
    demolished building of at least 150 px: the first such seed from 7300 on (7306), chosen by the
    data, never by the model's answer. Returns the folder, the two buildings in map coordinates and
    the output of `geoseg change BEFORE AFTER buildings`."""
    from geoseg.train.synth.change import render_pair

    for seed in range(7300, 7500):
        pair = render_pair(seed, 256, 256, 0.5, change_kinds=("new_buildings", "demolished_buildings"))
        kinds = sorted(i.attrs["change"] for i in pair.change_instances)
        if kinds == ["demolished_buildings", "new_buildings"] and all(i.geometry.area >= 150 for i in pair.change_instances):
            break
    root = tmp_path_factory.mktemp("rendered")
    for name, image in (("before", pair.before.image), ("after", pair.after.image)):
        with rasterio.open(root / f"{name}.tif", "w", driver="GTiff", width=256, height=256, count=3, dtype="uint8",
                           crs="EPSG:32633", transform=T) as dst:
            dst.write(np.moveaxis(image[..., :3], -1, 0))
    to_map = [T.a, T.b, T.d, T.e, T.xoff, T.yoff]
    building = {i.attrs["change"]: affinity.affine_transform(i.geometry, to_map) for i in pair.change_instances}
    invoke("change", root / "before.tif", root / "after.tif", "buildings", "-o", root / "change.gpkg", "--device", "cpu")
    return root, building["new_buildings"], building["demolished_buildings"]


def test_compact_change_puts_each_building_only_in_its_own_direction(rendered):
    root, new, demolished = rendered
    check_own_direction(root / "change.gpkg", new, demolished)
    (layer,) = [n for n, _ in gpkg_layers(root / "change.gpkg")]
    record = gpkg.read_provenance(root / "change.gpkg", layer)
    assert record["model"]["name"] == "compact-change" and record["change_direction"] == "both"


def test_batch_writes_the_same_directions_as_change(rendered, tmp_path):
    root, new, demolished = rendered
    jobs = tmp_path / "jobs.jsonl"
    job = {"mode": "change", "inputs": [str(root / "before.tif"), str(root / "after.tif")], "queries": ["buildings"],
           "output": str(tmp_path / "batch.gpkg"), "options": {"device": "cpu"}}
    jobs.write_text(json.dumps(job) + "\n")
    (line,) = [json.loads(x) for x in invoke("batch", jobs).stdout.splitlines()]
    assert line["status"] == "ok" and [ly["change_type"] for ly in line["layers"]] == ["both"], line
    check_own_direction(tmp_path / "batch.gpkg", new, demolished)
    got, expected = by_direction(tmp_path / "batch.gpkg"), by_direction(root / "change.gpkg")
    assert {k: sorted(g.wkb for g in v) for k, v in got.items()} == {k: sorted(g.wkb for g in v) for k, v in expected.items()}


# ---------------------------------------------------------------- doubles: a pair of 4-band scenes


STAYS = box(500020, 5000060, 500040, 5000080)
DEMOLISHED = box(500070, 5000060, 500090, 5000085)
NEW = box(500030, 5000010, 500060, 5000030)


@pytest.fixture
def truth_pair(tmp_path):
    """Band 4 marks the buildings: one stays, one is demolished, one is new."""
    before, after = tmp_path / "before.tif", tmp_path / "after.tif"
    write_truth_scene(before, [STAYS, DEMOLISHED], width=256, height=256, transform=T)
    write_truth_scene(after, [STAYS, NEW], width=256, height=256, transform=T, seed=1)
    return before, after


@dataclass(frozen=True)
class Said:
    query: str
    text: str
    phrases: tuple[str, ...]


class GenerativeChange(BandOracle):
    """A generative change model (SegEarth-R1-style): answers queries, and in change mode segments
    both dates and compares them with SegEarth's own formula, one direction per query."""

    def answer(self, images, queries):
        return [[Said(q, q, (q,)) for q in queries] for _ in images]

    def grounded(self, answers):
        raise AssertionError("change mode never grounds answers")

    def change_types(self, query):
        return directed_change_types(query)

    def predict_change(self, after, before, queries, *, direction="appeared"):
        a, b = self.predict(after, queries).probabilities, self.predict(before, queries).probabilities
        return Prediction(torch.stack([combine(a[:, i], b[:, i], d, 2)
                                       for i, d in enumerate(per_query(direction, queries))], 1))


def test_a_generative_change_model_puts_each_building_only_in_its_own_direction(truth_pair, tmp_path, monkeypatch):
    model = GenerativeChange()
    assert {ChangeAware, Generative} <= set(capabilities(model))
    before, after = truth_pair
    pipeline.change(before, after, ["buildings"], tmp_path / "c.gpkg", RunOptions(progress=False), segmenter=model)
    check_own_direction(tmp_path / "c.gpkg", NEW, DEMOLISHED, found=0.95)
    # the same through `geoseg batch`: the job's model forwards one direction per channel
    monkeypatch.setattr(local, "load_segmenter", lambda spec, **kw: GenerativeChange())
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"mode": "change", "inputs": [str(before), str(after)], "queries": ["buildings"],
                                "output": str(tmp_path / "b.gpkg")}) + "\n")
    invoke("batch", jobs)
    check_own_direction(tmp_path / "b.gpkg", NEW, DEMOLISHED, found=0.95)
    assert all(covered(polys, STAYS) == 0 for polys in by_direction(tmp_path / "b.gpkg").values())


class WordsOnly(BandOracle):
    """ChangeAware and reading the direction from the words alone (as the bi-temporal SegEarth):
    with both dates it returns where the building layer changed, whichever way."""

    def __init__(self):
        super().__init__()
        self.info = ModelInfo("words-only", "test", 256, 32, bands=4)

    def change_types(self, query):
        said = change_direction(query)
        return ("changed",) if said == "both" else (said,)

    def predict_change(self, after, before, queries, *, direction="appeared"):
        assert [self.change_types(q) for q in queries] == [(d,) for d in per_query(direction, queries)]
        return Prediction((self.predict(after, queries).probabilities - self.predict(before, queries).probabilities).abs())


def test_a_model_that_cannot_tell_the_directions_writes_one_set_changed(truth_pair, tmp_path):
    before, after = truth_pair
    summary = pipeline.change(before, after, ["buildings"], tmp_path / "c.gpkg", RunOptions(progress=False),
                              segmenter=WordsOnly())
    got = by_direction(tmp_path / "c.gpkg")
    assert set(got) == {"changed"} and len(got["changed"]) == 2  # each building once, not twice
    assert covered(got["changed"], NEW) > 0.95 and covered(got["changed"], DEMOLISHED) > 0.95
    assert [layer.change_type for layer in summary.layers] == ["changed"]
    record = gpkg.read_provenance(tmp_path / "c.gpkg", summary.layers[0].name)
    assert record["change_direction"] == "changed"
