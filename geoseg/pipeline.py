"""segment / change / vectorize: the whole flow, one screen per command.

    inputs -> raster.open_* (validate, align, global stats) -> tiling.plan_tiles
           -> tiling.read_tiles (threads) -> Segmenter.predict (batched) -> stitch.RollingBlender
           -> probability rasters on disk -> vectorize.vectorize_probabilities (block-wise)
           -> gpkg.write_geopackage (atomic, provenance, QGIS style)

Everything heavy happens before anything is written next to the user's files; the outputs are
committed at the end (GeoPackage atomically, COGs by rename), so a failure or Ctrl-C leaves the
previous outputs untouched and no partial file behind.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import geopandas as gpd
import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from tqdm import tqdm

from geoseg import provenance, raster, stitch, tiling, vectorize
from geoseg.grounding import answer_scene
from geoseg.models.base import (
    ChangeAware,
    Generative,
    Grounded,
    ProvenanceSource,
    Segmenter,
    TorchBacked,
)
from geoseg.models.registry import default_model, load_segmenter
from geoseg.options import RunOptions
from geoseg.outputs import (
    RunSummary,
    check_outputs,
    commit_outputs,
    concat,
    finish,
    input_record,
    input_record_path,
    layer_for,
    merge_scenes,
    vector_options,
    with_fields,
    work_directory,
)
from geoseg.queries import change_direction, validate_queries

log = logging.getLogger("geoseg")

DEFAULT_CPU_BATCH = 4


@dataclass(frozen=True)
class Channel:
    """One probability raster the inference produces: a query, and in change mode a direction;
    for a generative model one per target its answer names (`target` indexes Prediction.targets)."""

    query_index: int
    change_type: str | None = None  # appeared | disappeared (change mode only)
    target: int | None = None  # index of the named target in the query's answer
    phrase: str | None = None  # that target's phrase -> the polygons' `target` field

    def file_stem(self) -> str:
        return f"q{self.query_index}" + (f"_t{self.target}" if self.target is not None else "")


class TileJournal(Protocol):
    """Per-scene resume hooks: the pipeline reports what became durable, the journal gives back
    what an interrupted run left (geoseg.resume implements it; a plain run has none)."""

    def finished(self) -> bool: ...  # the scene's probability rasters are complete
    def blender_state(self) -> stitch.BlenderState | None: ...
    def replay(self, blender: stitch.RollingBlender, plan: tiling.TilePlan) -> int: ...  # -> first tile to read
    def batch_predicted(self, batch: Sequence[tiling.TileData], probabilities: np.ndarray) -> None: ...
    def rows_flushed(self, blender: stitch.RollingBlender, next_tile: tiling.Tile) -> None: ...
    def scene_finished(self) -> None: ...


class Checkpoints(Protocol):
    """A resumable run: a persistent work directory and a journal per scene."""

    workdir: Path

    def journal(self, scene_index: int) -> TileJournal: ...


class NullJournal:
    """No resume: nothing recorded, nothing to replay."""

    def finished(self) -> bool:
        return False

    def blender_state(self) -> None:
        return None

    def replay(self, blender: stitch.RollingBlender, plan: tiling.TilePlan) -> int:
        return 0

    def batch_predicted(self, batch, probabilities) -> None:
        pass

    def rows_flushed(self, blender, next_tile) -> None:
        pass

    def scene_finished(self) -> None:
        pass


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
    continue."""
    opts = options or RunOptions()
    started = time.perf_counter()
    queries = validate_queries(queries)
    output = Path(output)
    check_outputs(output, opts, n_scenes=len(scenes), n_queries=len(queries))
    for path in scenes:  # every input is validated before the (possibly large) model loads
        if not isinstance(path, raster.Scene):
            raster.open_input(path, bands=opts.bands, nodata=opts.nodata, pixel_coords=opts.pixel_coords)
    model = segmenter or load_model("segment", opts)
    opened = [s if isinstance(s, raster.Scene) else open_scene(s, model, opts) for s in scenes]
    run_id = provenance.new_run_id()
    summary = RunSummary("segment", str(output), run_id, model.info.name)
    per_query: list[list[gpd.GeoDataFrame]] = [[] for _ in queries]
    answers: list[list[dict]] = [[] for _ in queries]  # generative models: per scene, per query
    plans = [plan_for(scene, model, opts) for scene in opened]
    first_raster = None
    with work_directory(output, checkpoints) as tmp:
        for n, scene in enumerate(opened):
            scene_model, channels = channels_for(model, scene, queries)
            prob_paths = [Path(tmp) / f"scene{n}_{c.file_stem()}.tif" for c in channels]
            first_raster = first_raster or prob_paths[0]
            journal = checkpoints.journal(n) if checkpoints else None
            infer_scene(scene, scene_model, queries, channels, plans[n], prob_paths, opts, summary, journal)
            for c, path in zip(channels, prob_paths, strict=True):
                gdf = vectorize.vectorize_probabilities(path, vector_options(opts), progress=False)
                per_query[c.query_index].append(with_fields(
                    gdf, query=queries[c.query_index], model=(model.info.name, model.info.version), run_id=run_id,
                    source=str(scene.paths[0]), target=c.phrase,
                ))
            if isinstance(scene_model, ProvenanceSource):
                for qi in range(len(queries)):
                    answers[qi].append(scene_model.provenance(qi))
        inputs = {str(s.paths[0]): input_record(s) for s in opened}  # each file hashed once per run
        layers = []
        for qi, query in enumerate(queries):
            gdf = merge_scenes(per_query[qi], opts.dst_crs)
            record = provenance.run_record(
                run_id=run_id, command="segment", query=query, inputs=inputs,
                model=model.info.to_dict(), parameters=opts.record(),
                scene={"plans": [p.summary() for p in plans], "stats": [s.stats.to_dict() for s in opened]},
                extra=answers[qi][0] if len(answers[qi]) == 1 else ({"answers": answers[qi]} if answers[qi] else None),
            )
            layers.append(layer_for(query, gdf, record, opts.layer, None))
        commit_outputs(output, layers, opts, [first_raster], summary)
    return finish(summary, started)


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
    """Find the queried change between two dates; `change_type` says appeared or disappeared."""
    opts = options or RunOptions()
    started = time.perf_counter()
    queries = validate_queries(queries)
    output = Path(output)
    check_outputs(output, opts, n_scenes=1, n_queries=len(queries))
    # The pair is validated (and its statistics computed) before the (possibly large) model loads.
    scene = open_pair(before, after, opts, segmenter.info.bands if segmenter else None)
    model = segmenter or load_model("change", opts)
    scene = fit_to_model(scene, model, opts, lambda: open_pair(before, after, opts, model.info.bands))
    # A partial overlap is worth a warning: change outside it cannot be seen.
    log.log(logging.INFO if scene.overlap_fraction > 0.999 else logging.WARNING,
            "the dates overlap on %.1f%% of the reference grid", 100 * scene.overlap_fraction)
    run_id = provenance.new_run_id()
    summary = RunSummary("change", str(output), run_id, model.info.name, overlap_fraction=scene.overlap_fraction)
    channels = [
        Channel(qi, kind)
        for qi, q in enumerate(queries)
        for kind in (("appeared", "disappeared") if change_direction(q) == "both" else (change_direction(q),))
    ]
    with work_directory(output, checkpoints) as tmp:
        prob_paths = [Path(tmp) / f"q{c.query_index}_{c.change_type}.tif" for c in channels]
        plan = plan_for(scene, model, opts)
        journal = checkpoints.journal(0) if checkpoints else None
        infer_scene(scene, model, queries, channels, plan, prob_paths, opts, summary, journal)
        before_path, after_path = (str(p) for p in scene.paths)
        inputs = {p: input_record_path(p) for p in (before_path, after_path)}  # each file hashed once per run
        layers = []
        for qi, query in enumerate(queries):
            parts = []
            for c, path in zip(channels, prob_paths, strict=True):
                if c.query_index != qi:
                    continue
                gdf = vectorize.vectorize_probabilities(path, vector_options(opts), progress=False)
                gdf = with_fields(gdf, query=query, model=(model.info.name, model.info.version), run_id=run_id,
                                  source=after_path)
                gdf["before"], gdf["after"], gdf["change_type"] = before_path, after_path, c.change_type
                parts.append(gdf)
            record = provenance.run_record(
                run_id=run_id, command="change", query=query, inputs=inputs,
                model=model.info.to_dict(), parameters=opts.record(),
                scene={"plan": plan.summary(), "stats": scene.stats.to_dict(),
                       "overlap_fraction": scene.overlap_fraction, "align_to": opts.align_to,
                       "direction": change_direction(query)},
            )
            layers.append(layer_for(query, concat(parts), record, opts.layer, change_direction(query)))
        commit_outputs(output, layers, opts, prob_paths[:1], summary)
    return finish(summary, started)


def dry_run(
    scenes: Sequence[str | Path], options: RunOptions | None = None, *, pair: bool = False,
    segmenter: Segmenter | None = None,
) -> dict:
    """The tile plan and a memory estimate, without running the model."""
    opts = options or RunOptions()
    model = segmenter or load_model("change" if pair else "segment", opts)
    opened = [open_pair(scenes[0], scenes[1], opts, model.info.bands)] if pair else [open_scene(p, model, opts) for p in scenes]
    out = []
    for scene in opened:
        plan = plan_for(scene, model, opts)
        batch = batch_size_for(model, opts)
        blender_bytes = 2 * 4 * plan.tile_size * scene.grid.width  # one channel + weight sum
        batch_bytes = len(scene.inputs) * batch * model.info.bands * plan.tile_size**2 * 4
        out.append({
            "inputs": [str(p) for p in scene.paths],
            "width": scene.grid.width, "height": scene.grid.height,
            "crs": scene.grid.crs.to_string() if scene.grid.crs else None,
            **plan.summary(), "batch_size": batch, "batches": -(-len(plan.tiles) // batch),
            "memory_estimate_mb": {
                "blend_window_per_query": round(blender_bytes / 2**20, 1),
                "input_batch": round(batch_bytes / 2**20, 1),
                "model_parameters": parameter_megabytes(model),
            },
            "overlap_fraction": scene.overlap_fraction if pair else None,
        })
    return {"model": model.info.name, "device": str(model.device), "scenes": out}


# ---------------------------------------------------------------- steps


def load_model(command: str, opts: RunOptions) -> Segmenter:
    """--model, or the registry's default for `command`."""
    return load_segmenter(opts.model or default_model(command), device=opts.device, allow_pickle=opts.allow_pickle)


def open_scene(path: str | Path, model: Segmenter, opts: RunOptions) -> raster.Scene:
    return raster.open_scene(path, bands=opts.bands, nodata=opts.nodata, pixel_coords=opts.pixel_coords,
                             model_bands=model.info.bands)


def open_pair(before: str | Path, after: str | Path, opts: RunOptions, model_bands: int | None) -> raster.Scene:
    """The aligned pair; `model_bands` None (no model loaded yet): raster's default band count."""
    fit = {} if model_bands is None else {"model_bands": model_bands}
    return raster.open_pair(before, after, bands=opts.bands, nodata=opts.nodata, align_to=opts.align_to,
                            resampling=opts.resampling, **fit)


def fit_to_model(scene: raster.Scene, model: Segmenter, opts: RunOptions,
                 reopen: Callable[[], raster.Scene]) -> raster.Scene:
    """A scene opened before its model loaded, made to fit the model without recomputing its
    statistics unless the bands read change: only a model of another band count, with the bands
    left to the default (-b not given), reads other bands and needs the scene opened again."""
    if scene.model_bands == model.info.bands:
        return scene
    if opts.bands:
        return replace(scene, model_bands=model.info.bands)
    return reopen()


def channels_for(model: Segmenter, scene: raster.Scene, queries: Sequence[str]) -> tuple[Segmenter, list[Channel]]:
    """One channel per query; a generative model first answers each query once for the scene and
    then gets one channel per target its answer names (geoseg.grounding). A query whose answer
    names nothing keeps one (empty) channel, so its layer exists and says "found nothing"."""
    if isinstance(model, Generative):
        model = answer_scene(model, scene, queries)
    if not isinstance(model, Grounded):
        return model, [Channel(i) for i in range(len(queries))]
    channels = []
    for qi, answer in enumerate(model.answers):
        named = [Channel(qi, target=t, phrase=p) for t, p in enumerate(answer.phrases)]
        channels.extend(named or [Channel(qi)])
    return model, channels


def plan_for(scene: raster.Scene, model: Segmenter, opts: RunOptions) -> tiling.TilePlan:
    tile = opts.tile_size or model.info.tile_size
    overlap = model.info.overlap if opts.overlap is None else opts.overlap
    overlap = min(overlap, tile // 2)
    return tiling.plan_tiles(scene.grid.height, scene.grid.width, tile, overlap)


def batch_size_for(model: Segmenter, opts: RunOptions) -> int:
    if opts.batch_size:
        return opts.batch_size
    if model.device.type != "cuda":
        return DEFAULT_CPU_BATCH
    free, _ = torch.cuda.mem_get_info(model.device)
    per_tile = model.info.extra.get("bytes_per_tile", 1 << 30)
    return int(max(1, min(16, free * 0.7 // per_tile)))


def infer_scene(
    scene: raster.Scene,
    model: Segmenter,
    queries: Sequence[str],
    channels: Sequence[Channel],
    plan: tiling.TilePlan,
    prob_paths: Sequence[Path],
    opts: RunOptions,
    summary: RunSummary,
    journal: TileJournal | None = None,
) -> None:
    """Run the model over every tile and blend the results into one probability raster per channel."""
    journal = journal or NullJournal()
    if not journal.finished():
        blend_tiles(scene, model, queries, channels, plan, prob_paths, opts, summary, journal)
    summary.tiles += len(plan.tiles)
    for path, c in zip(prob_paths, channels, strict=True):
        with rasterio.open(path, "r+") as dst:
            dst.update_tags(
                geoseg_query=queries[c.query_index], geoseg_model=model.info.name,
                geoseg_model_version=model.info.version, geoseg_run_id=summary.run_id,
                geoseg_change_type=c.change_type or "",
            )
    journal.scene_finished()


def blend_tiles(scene, model, queries, channels, plan, prob_paths, opts, summary, journal: TileJournal) -> None:
    """Predict tiles in batches and blend them, continuing after the tiles the journal replays."""
    batch_size = batch_size_for(model, opts)
    blender = stitch.RollingBlender(scene.grid, list(prob_paths), plan.tile_size, plan.overlap, opts.blend,
                                    state=journal.blender_state(), on_rows_flushed=journal.rows_flushed)
    with ExitStack() as stack:
        stack.callback(blender.close)
        start = journal.replay(blender, plan)
        bar = stack.enter_context(tqdm(total=len(plan.tiles), initial=start, unit="tile", disable=not opts.progress,
                                       desc=scene.paths[-1].name, leave=False))
        batch: list[tiling.TileData] = []
        for data in tiling.read_tiles(scene, replace(plan, tiles=plan.tiles[start:]), workers=opts.workers):
            if data.empty:
                summary.tiles_skipped_nodata += 1
                _flush_batch(batch, model, queries, channels, plan, blender, opts, journal)
                batch = []
                blender.add(data.tile, None, data.valid)
            else:
                batch.append(data)
                if len(batch) == batch_size:
                    _flush_batch(batch, model, queries, channels, plan, blender, opts, journal)
                    batch = []
            bar.update(1)
        _flush_batch(batch, model, queries, channels, plan, blender, opts, journal)


def _flush_batch(batch, model, queries, channels, plan, blender, opts, journal: TileJournal) -> None:
    """Predict a batch of tiles and hand each tile's channel probabilities to the blender."""
    if not batch:
        return
    probs = predict_channels(model, batch, queries, channels, plan.tile_size, opts.dilate_px)
    journal.batch_predicted(batch, probs)  # recorded before blending: a checkpoint never runs ahead of it
    for data, p in zip(batch, probs, strict=True):
        h, w = data.tile.height, data.tile.width
        blender.add(data.tile, p[:, :h, :w], data.valid)


def predict_channels(
    model: Segmenter,
    batch: Sequence[tiling.TileData],
    queries: Sequence[str],
    channels: Sequence[Channel],
    tile_size: int,
    dilate_px: int,
) -> np.ndarray:
    """B x channels x T x T probabilities for a batch (tiles zero-padded to the model size)."""
    dates = len(batch[0].arrays)
    stacked = [
        torch.from_numpy(np.stack([tiling.pad_to(d.arrays[i], tile_size) for d in batch])).to(model.device)
        for i in range(dates)
    ]
    if dates == 1:
        pred = model.predict(stacked[0], queries)
        if all(c.target is None for c in channels):
            return pred.probabilities.float().cpu().numpy()
        # Named targets of a generative answer: each is its own channel.
        per_tile = [
            torch.stack([
                pred.targets[b][c.query_index][c.target].probabilities if c.target is not None
                else pred.probabilities[b, c.query_index]
                for c in channels
            ])
            for b in range(len(batch))
        ]
        return torch.stack(per_tile).float().cpu().numpy()
    before, after = stacked
    if model.info.change_native:
        # A change-native model reads the direction from the query itself.
        p = model.predict(after, queries, before=before).probabilities.float()
        return torch.stack([p[:, c.query_index] for c in channels], dim=1).cpu().numpy()
    if isinstance(model, ChangeAware):
        # The model combines the dates itself (e.g. with a feature-change test against
        # misregistration and lighting); one call per direction present in the channels.
        by_direction = {
            kind: model.predict_change(after, before, queries, direction=kind).probabilities.float()
            for kind in {c.change_type for c in channels}
        }
        return torch.stack([by_direction[c.change_type][:, c.query_index] for c in channels], dim=1).cpu().numpy()
    # A single-date model: segment both dates (each image encoded once for all queries), then
    # appeared = after AND NOT dilate(before), disappeared = before AND NOT dilate(after).
    p_before = model.predict(before, queries).probabilities.float()
    p_after = model.predict(after, queries).probabilities.float()
    out = []
    for c in channels:
        a, b = p_after[:, c.query_index], p_before[:, c.query_index]
        if c.change_type == "disappeared":
            a, b = b, a
        out.append(a * (1 - dilate(b, dilate_px)))
    return torch.stack(out, dim=1).cpu().numpy()


def dilate(prob: torch.Tensor, radius: int) -> torch.Tensor:
    """Grey dilation (max filter) that forgives a misregistration of `radius` pixels."""
    if radius <= 0:
        return prob
    return F.max_pool2d(prob[:, None], 2 * radius + 1, stride=1, padding=radius)[:, 0]


def parameter_megabytes(model: Segmenter) -> float:
    """Memory of the model's weights; 0 for a model that keeps none in torch (a test double)."""
    if not isinstance(model, TorchBacked):
        return 0.0
    return round(sum(p.numel() * p.element_size() for p in model.model.parameters()) / 2**20, 1)
