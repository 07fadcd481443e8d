"""Run the geoseg command-line tool as a child process: find it, follow it, stop it.

Plain Python (no QGIS import), so that it is tested without QGIS. The algorithms hand it a
command and four callbacks (progress, info, warning, is-cancelled); it returns what geoseg said.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

ENV_VAR = "GEOSEG_EXECUTABLE"
SETTING = "GEOSEG_EXECUTABLE"  # Processing > Options > Providers > geoseg
# tqdm: "town.tif:  48%|████▊     | 12/25 [00:00<00:00, 15.41tile/s]"
PROGRESS = re.compile(r"^\s*(?:(?P<desc>.*?):\s*)?(?P<pct>\d{1,3})%\|")
ERROR = re.compile(r"^(?:geoseg:\s*error:|Error:)\s*(?P<msg>.*)$", re.IGNORECASE)
WARNING = re.compile(r"^geoseg:\s*warning:\s*(?P<msg>.*)$", re.IGNORECASE)
# Variables QGIS sets for its own Python/GDAL/PROJ; geoseg's environment brings its own.
QGIS_ONLY_ENV = ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONUSERBASE", "GDAL_DRIVER_PATH",
                 "GDAL_DATA", "PROJ_LIB", "PROJ_DATA", "QT_PLUGIN_PATH")


class GeosegNotFound(Exception):
    """No geoseg executable where the plugin looked."""


def find_executable(parameter: str = "", setting: str = "", environ: dict[str, str] | None = None) -> str:
    """The geoseg to run: the first of the algorithm's parameter, the provider setting and
    $GEOSEG_EXECUTABLE that is set (it must exist), else `geoseg` on PATH."""
    environ = os.environ if environ is None else environ
    given = (("the algorithm's 'geoseg executable' parameter", parameter),
             ("Processing > Options > Providers > geoseg", setting),
             (f"${ENV_VAR}", environ.get(ENV_VAR, "")))
    for origin, value in given:
        value = os.path.expanduser((value or "").strip().strip('"'))
        if value:
            found = shutil.which(value, path=environ.get("PATH"))
            if found is None:
                raise GeosegNotFound(f"geoseg not found: {value!r} (from {origin}) is not an executable; "
                                     "give the full path of geoseg, e.g. ~/venvs/geoseg/bin/geoseg")
            return found
    found = shutil.which("geoseg", path=environ.get("PATH"))
    if found is None:
        raise GeosegNotFound(
            "geoseg not found on PATH: install geoseg in its own environment and give the full path of its "
            "executable (e.g. ~/venvs/geoseg/bin/geoseg) in Processing > Options > Providers > geoseg, "
            f"or set {ENV_VAR}")
    return found


def child_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """QGIS's environment without what points at QGIS's own Python, GDAL and PROJ."""
    environ = dict(os.environ if environ is None else environ)
    for key in QGIS_ONLY_ENV:
        environ.pop(key, None)
    environ["PYTHONIOENCODING"] = "utf-8"
    environ["PYTHONUNBUFFERED"] = "1"
    return environ


class ProgressMap:
    """tqdm percentages -> one monotonic 0-100 bar.

    geoseg draws a bar per scene (tiles) and, when it re-vectorises, a "vectorise" bar (blocks).
    With ``tail`` set, the tile bars fill 0..tail and the vectorise bars tail..100.
    """

    def __init__(self, tail: float | None = None):
        self.tail = tail
        self.value = 0.0

    def update(self, desc: str, percent: float) -> float | None:
        percent = min(max(percent, 0.0), 100.0)
        if self.tail is None:
            mapped = percent
        elif (desc or "").strip().lower().startswith("vectoris"):
            mapped = self.tail + (100 - self.tail) * percent / 100
        else:
            mapped = self.tail * percent / 100
        if mapped <= self.value:
            return None
        self.value = mapped
        return mapped


@dataclass
class Outcome:
    returncode: int
    stdout: str
    error: str = ""                      # geoseg's one-line error, when it printed one
    tail: list[str] = field(default_factory=list)  # its last other lines on stderr
    canceled: bool = False

    def message(self) -> str:
        """One line for the Processing log."""
        if self.error:
            return self.error
        if self.tail:
            return self.tail[-1]
        return f"geoseg exited with code {self.returncode} and printed no message"


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop geoseg with SIGTERM, which it handles as Ctrl-C (it removes its temporary files, writes
    nothing); then kill. Not SIGINT: a QGIS started as a background job of a script ignores
    SIGINT, and its children inherit that."""
    if proc.poll() is not None:
        return
    try:
        proc.terminate()
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    except OSError:
        pass


def _split_lines(stream, sink: queue.Queue[str | None]) -> None:
    """stderr -> lines, splitting on \\r too (tqdm redraws its bar with \\r)."""
    buffer = b""
    try:
        while True:
            chunk = stream.read1(4096) if hasattr(stream, "read1") else stream.read(1)
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = re.split(rb"[\r\n]", buffer)
            for line in lines:
                sink.put(line.decode("utf-8", "replace"))
        if buffer:
            sink.put(buffer.decode("utf-8", "replace"))
    finally:
        sink.put(None)


def run(command: list[str], *, progress: Callable[[float], None], info: Callable[[str], None],
        warning: Callable[[str], None], canceled: Callable[[], bool], tail: float | None = None,
        env: dict[str, str] | None = None, poll: float = 0.1) -> Outcome:
    """Run geoseg; its stderr drives the callbacks; checks ``canceled()`` every ``poll`` seconds."""
    flags = getattr(subprocess, "CREATE_NO_WINDOW", 0) if os.name == "nt" else 0
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=child_environment() if env is None else env, creationflags=flags)
    lines: queue.Queue[str | None] = queue.Queue()
    stdout: list[bytes] = []
    readers = [threading.Thread(target=_split_lines, args=(proc.stderr, lines), daemon=True),
               threading.Thread(target=lambda: stdout.append(proc.stdout.read()), daemon=True)]
    for reader in readers:
        reader.start()
    bar = ProgressMap(tail)
    outcome = Outcome(returncode=0, stdout="")
    while True:
        try:
            line = lines.get(timeout=poll)
        except queue.Empty:
            line = ""
        if canceled():
            outcome.canceled = True
            stop(proc)
            break
        if line is None:
            break
        text = line.strip()
        if not text:
            continue
        match = PROGRESS.match(text)
        if match:
            value = bar.update(match.group("desc") or "", float(match.group("pct")))
            if value is not None:
                progress(value)
            continue
        match = ERROR.match(text)
        if match:
            outcome.error = match.group("msg").strip()
            continue
        match = WARNING.match(text)
        if match:
            warning(match.group("msg").strip())
            continue
        info(text)
        outcome.tail = (outcome.tail + [text])[-20:]
    outcome.returncode = proc.wait()
    for reader in readers:
        reader.join(timeout=5)
    for stream in (proc.stdout, proc.stderr):
        stream.close()
    outcome.stdout = b"".join(stdout).decode("utf-8", "replace")
    return outcome
