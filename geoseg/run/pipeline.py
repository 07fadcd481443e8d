"""segment / change / vectorize / dry-run: each command a short script over one shared run.

    inputs -> raster.open_* (validate, align, global stats) -> load the model
           -> run: per scene engine.channels_for -> engine.infer_scene (tiles, predict, blend)
              -> probability rasters on disk, their rows also fed to vectorize.vectorize_rows
                 (block-wise, in a thread per channel while the inference goes on)
              -> one layer per query with its provenance -> outputs.commit_outputs (atomic)

`segment` and `change` differ only in how they open their inputs (one scene each, or an aligned
pair) and load their default model; `run` does the rest for both. `geoseg vectorize` runs no model
and lives in the torch-free geoseg.run.revectorize.

Everything heavy happens before anything is written next to the user's files; the outputs are
committed at the end (GeoPackage atomically, COGs by rename), so a failure or Ctrl-C leaves the
previous outputs untouched and no partial file behind.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import geopandas as gpd

from geoseg import provenance, vectorize
from geoseg.errors import InputError
from geoseg.io import raster
from geoseg.io.gsd import GsdChoice
from geoseg.models.base import (
    EncodesQueries,
    KnowsConcepts,
    ProvenanceSource,
    Segmenter,
    capabilities,
)
from geoseg.models.registry import default_model, load_segmenter
from geoseg.options import RunOptions
from geoseg.queries import Query, parse_queries, validate_queries
from geoseg.run.engine import (
    Channel,
    Checkpoints,
    batch_size_for,
    channels_for,
    infer_scene,
    parameter_megabytes,
    plan_for,
)
from geoseg.run.outputs import (
    RunSummary,
    check_outputs,
    commit_outputs,
    finish,
    input_record,
    layer_for,
    merge_scenes,
    vector_options,
    with_fields,
    work_directory,
)
from geoseg.run.stitch import PROB_NODATA, PROB_SCALE
from geoseg.vectorize.rowfeed import FeedAbandoned, RowFeed

log = logging.getLogger("geoseg")


# ---------------------------------------------------------------- commands


def segment(
    scenes: Sequence[str | Path | raster.Scene],
    queries: Sequence[str],
    output: str | Path,
    options: RunOptions | None = None,
    *,
    segmenter: Segmenter | None = None,
    checkpoints: Checkpoints | None = None,
) -> RunSummary:
    """Segment one or more scenes for one or more queries into one GeoPackage (a layer per query).

    A scene already opened (a raster.Scene, e.g. a chat session's) is used as it is, statistics
    included. With `checkpoints` (geoseg.batch), work files persist and an interrupted run can
    continue. Example (docs/api.md):

        geoseg.segment(["sample_tiles/village_4326_1m.tif"], ["buildings"], "village.gpkg")
    """
    opts = options or RunOptions()
    started = time.perf_counter()
    parsed, output = parse_queries(queries, layer=opts.layer), Path(output)
    check_outputs(output, opts, n_scenes=len(scenes), n_queries=len(parsed))
    for path in scenes:  # every input is validated before the (possibly large) model loads
        if not isinstance(path, raster.Scene):
            raster.open_input(path, bands=opts.bands, nodata=opts.nodata, pixel_coords=opts.pixel_coords,
                              asset=opts.asset)
    model = segmenter or load_model("segment", opts)
    with queries_encoded_beside(model, parsed):
        opened = [s if isinstance(s, raster.Scene) else open_scene(s, model, opts) for s in scenes]
        return run("segment", opened, parsed, output, opts, model, checkpoints, started)


def change(
    before: str | Path,
    after: str | Path,
    queries: Sequence[str],
    output: str | Path,
    options: RunOptions | None = None,
    *,
    segmenter: Segmenter | None = None,
    checkpoints: Checkpoints | None = None,
) -> RunSummary:
    """Find the queried change between two dates; `change_type` says appeared or disappeared
    (changed: a model that cannot tell the directions apart; geoseg.models.change).

        geoseg.change("sample_tiles/pair_before.tif", "sample_tiles/pair_after.tif", ["new buildings"], "new.gpkg")
    """
    opts = options or RunOptions()
    started = time.perf_counter()
    parsed, output = parse_queries(queries, layer=opts.layer), Path(output)
    check_outputs(output, opts, n_scenes=1, n_queries=len(parsed))
    for path in (before, after):  # each input is validated before the (possibly large) model loads
        raster.open_input(path, bands=opts.bands, nodata=opts.nodata, asset=opts.asset)
    # Aligned and normalised once, after the model is known: its bands and ground resolution
    # range decide which bands are read and on which grid.
    model = segmenter or load_model("change", opts)
    with queries_encoded_beside(model, parsed):
        scene = open_pair(before, after, model, opts)
        # A partial overlap is worth a warning: change outside it cannot be seen.
        log.log(logging.INFO if scene.overlap_fraction > 0.999 else logging.WARNING,
                "the dates overlap on %.1f%% of the reference grid", 100 * scene.overlap_fraction)
        return run("change", [scene], parsed, output, opts, model, checkpoints, started)


def run(
    command: str,
    scenes: Sequence[raster.Scene],
    queries: list[Query],
    output: Path,
    opts: RunOptions,
    model: Segmenter,
    checkpoints: Checkpoints | None,
    started: float,
) -> RunSummary:
    """The flow segment and change share, after their inputs are open and the model loaded:
    every scene through the tile engine, each channel's probabilities vectorised, then one layer
    per query (all scenes merged) with its provenance, committed atomically."""
    pair = command == "change"
    summary = RunSummary(command, str(output), provenance.new_run_id(), model.info.name,
                         overlap_fraction=scenes[0].overlap_fraction if pair else None)
    queries = checked_queries(model, queries, opts, summary.warnings)
    summary.query_check = [q.knowledge.to_dict() for q in queries if q.knowledge is not None] or None
    texts = [q.text for q in queries]  # what the model is asked
    summary.warnings += [w for s in scenes if (w := gsd_warning(s)) is not None]
    plans = [plan_for(scene, model, opts) for scene in scenes]
    parts: list[list[gpd.GeoDataFrame]] = [[] for _ in queries]
    answers: list[list[dict]] = [[] for _ in queries]  # generative models: per query, per scene
    first_raster = None
    with ThreadPoolExecutor(1, thread_name_prefix="geoseg-hash") as hasher, \
            work_directory(output, checkpoints.workdir if checkpoints else None) as tmp:
        # Each input is hashed once per run, beside the inference (hashlib lets go of the GIL),
        # so reading a large scene for its sha256 overlaps the model instead of following it.
        hashed = {str(i.path): hasher.submit(input_record, i, opts.hash_inputs) for s in scenes for i in s.inputs}
        for n, scene in enumerate(scenes):
            scene_model, channels = channels_for(model, scene, texts, opts.dilate_px)
            prob_paths = [Path(tmp) / f"scene{n}_{c.file_stem()}.tif" for c in channels]
            first_raster = first_raster or prob_paths[0]
            journal = checkpoints.journal(n) if checkpoints else None
            with polygons_beside(scene, len(channels), opts) as (feeds, frames):
                infer_scene(scene, scene_model, texts, channels, plans[n], prob_paths, opts, summary, journal, feeds)
            for c, path, frame in zip(channels, prob_paths, frames, strict=True):
                parts[c.query_index].append(
                    channel_polygons(path, c, scene, texts, model, summary.run_id, opts, streamed(frame)))
            if isinstance(scene_model, ProvenanceSource):
                for qi in range(len(queries)):
                    answers[qi].append(scene_model.provenance(qi))
        inputs = {path: record.result() for path, record in hashed.items()}
        scene_record: dict[str, Any] = {"plans": [p.summary() for p in plans], "stats": [s.stats.to_dict() for s in scenes],
                        "gsd": [_gsd_of(s).to_dict() for s in scenes]}
        if pair:
            scene_record |= {"overlap_fraction": scenes[0].overlap_fraction, "align_to": opts.align_to}
        layers = []
        for qi, query in enumerate(queries):
            record = provenance.run_record(
                run_id=summary.run_id, command=command, query=query.text, inputs=inputs,
                model=model.info.to_dict() | {"capabilities": [c.__name__ for c in capabilities(model)]},
                parameters=opts.record(), scene=scene_record,
                extra=(answers[qi][0] if len(answers[qi]) == 1 else ({"answers": answers[qi]} if answers[qi] else {}))
                | ({"query_check": query.knowledge.to_dict()} if query.knowledge is not None else {}),
            )
            direction = written_direction({c.change_type for c in channels if c.query_index == qi}) if pair else None
            layers.append(layer_for(query, merge_scenes(parts[qi], opts.dst_crs), record, direction))
        assert first_raster is not None  # a run has at least one scene and one channel
        commit_outputs(output, layers, opts, [first_raster], summary)
    return finish(summary, started)


def _gsd_of(scene: raster.Scene) -> GsdChoice:
    assert scene.gsd is not None  # open_scene and open_pair always choose the read resolution
    return scene.gsd


def written_direction(change_types: set[str | None]) -> str | None:
    """What a change layer holds (its provenance's `change_direction`): appeared, disappeared,
    both (the two directions), or changed (a model that cannot tell them apart)."""
    return "both" if len(change_types) > 1 else next(iter(change_types))


def dry_run(
    scenes: Sequence[str | Path], options: RunOptions | None = None, *, pair: bool = False,
    segmenter: Segmenter | None = None, queries: Sequence[str] = (),
) -> dict:
    """The tile plan and a memory estimate, without running the model; with `queries`, also
    whether the model was trained on something close to each (None: it declares no concepts).
    Each scene's `gsd` says when it is read outside the model's range (`outside_model_range`)."""
    opts = options or RunOptions()
    model = segmenter or load_model("change" if pair else "segment", opts)
    knowledge = None
    if queries and isinstance(model, KnowsConcepts):  # reported, never refused: nothing runs
        knowledge = model.check_queries(validate_queries(queries))
        for k in knowledge:
            if not k.known:
                log.warning("%s", k.describe())
    opened = [open_pair(scenes[0], scenes[1], model, opts)] if pair else [open_scene(p, model, opts) for p in scenes]
    out = []
    for scene in opened:
        plan = plan_for(scene, model, opts)
        batch = batch_size_for(model, opts)
        blender_bytes = 2 * 4 * plan.tile_size * scene.grid.width  # one channel + weight sum
        feed_bytes = 2 * vectorize.STREAMED_BLOCK * scene.grid.width  # uint8 rows for the polygons: buffered + in use
        batch_bytes = len(scene.inputs) * batch * model.info.bands * plan.tile_size**2 * 4
        out.append({
            "inputs": [str(p) for p in scene.paths],
            "width": scene.grid.width, "height": scene.grid.height,
            "crs": scene.grid.crs.to_string() if scene.grid.crs else None,
            "gsd": _gsd_of(scene).to_dict(),  # width/height and the plan are on the grid read at this resolution
            **plan.summary(), "batch_size": batch, "batches": -(-len(plan.tiles) // batch),
            "memory_estimate_mb": {
                "blend_window_per_query": round(blender_bytes / 2**20, 1),
                "polygon_rows_per_query": round(feed_bytes / 2**20, 1),
                "input_batch": round(batch_bytes / 2**20, 1),
                "model_parameters": parameter_megabytes(model),
            },
            "overlap_fraction": scene.overlap_fraction if pair else None,
        })
    return {"model": model.info.name, "device": str(model.device), "scenes": out,
            "query_check": [k.to_dict() for k in knowledge] if knowledge is not None else None}


# ---------------------------------------------------------------- steps


def load_model(command: str, opts: RunOptions) -> Segmenter:
    """--model, or the registry's default for `command`."""
    return load_segmenter(opts.model or default_model(command), device=opts.device, allow_pickle=opts.allow_pickle)


@contextmanager
def queries_encoded_beside(model: Segmenter, queries: Sequence[Query]) -> Iterator[None]:
    """A model that can (EncodesQueries) encodes the queries in a thread while the caller opens the
    scene and reads its first tiles: a new query's text encoder loads on the other core. A failure
    there is left to `predict`, which meets it again in this thread and reports it."""
    if not isinstance(model, EncodesQueries):
        yield
        return

    def encode() -> None:
        try:
            model.encode_queries([q.text for q in queries])
        except Exception as e:  # reported by predict, in the caller's thread
            log.debug("encoding the queries ahead failed (%s)", e)

    worker = threading.Thread(target=encode, name="geoseg-queries", daemon=True)
    worker.start()
    try:
        yield
    finally:
        worker.join()


def open_scene(path: str | Path, model: Segmenter, opts: RunOptions) -> raster.Scene:
    """One scene read as the model needs it: its bands, at a resolution inside its range (--gsd).
    A scene read outside the range gets one WARNING line (gsd_warning)."""
    scene = raster.open_scene(path, bands=opts.bands, nodata=opts.nodata, pixel_coords=opts.pixel_coords,
                              model_bands=model.info.bands, gsd=opts.gsd, gsd_range=model.info.gsd_range,
                              asset=opts.asset)
    _warn_gsd(scene)
    return scene


def open_pair(before: str | Path, after: str | Path, model: Segmenter, opts: RunOptions) -> raster.Scene:
    """The two dates on one grid, read as the model needs them (see open_scene)."""
    scene = raster.open_pair(before, after, bands=opts.bands, nodata=opts.nodata, model_bands=model.info.bands,
                             align_to=opts.align_to, resampling=opts.resampling,
                             gsd=opts.gsd, gsd_range=model.info.gsd_range, asset=opts.asset)
    _warn_gsd(scene)
    return scene


def gsd_warning(scene: raster.Scene) -> str | None:
    """The scene's resolution warning (geoseg.io.gsd.GsdChoice.range_warning), if it is read outside
    the range its model was trained for."""
    return scene.gsd.range_warning(scene.paths[-1]) if scene.gsd is not None else None


def _warn_gsd(scene: raster.Scene) -> None:
    if (warning := gsd_warning(scene)) is not None:
        log.warning("%s", warning)


def checked_queries(model: Segmenter, queries: list[Query], opts: RunOptions,
                    warnings: list[str] | None = None) -> list[Query]:
    """The queries with what the model knows of each (KnowsConcepts: the concepts it was trained
    on), before any tile runs: one WARNING line per unknown query (added to `warnings`), or, with
    `--unknown-query error`, one InputError (exit code 2) for them all, before anything is written.
    A model that declares no concepts (an open-vocabulary model) is not checked."""
    if not isinstance(model, KnowsConcepts):
        return queries
    knowledge = model.check_queries([q.text for q in queries])
    unknown = [k for k in knowledge if not k.known]
    if unknown and opts.unknown_query == "error":
        names = ", ".join(f'"{k.query}"' for k in unknown)
        nearest = "; ".join(f'"{k.query}": ' + ", ".join(f"{n.concept} {n.similarity:.2f}" for n in k.nearest)
                            for k in unknown)
        raise InputError(f"query {names} is not a concept {unknown[0].model} was trained on (nearest: {nearest}; "
                         f"known from {unknown[0].min_similarity:.2f}); --unknown-query warn runs it anyway")
    for k in unknown:
        log.warning("%s", k.describe())
        if warnings is not None:
            warnings.append(k.describe())
    return [q.knowing(k) for q, k in zip(queries, knowledge, strict=True)]


@contextmanager
def polygons_beside(
    scene: raster.Scene, n_channels: int, opts: RunOptions
) -> Iterator[tuple[list[RowFeed], list[Future[gpd.GeoDataFrame]]]]:
    """Each channel's polygons built in a thread from the rows the blender writes (a RowFeed per
    channel), while the tiles below are still predicted: the vectorising no longer follows the
    inference. Rows the engine does not stream (a resumed scene) end as FeedAbandoned on leaving."""
    grid = scene.grid
    # One block row waits while the one before is polygonised: the feed holds about what the
    # blender does (uint8 rows against its float32 band of a tile's height).
    feeds = [RowFeed(grid.height, grid.width, max_rows=vectorize.STREAMED_BLOCK) for _ in range(n_channels)]
    with ThreadPoolExecutor(max(1, n_channels), thread_name_prefix="geoseg-vectorise") as pool:
        frames = [pool.submit(vectorize.vectorize_rows, feed, grid.transform, grid.crs, vector_options(opts),
                              scale=1 / PROB_SCALE, nodata=PROB_NODATA) for feed in feeds]
        try:
            yield feeds, frames
        finally:
            for feed in feeds:
                feed.end(abandoned=True)  # no-op for a feed the blender finished


def streamed(frame: Future[gpd.GeoDataFrame]) -> gpd.GeoDataFrame | None:
    """A channel's streamed polygons, or None when its rows were not streamed."""
    try:
        return frame.result()
    except FeedAbandoned:
        return None


def channel_polygons(path: Path, channel: Channel, scene: raster.Scene, queries: Sequence[str], model: Segmenter,
                     run_id: str, opts: RunOptions, polygons: gpd.GeoDataFrame | None = None) -> gpd.GeoDataFrame:
    """One channel's probability raster as polygons (`polygons` when they were built as its rows
    were written) with the fields of its layer; a change channel also names both dates and its
    change type."""
    gdf = polygons if polygons is not None else vectorize.vectorize_probabilities(path, vector_options(opts))
    gdf = with_fields(gdf, query=queries[channel.query_index], model=(model.info.name, model.info.version),
                      run_id=run_id, source=str(scene.paths[-1]), target=channel.phrase)
    if channel.change_type is not None:
        gdf["before"], gdf["after"], gdf["change_type"] = str(scene.paths[0]), str(scene.paths[-1]), channel.change_type
    return gdf
