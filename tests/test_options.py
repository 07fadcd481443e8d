"""One options model (geoseg.options): the CLI's Click options, the batch parser and RunOptions
itself agree on names, defaults, ranges and help, because all come from the same declarations."""

import click
import pytest
from affine import Affine
from click.testing import CliRunner
from shapely.geometry import box

from conftest import write_truth_scene
from doubles import BandOracle
from geoseg.errors import InputError
from geoseg.io import gpkg
from geoseg.options import GROUPS, OPTIONS, MinArea, RunOptions, options_for
from geoseg.run import pipeline
from geoseg_cli.main import cli

T = Affine(0.5, 0, 500000, 0, -0.5, 5000120)


def click_params(command: str) -> dict[str, click.Option]:
    cmd = cli.get_command(click.Context(cli), command)
    return {p.name: p for p in cmd.params if isinstance(p, click.Option)}


@pytest.mark.parametrize("command", ["segment", "change", "vectorize", "chat"])
def test_click_options_are_generated_from_the_model(command):
    params = click_params(command)
    for option in options_for(command):
        param = params[option.field]
        assert f"--{option.name}" in param.opts
        assert param.help == option.help or (command, option.field) == ("chat", "model")  # chat's own --model help
        if option.kind != "flag" and option.default is not None:
            assert param.default == option.default
    run_fields = {o.field for o in OPTIONS.values()}
    assert {name for name in params if name in run_fields} == {o.field for o in options_for(command)}


def test_every_option_has_a_group_help_and_a_command():
    for option in OPTIONS.values():
        assert option.group in GROUPS and option.help.endswith(".") and option.commands


def test_run_options_check_what_python_callers_pass():
    opts = RunOptions(min_area="50m2", bands="3,2,1", gsd="native", probabilities="p.tif")
    assert opts.min_area == MinArea(m2=50) and opts.bands == (3, 2, 1) and opts.gsd == "native"
    assert opts.record()["min_area"] == "50m2" and opts.record()["probabilities"] == "p.tif"
    with pytest.raises(InputError, match=r"^RunOptions: option threshold=2: must be at most 1$"):
        RunOptions(threshold=2)
    with pytest.raises(InputError, match="RunOptions: option blend='max': expected one of cosine"):
        RunOptions(blend="max")
    assert RunOptions(tile_size=None).tile_size is None  # None: the model decides
    assert RunOptions(device=None, threshold=None).device == "auto"  # None: the default


@pytest.mark.parametrize("value,expect", [("auto", "auto"), ("NATIVE", "native"), ("0.3", 0.3), (2, 2.0)])
def test_gsd_values(value, expect):
    assert RunOptions(gsd=value).gsd == expect


@pytest.mark.parametrize("args,message", [
    (["--gsd", "fine"], "Invalid value for '--gsd'"),
    (["--gsd", "0"], "a ground resolution in metres > 0"),
    (["--tile-size", "8"], "Invalid value for '--tile-size'"),
    (["--min-area", "lots"], "Invalid value for '--min-area'"),
    (["-b", "3,x"], "1-based band numbers"),
])
def test_cli_rejects_bad_values_with_exit_2(args, message, tmp_path):
    r = CliRunner().invoke(cli, ["segment", "s.tif", "q", "-o", str(tmp_path / "o.gpkg"), *args])
    assert r.exit_code == 2 and message in r.stderr


def test_gsd_is_carried_into_the_provenance(monkeypatch, tmp_path):
    monkeypatch.setattr(pipeline, "load_segmenter", lambda *a, **k: BandOracle(tile_size=128, overlap=16))
    scene, out = tmp_path / "s.tif", tmp_path / "o.gpkg"
    write_truth_scene(scene, [box(500020, 5000020, 500060, 5000080)], width=128, height=128, transform=T)
    r = CliRunner().invoke(cli, ["-q", "segment", str(scene), "b", "-o", str(out), "--gsd", "native",
                                 "--min-area", "20"])
    assert r.exit_code == 0, r.stderr
    parameters = gpkg.read_provenance(out, "b")["parameters"]
    assert parameters["gsd"] == "native" and parameters["min_area"] == "20"
