"""Atomic replacement of a directory (checkpoints): build beside it, then swap it in."""

from __future__ import annotations

import shutil
from pathlib import Path


def replace_directory(built: Path, directory: Path) -> Path:
    """Move the finished directory `built` to `directory`, replacing what was there.

    The old directory is renamed aside first and removed only after the swap, so a crash leaves
    either the old or the new checkpoint in place, never half of one."""
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    built.rename(directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory
