"""pyproject.toml's version ranges admit the pinned set in constraints.txt and exclude versions that
lack what geoseg calls."""

from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]


def requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    return {canonicalize_name(r.name): r for r in map(Requirement, listed)}


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep:
            out[canonicalize_name(name)] = version.strip()
    return out


def test_pinned_set_is_inside_the_ranges():
    pinned = pins()
    outside = {name: (str(req.specifier), pinned[name]) for name, req in requirements().items()
               if name in pinned and not req.specifier.contains(pinned[name], prereleases=True)}
    assert outside == {}


def test_shapely_floor_has_coverage_simplify():
    # shapely.coverage_simplify (vectorize's --simplify) arrived in shapely 2.1
    assert not requirements()["shapely"].specifier.contains("2.0.7")


def test_type_check_covers_the_package_without_exemptions():
    # mypy (make typecheck): geoseg/ and cli/, untyped bodies checked; overrides only for third-party modules
    mypy = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert set(mypy["files"]) == {"geoseg", "cli"}
    assert mypy["check_untyped_defs"] is True
    assert "ignore_errors" not in mypy and "ignore_missing_imports" not in mypy
    overridden = [m for o in mypy.get("overrides", []) for m in o["module"]]
    assert overridden and not [m for m in overridden if m.split(".")[0] in ("geoseg", "geoseg_cli", "cli")]
    assert all(set(o) == {"module", "ignore_missing_imports"} for o in mypy["overrides"])
    assert "mypy" in requirements()


def test_lint_and_ci_run_the_type_check():
    makefile = (ROOT / "Makefile").read_text()
    lint = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert "ruff check" in lint and "mypy" in lint
    ci = [line.split("#")[0].strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert ci.index("make typecheck") < ci.index("make test")
