"""Write a generated docs page, or with --check only tell whether it is stale (shared by the
docs/make_*.py generators; tests run them with --check)."""

from __future__ import annotations

import sys
from pathlib import Path


def write_or_check(out: Path, text: str, script: str, *, check: bool) -> int:
    if check:
        if not out.exists() or out.read_text() != text:
            print(f"{out} is stale: run .venv/bin/python docs/{script}", file=sys.stderr)
            return 1
        return 0
    out.write_text(text)
    print(f"written: {out}")
    return 0
