"""The tests' helper modules stand on their own: importing one never imports (and so never
collects the fixtures of, or runs the module code of) a test module."""

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
HELPERS = sorted(p for p in TESTS.glob("*.py") if not p.name.startswith("test_") and p.name != "conftest.py")


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("helper", HELPERS, ids=lambda p: p.name)
def test_helper_imports_no_test_module(helper):
    tests = sorted(n for n in imported_modules(helper) if n.startswith("test_") and (TESTS / f"{n}.py").exists())
    assert tests == [], f"{helper.name} imports test module(s) {tests}; move what it needs into a helper"
