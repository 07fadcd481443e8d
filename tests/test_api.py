"""The declared public API: `import geoseg` is cheap, every exported name resolves, and the
examples in geoseg's docstring and in docs/api.md run as written (on a sample tile)."""

import doctest
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import geoseg

ROOT = Path(__file__).resolve().parents[1]


def test_import_geoseg_loads_nothing_heavy():
    code = ("import sys, geoseg; before = set(sys.modules); geoseg.RunOptions; "
            "heavy = ('torch', 'numpy', 'rasterio', 'geopandas', 'geoseg.run.pipeline'); "
            "import json; print(json.dumps([sorted(m for m in before if m in heavy), "
            "sorted(m for m in set(sys.modules) - before if m.startswith('geoseg'))]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [[], ["geoseg.errors", "geoseg.options"]]


def test_every_exported_name_resolves():
    for name in geoseg.__all__:
        assert getattr(geoseg, name) is not None
    assert geoseg.segment.__module__ == "geoseg.run.pipeline" and geoseg.InputError.exit_code == 2
    with pytest.raises(AttributeError, match="no attribute 'segmnet'"):
        geoseg.segmnet  # noqa: B018


@pytest.fixture
def in_sample_dir(tmp_path, monkeypatch):
    """A scratch working directory that sees sample_tiles/ as the repository root does."""
    (tmp_path / "sample_tiles").symlink_to(ROOT / "sample_tiles")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_package_docstring_examples_run(in_sample_dir):
    result = doctest.testmod(geoseg, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 5 and result.failed == 0


def test_docs_api_examples_run(in_sample_dir, capsys):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "api.md").read_text(), re.S)
    assert len(blocks) >= 5
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/api.md", "exec"), namespace)  # noqa: S102 - our own documentation
    printed = capsys.readouterr().out
    assert "20m2 auto" in printed and "must be at most 1" in printed and "ok [('buildings'" in printed
    assert (in_sample_dir / "buildings_strict.gpkg").exists() and (in_sample_dir / "nature.gpkg").exists()
