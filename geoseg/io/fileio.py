"""Atomic replacement of a directory (checkpoints): build beside it, then swap it in."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from geoseg.errors import InputError


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


def check_output_target(path: Path, *, overwrite: bool, append: bool, extension: str) -> None:
    """The checks every vector output shares before anything is built: --overwrite and --append
    exclusive, the directory there and writable, the path not a directory."""
    if overwrite and append:
        raise InputError(f"{path}: --overwrite and --append cannot be used together; pick one")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{path}: directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{path}: directory {parent} is not writable; choose another output path")
    if path.is_dir():
        raise InputError(f"{path} is a directory; give a {extension} file path")
