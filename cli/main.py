"""The `geoseg` command group: logging, error reporting and exit codes live here only."""

from __future__ import annotations

import ctypes
import logging
import os
import sys

import click

import geoseg
from geoseg.errors import GeosegError

from .batch import batch_command
from .chat import chat_command
from .info import models_command
from .interrupt import Terminated, exit_code, stop_cleanly_on_sigterm
from .run import change_command, segment_command, vectorize_command
from .train import evaluate_command, train_command


class GeosegGroup(click.Group):
    """Turns library errors into one line on stderr and the documented exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except GeosegError as e:
            if ctx.obj and ctx.obj.get("verbose", 0) > 0:
                logging.getLogger("geoseg").exception("traceback")
            click.echo(f"geoseg: error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt as stop:
            if isinstance(stop, Terminated):
                click.echo("geoseg: terminated (SIGTERM); no output was written", err=True)
            else:
                click.echo("geoseg: interrupted; no output was written", err=True)
            ctx.exit(exit_code(stop))


@click.group(cls=GeosegGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(geoseg.__version__, prog_name="geoseg")
@click.option("-v", "--verbose", count=True, help="More logging on stderr (-vv for debug); tracebacks on errors.")
@click.option("-q", "--quiet", count=True, help="Less output on stderr: no progress bars, errors only.")
@click.option("--threads", type=click.IntRange(1), envvar="GEOSEG_THREADS",
              help="CPU threads for the model (default: every core this process may use; "
                   "OMP_NUM_THREADS is respected). Lower it on a machine busy with other work.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: int, threads: int | None) -> None:
    """Find things in GeoTIFFs from a text query and write them as GeoPackage polygons.

    \b
      geoseg segment scene.tif "damaged buildings" -o damage.gpkg
      geoseg change before.tif after.tif "new roads" -o roads.gpkg
      geoseg vectorize probs.tif --threshold 0.6 -o out.gpkg

    Encoded queries are kept in ~/.cache/geoseg (GEOSEG_CACHE_DIR moves it; GEOSEG_CACHE_DIR=off
    turns it off), so a question asked before starts without loading the text encoder.
    """
    ctx.ensure_object(dict)
    ctx.obj.update(verbose=verbose, quiet=quiet)
    handler = logging.StreamHandler(sys.stderr)  # stderr only: stdout is for machine-readable output
    handler.setFormatter(logging.Formatter("geoseg: %(levelname)s: %(message)s"))
    logger = logging.getLogger("geoseg")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(max(logging.DEBUG, logging.WARNING + 10 * (quiet - verbose)))
    set_model_threads(threads)
    keep_freed_memory()
    # GDAL's default block cache (5% of RAM) keeps every block it reads and undid the engine's
    # memory bound (docs/performance.md, tiled engine); the tiles are read once, so a small cache
    # costs nothing. GDAL reads this at its first block access; a user's own setting wins.
    os.environ.setdefault("GDAL_CACHEMAX", "256")


def set_model_threads(threads: int | None) -> None:
    """By default torch gets every core this process may use. The count depends on the machine
    only, so the same command runs at the same speed whatever ran a minute before (it used to
    follow the load average, and a second run right after a first got one thread). On a machine
    busy with other work, fewer threads can be faster (docs/performance.md): `--threads`.

    torch is not imported here (start-up and `--help` stay fast): before its import the count goes
    to OMP_NUM_THREADS, which torch reads when it starts."""
    if threads is None:
        if os.environ.get("OMP_NUM_THREADS"):
            return
        threads = machine_cores()
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    else:
        os.environ["OMP_NUM_THREADS"] = str(threads)


def main() -> None:
    """The `geoseg` console script: the command group, then a quick exit. Once torch is
    imported, Python's own teardown (about 1,100 modules' objects freed one by one) adds half a
    second of one busy core after the outputs are committed (docs/performance.md); with every
    file closed and the streams flushed there is nothing left for it to do. `cli` itself (tests,
    `python -m`, other programs) exits the ordinary way, and SIGTERM stops it as on Ctrl-C only
    here: a program that imports the library keeps its own signal handling."""
    stop_cleanly_on_sigterm()
    try:
        cli.main()
    except SystemExit as stop:
        code = stop.code
    else:
        code = 0
    if isinstance(code, str):  # click and sys.exit("message") print it and fail
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):  # the reader left (`| head`), or the stream is closed
            code = code or 1
    os._exit(code or 0)


def keep_freed_memory() -> None:
    """Let glibc keep freed memory for the next batch instead of returning it to the system.

    By default glibc maps every block over 128 KB on its own and unmaps it when freed, and trims
    the heap top: each batch's activation buffers (tens of MB) are then mapped and zeroed again.
    On the 16.8 MP town that was 3-5 s of system time and 10.5-13.5 s wall; with blocks up to
    32 MB (glibc's ceiling) kept in the heap and no trimming below 1 GB, 0.5-0.9 s and 8.4-9.6 s,
    for about 30 MB more peak memory (docs/performance.md). The two go together: without the
    first, the second alone turns off glibc's adaptive threshold and maps even more. Linux with
    glibc only; a user's own MALLOC_* settings win. The process is the CLI's own: the library
    leaves the allocator of a program that imports it alone."""
    if not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") for k in os.environ):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, ...)
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    if libc.mallopt(m_mmap_threshold, 32 << 20) == 1:
        libc.mallopt(m_trim_threshold, 1 << 30)


def machine_cores() -> int:
    """The cores this process may run on (its CPU affinity), not counting what else runs."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


cli.add_command(segment_command, "segment")
cli.add_command(change_command, "change")
cli.add_command(vectorize_command, "vectorize")
cli.add_command(models_command, "models")
cli.add_command(batch_command, "batch")
cli.add_command(chat_command, "chat")
cli.add_command(train_command, "train")
cli.add_command(evaluate_command, "evaluate")
