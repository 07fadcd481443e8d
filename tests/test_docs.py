"""The generated CLI reference matches the commands (regenerate: docs/make_cli_reference.py)."""

import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_cli_reference_is_current():
    r = subprocess.run([sys.executable, str(DOCS / "make_cli_reference.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_every_command_and_option_is_in_the_reference():
    import click

    from geoseg_cli.main import cli

    text = (DOCS / "cli.md").read_text()
    ctx = click.Context(cli, info_name="geoseg")
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        assert f"## `geoseg {name}`" in text
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("-"):
                    assert f"`{opt}`" in text, (name, opt)


def test_help_examples_name_no_path_of_this_checkout():
    """Users read `--help` (and cli.md) without this repository's sibling ../shared folder."""
    assert "../shared" not in (DOCS / "cli.md").read_text()


# ---------------------------------------------------------------- troubleshooting.md


def troubleshooting_generator():
    """docs/make_troubleshooting.py as a module (docs/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_troubleshooting", DOCS / "make_troubleshooting.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


def test_troubleshooting_is_current():
    """Fails when an error was added or reworded: run docs/make_troubleshooting.py."""
    r = subprocess.run([sys.executable, str(DOCS / "make_troubleshooting.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_messages_are_rendered_from_the_code():
    import ast

    gen = troubleshooting_generator()
    consts = {"LIMIT": 100, "MODES": ("a", "b"), "SCALE": 10.0}

    def render(source: str) -> str:
        return gen.message(ast.parse(source, mode="eval").body, consts)

    assert render('"plain text"') == "plain text"
    assert render('f"{self.path}: has {len(q)} characters; keep it under {LIMIT}"') == \
        "{path}: has {N} characters; keep it under 100"
    assert render("f\"--x {value!r}: one of {', '.join(MODES)}, over {SCALE:g}x\"") == \
        "--x '{value}': one of a, b, over 10x"
    assert render('f"{path}: unreadable ({_first_line(e)})" + " (see docs)"') == \
        "{path}: unreadable ({reason}) (see docs)"
    assert render("str(e)") is None  # another error's text: listed where that error is raised


def test_every_raise_with_a_message_is_listed():
    """No raise is dropped: the generator's walk sees as many as ast.walk, and each one with a
    message of its own has its place in the page (the others are the few named by --skipped)."""
    import ast

    gen = troubleshooting_generator()
    skipped = {line.split(": ", 1)[0] for line in gen.collect()[2]}
    page = (DOCS / "troubleshooting.md").read_text()
    n_listed = 0
    for top in gen.SOURCES:
        for path in sorted((gen.ROOT / top).rglob("*.py")):
            tree = ast.parse(path.read_text())
            rel = path.relative_to(gen.ROOT).as_posix()
            sites = list(gen.raise_sites(tree))
            assert len(sites) == sum(isinstance(n, ast.Raise) for n in ast.walk(tree)), rel
            for function, _ in sites:
                if f"{rel}:{function}" not in skipped:
                    assert f"{rel}: {function}" in page, (rel, function)
                    n_listed += 1
    assert n_listed > 150  # ~190 raise sites today; a broken walk would list far fewer


def test_common_problems_quote_real_messages():
    """The hand-written rows abridge real messages: their fixed words appear, in order, in one
    message of the generated list (or in cli/main.py, which prints the Ctrl-C and SIGTERM lines)."""
    import re

    page = (DOCS / "troubleshooting.md").read_text()
    common = page.split("## Common problems", 1)[1].split("<!-- BEGIN generated", 1)[0]
    generated = page.split("<!-- BEGIN generated", 1)[1]
    messages = re.findall(r"^\| `+ ?(.+?) ?`+ \|", generated, flags=re.M)
    messages.append((DOCS.parent / "cli" / "main.py").read_text())
    rows = [line.split(" | ")[0] for line in common.splitlines() if line.startswith("| `")]
    assert len(rows) > 15
    for row in rows:
        for quoted in re.findall(r"`([^`]+)`", row):
            # X, N, 'x', ... abridge a run-time value or a cut part of the message
            fragments = [f.strip() for f in re.split(r"\.\.\.|'x'|\b[A-Z]\b", quoted) if len(f.strip()) > 3]
            pattern = ".*".join(map(re.escape, fragments))
            assert any(re.search(pattern, m) for m in messages), \
                f"{quoted!r} matches no message of the code: fix its row under 'Common problems'"


# ---------------------------------------------------------------- concepts.md


def test_geographic_areas_use_the_crs_ellipsoid_as_concepts_says():
    """concepts.md: geodesic on the CRS's own ellipsoid, not always WGS84."""
    import pytest
    from pyproj import Geod
    from shapely.geometry import box

    from geoseg.vectorize import polygon_metrics

    concepts = " ".join((DOCS / "concepts.md").read_text().split())
    assert "geodesic on the CRS's own ellipsoid when the CRS is geographic" in concepts
    square = box(10.0, 45.0, 10.01, 45.01)
    lons, lats = (list(c) for c in square.exterior.xy)
    sphere = "+proj=longlat +R=6371000 +no_defs"
    area, perimeter = polygon_metrics([square], sphere)
    expected_area, expected_perimeter = Geod(a=6371000, b=6371000).polygon_area_perimeter(lons, lats)
    assert area[0] == pytest.approx(abs(expected_area), rel=1e-9)
    assert perimeter[0] == pytest.approx(expected_perimeter, rel=1e-9)
    wgs84_area, _ = Geod(ellps="WGS84").polygon_area_perimeter(lons, lats)
    assert abs(area[0] - abs(wgs84_area)) > 1e-3 * abs(wgs84_area)  # the two really differ here
