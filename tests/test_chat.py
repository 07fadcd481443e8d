"""`geoseg chat SCENE -o out.gpkg`: three piped turns -> three layers with the right provenance.

The tiny generative checkpoint has random weights, so its language model is replaced by a script
(the answers of each turn) at the one point where tokens are chosen; everything else is real:
the dialogue prompt with its history, parsing the [SEG] answer, grounding each [SEG] on every
tile of the scene, one channel per named target, the GeoPackage layers and their provenance.
"""

from __future__ import annotations

import numpy as np
import pyogrio
import pytest
import torch
from affine import Affine
from click.testing import CliRunner
from mllm_helpers import shapes_image, write_tiny_checkpoint

from conftest import write_rgb
from doubles import count_calls
from geoseg.io import gpkg, raster
from geoseg.models.segearth import generate
from geoseg_cli.main import cli

torch.set_num_threads(1)

TURNS = ["red square and blue circle", "only the red one", "the green one"]
ANSWERS = [
    "<p>red square</p>[SEG] and <p>blue circle</p>[SEG].",
    "<p>red square</p>[SEG].",
    "There is no such target in this image.",
]


@pytest.fixture
def scripted(monkeypatch, tmp_path):
    """Replace token choice by the script; record each prompt the model was given."""
    from mllm_helpers import tiny_tokenizer

    tok = tiny_tokenizer()
    prompts = []

    def fake_generate(net, batch, eos_id, max_new_tokens):
        prompts.append(batch.ids[0].tolist())
        ids = tok.encode(" " + ANSWERS[len(prompts) - 1], add_special_tokens=False)
        return [ids + [eos_id] for _ in range(batch.embeds.shape[0])]

    monkeypatch.setattr(generate, "greedy_generate", fake_generate)
    return tok, prompts


@pytest.fixture
def scene(tmp_path):
    image, _ = shapes_image(7, size=96)  # 96 px: four 64 px tiles with overlap
    path = tmp_path / "scene.tif"
    write_rgb(path, (image.numpy() * 255).round().astype(np.uint8), Affine(0.5, 0, 500000, 0, -0.5, 5000120))
    return path


def test_three_piped_turns_write_three_layers_with_their_provenance(tmp_path, scene, scripted, monkeypatch):
    tok, prompts = scripted
    stats = count_calls(monkeypatch, raster, "compute_stats")
    model = write_tiny_checkpoint(tmp_path / "gen")
    out = tmp_path / "chat.gpkg"
    result = CliRunner().invoke(
        cli,
        ["chat", str(scene), "-o", str(out), "--model", str(model), "--device", "cpu", "--threshold", "0.01", "--json"],
        input="\n".join(TURNS) + "\n",
    )
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 3
    assert len(stats) == 1  # the scene's normalisation is computed once per session, not per turn
    layers = [name for name, geom in pyogrio.list_layers(out) if geom is not None]
    assert layers == ["turn_1_red_square_and_blue_circle", "turn_2_only_the_red_one", "turn_3_the_green_one"]

    records = [gpkg.read_provenance(out, name)["dialogue"] for name in layers]
    assert [r["turn"] for r in records] == [1, 2, 3]
    assert [r["query"] for r in records] == TURNS
    assert records[0]["answer"] == "red square and blue circle."
    assert records[0]["targets"] == ["red square", "blue circle"]
    assert records[2]["targets"] == [] and "no such target" in records[2]["answer"]
    assert records[0]["history"] == []
    assert [h["query"] for h in records[2]["history"]] == TURNS[:2]
    assert "[SEG]" in records[2]["history"][0]["answer"]  # earlier answers are kept verbatim

    # the history went into the prompt: turn 3's prompt starts with turn 2's, which holds turn 1
    assert prompts[1][: len(prompts[0])] == prompts[0]
    assert prompts[2][: len(prompts[1])] == prompts[1]
    assert len(prompts[2]) > len(prompts[1]) > len(prompts[0])

    # one set of polygons per named target, its phrase in `target`; no [SEG] -> empty layer
    first = pyogrio.read_dataframe(out, layer=layers[0])
    assert set(first["target"]) == {"red square", "blue circle"}
    assert set(first["query"]) == {TURNS[0]}
    assert set(pyogrio.read_dataframe(out, layer=layers[1])["target"]) == {"red square"}
    assert len(pyogrio.read_dataframe(out, layer=layers[2])) == 0


def test_chat_refuses_a_model_that_cannot_talk(tmp_path, scene):
    model = write_tiny_checkpoint(tmp_path / "r1", model_type="segearth_r1")
    result = CliRunner().invoke(
        cli, ["chat", str(scene), "-o", str(tmp_path / "x.gpkg"), "--model", str(model), "--device", "cpu"],
        input="buildings\n",
    )
    assert result.exit_code == 2
    assert "cannot hold a dialogue" in result.output
    assert not (tmp_path / "x.gpkg").exists()


def test_segment_with_a_generative_model_answers_once_and_names_each_target(tmp_path, scene, scripted):
    from geoseg.run import pipeline

    _, prompts = scripted
    model = write_tiny_checkpoint(tmp_path / "gen")
    out = tmp_path / "seg.gpkg"
    opts = pipeline.RunOptions(model=str(model), device="cpu", progress=False, threshold=0.01)
    summary = pipeline.segment([scene], [TURNS[0]], out, opts)
    assert summary.tiles == 4 and len(prompts) == 1  # one answer for the scene, not one per tile
    gdf = pyogrio.read_dataframe(out, layer=summary.layers[0].name)
    assert set(gdf["target"]) == {"red square", "blue circle"}
    record = gpkg.read_provenance(out, summary.layers[0].name)
    assert record["dialogue"]["answer"] == "red square and blue circle."
    assert record["dialogue"]["turn"] == 1 and record["dialogue"]["history"] == []
