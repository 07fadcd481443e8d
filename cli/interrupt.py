"""Stopping a run from outside: Ctrl-C (SIGINT) and SIGTERM end it the same clean way.

Every step that writes already undoes its work on KeyboardInterrupt (temporary files removed,
finished tiles kept for --resume). SIGTERM is what batch schedulers, `timeout`, `kill` and the QGIS
plugin's Cancel send; by default it ends Python on the spot, which can leave a temporary file beside
the output. Raising `Terminated`, a KeyboardInterrupt, from it takes the same clean path. SIGINT
alone is not enough for those callers: a shell that starts a background job without job control
makes the job ignore SIGINT, and geoseg must not undo that choice.
"""

from __future__ import annotations

import signal
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM reached geoseg; it stops as on Ctrl-C."""


def stop_cleanly_on_sigterm() -> None:
    """Make SIGTERM raise `Terminated` in the main thread (the console script's process only)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated

    signal.signal(signal.SIGTERM, handler)


def exit_code(interrupt: KeyboardInterrupt) -> int:
    """The shell's convention, 128 + the signal's number: 143 after SIGTERM, 130 after Ctrl-C."""
    return 128 + (signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT)


def what_stopped(interrupt: KeyboardInterrupt) -> str:
    """What stopped the run, in the words of the one-line message."""
    return "terminated (SIGTERM)" if isinstance(interrupt, Terminated) else "interrupted"
