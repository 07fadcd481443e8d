"""The tile engine every model run shares: which probability rasters a run produces (channels),
the tile plan and batch size, predicting batches of tiles and blending them into rasters on disk,
with the resume hooks of a batch job (journal).

    Scene + channels -> tiling.plan_tiles -> tiling.read_tiles (threads) -> Segmenter.predict
        (batched; change: ChangeAware.predict_change, one (query, direction) per channel)
        -> stitch.RollingBlender -> one raster per channel

The engine only calls and indexes: how a model tells the directions of a change (or that it
cannot) is the model's, or its adapter's in geoseg.models.change.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, cast

import numpy as np
import rasterio
import torch
from tqdm import tqdm

from geoseg.io import raster
from geoseg.models.base import ChangeAware, Generative, Grounded, Segmenter, TorchBacked
from geoseg.models.change import change_view
from geoseg.options import RunOptions
from geoseg.run import stitch, tiling
from geoseg.run.grounding import answer_scene
from geoseg.run.outputs import RunSummary
from geoseg.vectorize.rowfeed import RowFeed

DEFAULT_CPU_BATCH = 4


@dataclass(frozen=True)
class Channel:
    """One probability raster the inference produces: a query, and in change mode a direction;
    for a generative model one per target its answer names (`target` indexes Prediction.targets)."""

    query_index: int
    change_type: str | None = None  # appeared | disappeared | changed (change mode only; geoseg.models.change)
    target: int | None = None  # index of the named target in the query's answer
    phrase: str | None = None  # that target's phrase -> the polygons' `target` field

    def file_stem(self) -> str:
        return (f"q{self.query_index}" + (f"_t{self.target}" if self.target is not None else "")
                + (f"_{self.change_type}" if self.change_type else ""))


class TileJournal(Protocol):
    """Per-scene resume hooks: the pipeline reports what became durable, the journal gives back
    what an interrupted run left (geoseg.batch.resume implements it; a plain run has none)."""

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


def channels_for(model: Segmenter, scene: raster.Scene, queries: Sequence[str],
                 dilate_px: int = 2) -> tuple[Segmenter, list[Channel]]:
    """One channel per query; for a pair of dates the model's change view
    (geoseg.models.change.change_view) and one channel per change type the query gets from it: the
    direction its words name, else appeared and disappeared, or "changed" from a model that cannot
    tell them apart. A generative model first answers each query once for the scene and then gets
    one channel per target its answer names (geoseg.run.grounding). A query whose answer names nothing
    keeps one (empty) channel, so its layer exists and says "found nothing"."""
    if len(scene.inputs) == 2:
        view = change_view(model, dilate_px)
        return view, [Channel(qi, kind) for qi, q in enumerate(queries) for kind in view.change_types(q)]
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
    row_feeds: Sequence[RowFeed] | None = None,
) -> None:
    """Run the model over every tile and blend the results into one probability raster per channel.

    `row_feeds` (one per channel) get each raster's rows as they are written, when all of them are
    written in this call: not for a scene the journal has finished or resumes part-way."""
    journal = journal or NullJournal()
    if not journal.finished():
        blend_tiles(scene, model, queries, channels, plan, prob_paths, opts, summary, journal, row_feeds)
    summary.tiles += len(plan.tiles)
    for path, c in zip(prob_paths, channels, strict=True):
        with rasterio.open(path, "r+") as dst:
            dst.update_tags(
                geoseg_query=queries[c.query_index], geoseg_model=model.info.name,
                geoseg_model_version=model.info.version, geoseg_run_id=summary.run_id,
                geoseg_change_type=c.change_type or "",
            )
    journal.scene_finished()


def blend_tiles(scene, model, queries, channels, plan, prob_paths, opts, summary, journal: TileJournal,
                row_feeds: Sequence[RowFeed] | None = None) -> None:
    """Predict tiles in batches and blend them, continuing after the tiles the journal replays."""
    batch_size = batch_size_for(model, opts)
    state = journal.blender_state()
    blender = stitch.RollingBlender(scene.grid, list(prob_paths), plan.tile_size, plan.overlap, opts.blend,
                                    state=state, on_rows_flushed=journal.rows_flushed,
                                    feeds=row_feeds if state is None else None)  # resumed: rows above are on disk only
    with ExitStack() as stack:
        stack.callback(blender.close)
        start = journal.replay(blender, plan)
        bar = stack.enter_context(tqdm(total=len(plan.tiles), initial=start, unit="tile", disable=not opts.progress,
                                       desc=scene.inputs[-1].source.short_name, leave=False))
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
    probs = predict_channels(model, batch, queries, channels, plan.tile_size)
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
) -> np.ndarray:
    """B x channels x T x T probabilities for a batch (tiles zero-padded to the model size). For a
    pair of dates `model` is the change view channels_for gave: one call, a (query, direction) per
    channel."""
    dates = len(batch[0].arrays)
    stacked = [
        torch.from_numpy(np.stack([tiling.pad_to(d.arrays[i], tile_size) for d in batch])).to(model.device)
        for i in range(dates)
    ]
    if dates == 2:
        before, after = stacked
        directions = [c.change_type for c in channels if c.change_type is not None]
        assert len(directions) == len(channels)  # channels_for gives each channel of a pair its direction
        pred = cast(ChangeAware, model).predict_change(after, before, [queries[c.query_index] for c in channels],
                                                       direction=directions)
        return pred.probabilities.float().cpu().numpy()
    pred = model.predict(stacked[0], queries)
    if all(c.target is None for c in channels):
        return pred.probabilities.float().cpu().numpy()
    # Named targets of a generative answer: each is its own channel.
    targets = pred.targets
    assert targets is not None  # a channel names a target only for a generative model's answers
    per_tile = [
        torch.stack([
            targets[b][c.query_index][c.target].probabilities if c.target is not None
            else pred.probabilities[b, c.query_index]
            for c in channels
        ])
        for b in range(len(batch))
    ]
    return torch.stack(per_tile).float().cpu().numpy()


def parameter_megabytes(model: Segmenter) -> float:
    """Memory of the model's weights; 0 for a model that keeps none in torch (a test double)."""
    if not isinstance(model, TorchBacked):
        return 0.0
    return round(sum(p.numel() * p.element_size() for p in model.model.parameters()) / 2**20, 1)
