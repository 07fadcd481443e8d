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
import os
import re
import tempfile
import time
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import torch
import torch.nn.functional as F
from tqdm import tqdm

from geoseg import gpkg, provenance, raster, stitch, tiling, vectorize
from geoseg.errors import InputError, OutputExistsError
from geoseg.grounding import answer_scene
from geoseg.models.base import ChangeAware, Generative, Grounded, ProvenanceSource, Segmenter
from geoseg.models.registry import load_segmenter

log = logging.getLogger("geoseg")

MAX_QUERY_CHARS = 100_000
DEFAULT_CPU_BATCH = 4
APPEARED_WORDS = r"new|newly|built|constructed|appeared|appearing|added|emerging|expanded|flooded|flooding"
DISAPPEARED_WORDS = r"demolished|removed|destroyed|lost|cleared|disappeared|razed|torn|vanished|felled"


@dataclass
class RunOptions:
    """Everything a run can be told; the CLI fills it from its options."""

    model: str | None = None
    device: str = "auto"
    allow_pickle: bool = False
    bands: tuple[int, ...] | None = None
    nodata: float | None = None
    pixel_coords: bool = False
    gsd: str | float = "auto"  # auto | native | metres: the ground resolution to read at (geoseg.gsd)
    tile_size: int | None = None  # default: the model's native size
    overlap: int | None = None  # default: the model's declared overlap
    batch_size: int | None = None
    blend: str = "cosine"
    workers: int = 2
    threshold: float = 0.5
    min_area_px: int = 0
    min_area_m2: float = 0.0
    simplify: float = 0.0
    fill_holes: bool = False
    layer: str | None = None
    overwrite: bool = False
    append: bool = False
    probabilities: Path | None = None
    mask_out: Path | None = None
    align_to: str = "before"
    resampling: str = "bilinear"
    dst_crs: str | None = None
    dilate_px: int = 2  # change mode: tolerance for misregistration between dates
    progress: bool = True

    def vectorize_options(self) -> vectorize.VectorizeOptions:
        return vectorize.VectorizeOptions(
            threshold=self.threshold, min_area_px=self.min_area_px, min_area_m2=self.min_area_m2,
            fill_holes=self.fill_holes, simplify=self.simplify,
        )

    def record(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


@dataclass
class LayerSummary:
    name: str
    query: str
    features: int
    change_type: str | None = None


@dataclass
class RunSummary:
    command: str
    output: str
    run_id: str
    model: str
    layers: list[LayerSummary] = field(default_factory=list)
    tiles: int = 0
    tiles_skipped_nodata: int = 0
    seconds: float = 0.0
    overlap_fraction: float | None = None

    @property
    def status(self) -> str:
        return "ok" if any(layer.features for layer in self.layers) else "empty"

    def to_dict(self) -> dict:
        return {"status": self.status, **asdict(self)}


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
    scenes: Sequence[str | Path],
    queries: Sequence[str],
    output: str | Path,
    options: RunOptions | None = None,
    *,
    segmenter: Segmenter | None = None,
    checkpoints: Checkpoints | None = None,
) -> RunSummary:
    """Segment one or more scenes for one or more queries into one GeoPackage (a layer per query).

    With `checkpoints` (geoseg.batch), work files persist and an interrupted run can continue."""
    opts = options or RunOptions()
    started = time.perf_counter()
    queries = validate_queries(queries)
    output = Path(output)
    check_outputs(output, opts, n_scenes=len(scenes), n_queries=len(queries))
    for path in scenes:  # every input is validated before the (possibly large) model loads
        raster.open_input(path, bands=opts.bands, nodata=opts.nodata, pixel_coords=opts.pixel_coords)
    model = segmenter or load_segmenter(opts.model, device=opts.device, allow_pickle=opts.allow_pickle)
    opened = [open_scene(p, model, opts) for p in scenes]
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
                gdf = vectorize.vectorize_probabilities(path, opts.vectorize_options(), progress=False)
                per_query[c.query_index].append(
                    with_fields(gdf, query=queries[c.query_index], model=model, run_id=run_id,
                                source=str(scene.paths[0]), target=c.phrase)
                )
            if isinstance(scene_model, ProvenanceSource):
                for qi in range(len(queries)):
                    answers[qi].append(scene_model.provenance(qi))
        layers = []
        for qi, query in enumerate(queries):
            gdf = merge_scenes(per_query[qi], opts.dst_crs)
            record = provenance.run_record(
                run_id=run_id, command="segment", query=query,
                inputs={str(s.paths[0]): input_record(s) for s in opened},
                model=model.info.to_dict(), parameters=opts.record(),
                scene={"plans": [p.summary() for p in plans], "stats": [s.stats.to_dict() for s in opened],
                       "gsd": [s.gsd.to_dict() for s in opened]},
                extra=answers[qi][0] if len(answers[qi]) == 1 else ({"answers": answers[qi]} if answers[qi] else None),
            )
            layers.append(layer_for(query, gdf, record, opts.layer, None))
        commit_outputs(output, layers, opts, [first_raster], summary)
    return finish(summary, started, opts)


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
    raster.open_pair(before, after, bands=opts.bands, nodata=opts.nodata,
                     align_to=opts.align_to, resampling=opts.resampling)  # validate before loading
    model = segmenter or load_segmenter(opts.model or "compact-change", device=opts.device, allow_pickle=opts.allow_pickle)
    scene = open_pair(before, after, model, opts)
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
        layers = []
        for qi, query in enumerate(queries):
            parts = []
            for c, path in zip(channels, prob_paths, strict=True):
                if c.query_index != qi:
                    continue
                gdf = vectorize.vectorize_probabilities(path, opts.vectorize_options(), progress=False)
                gdf = with_fields(gdf, query=query, model=model, run_id=run_id, source=after_path)
                gdf["before"], gdf["after"], gdf["change_type"] = before_path, after_path, c.change_type
                parts.append(gdf)
            record = provenance.run_record(
                run_id=run_id, command="change", query=query,
                inputs={p: input_record_path(p) for p in (before_path, after_path)},
                model=model.info.to_dict(), parameters=opts.record(),
                scene={"plan": plan.summary(), "stats": scene.stats.to_dict(), "gsd": scene.gsd.to_dict(),
                       "overlap_fraction": scene.overlap_fraction, "align_to": opts.align_to,
                       "direction": change_direction(query)},
            )
            layers.append(layer_for(query, concat(parts), record, opts.layer, change_direction(query)))
        commit_outputs(output, layers, opts, prob_paths[:1], summary)
    return finish(summary, started, opts)


def vectorize_raster(
    probabilities: str | Path,
    output: str | Path,
    options: RunOptions | None = None,
    *,
    query: str | None = None,
) -> RunSummary:
    """Re-vectorise a saved probability raster (from --probabilities) without running a model."""
    opts = options or RunOptions()
    started = time.perf_counter()
    probabilities, output = Path(probabilities), Path(output)
    source = raster.open_input(probabilities, pixel_coords=opts.pixel_coords)  # validates the file
    check_outputs(output, opts, n_scenes=1, n_queries=1)
    with rasterio.open(probabilities) as src:
        tags = src.tags()
    query = validate_queries([query or tags.get("geoseg_query") or probabilities.stem])[0]
    run_id = provenance.new_run_id()
    summary = RunSummary("vectorize", str(output), run_id, tags.get("geoseg_model", "none"))
    gdf = vectorize.vectorize_probabilities(probabilities, opts.vectorize_options(), progress=opts.progress)
    gdf["query"], gdf["target"] = query, query
    gdf["model"], gdf["model_version"] = summary.model, tags.get("geoseg_model_version", "")
    gdf["run_id"], gdf["source"] = run_id, str(probabilities)
    record = provenance.run_record(
        run_id=run_id, command="vectorize", query=query,
        inputs={str(probabilities): input_record_path(probabilities)},
        model={"name": summary.model, "from_raster_tags": tags}, parameters=opts.record(),
        scene={"width": source.native.width, "height": source.native.height},
    )
    commit_outputs(output, [layer_for(query, gdf, record, opts.layer, None)], opts, [], summary)
    return finish(summary, started, opts)


def dry_run(
    scenes: Sequence[str | Path], options: RunOptions | None = None, *, pair: bool = False,
    segmenter: Segmenter | None = None,
) -> dict:
    """The tile plan and a memory estimate, without running the model."""
    opts = options or RunOptions()
    model = segmenter or load_segmenter(opts.model or ("compact-change" if pair else None), device=opts.device)
    opened = [open_pair(scenes[0], scenes[1], model, opts)] if pair else [open_scene(p, model, opts) for p in scenes]
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
            "gsd": scene.gsd.to_dict(),  # width/height and the plan are on the grid read at this resolution
            **plan.summary(), "batch_size": batch, "batches": -(-len(plan.tiles) // batch),
            "memory_estimate_mb": {
                "blend_window_per_query": round(blender_bytes / 2**20, 1),
                "input_batch": round(batch_bytes / 2**20, 1),
                "model_parameters": round(sum(p.numel() * p.element_size() for p in _parameters(model)) / 2**20, 1),
            },
            "overlap_fraction": scene.overlap_fraction if pair else None,
        })
    return {"model": model.info.name, "device": str(model.device), "scenes": out}


# ---------------------------------------------------------------- steps


def open_scene(path: str | Path, model: Segmenter, opts: RunOptions) -> raster.Scene:
    return raster.open_scene(path, bands=opts.bands, nodata=opts.nodata, pixel_coords=opts.pixel_coords,
                             model_bands=model.info.bands, gsd=opts.gsd, gsd_range=model.info.gsd_range)


def open_pair(before: str | Path, after: str | Path, model: Segmenter, opts: RunOptions) -> raster.Scene:
    return raster.open_pair(before, after, bands=opts.bands, nodata=opts.nodata, model_bands=model.info.bands,
                            align_to=opts.align_to, resampling=opts.resampling,
                            gsd=opts.gsd, gsd_range=model.info.gsd_range)


def validate_queries(queries: Iterable[str]) -> list[str]:
    """Queries are stored verbatim; only what no database or model can carry is refused."""
    out = []
    for q in queries:
        if not isinstance(q, str) or not q.strip():
            raise InputError("the query is empty; say what to find, e.g. \"buildings\"")
        if "\x00" in q:
            raise InputError("the query contains a NUL character; remove it")
        if len(q) > MAX_QUERY_CHARS:
            raise InputError(f"the query has {len(q)} characters; keep it under {MAX_QUERY_CHARS}")
        out.append(q)
    return out


def parse_min_area(value: object) -> tuple[int, float]:
    """`--min-area`: 20 / '20px' -> (20 px, 0 m2); '50m2' -> (0 px, 50 m2)."""
    text = str(value).strip().lower().replace(" ", "")
    try:
        if text.endswith("m2"):
            return 0, float(text[:-2])
        pixels = float(text.removesuffix("px"))
        if not pixels.is_integer():
            raise ValueError
        return int(pixels), 0.0
    except ValueError:
        raise InputError(f"--min-area {value!r}: give whole pixels (20, 20px) or square metres (50m2)") from None


def change_direction(query: str) -> str:
    """appeared | disappeared | both, read from the words of a change query."""
    words = query.lower()
    appeared = re.search(rf"\b({APPEARED_WORDS})\b", words) is not None
    disappeared = re.search(rf"\b({DISAPPEARED_WORDS})\b", words) is not None
    if appeared == disappeared:
        return "both"
    return "appeared" if appeared else "disappeared"


def check_outputs(output: Path, opts: RunOptions, *, n_scenes: int, n_queries: int) -> None:
    """Refuse bad output settings before any heavy work."""
    if opts.overwrite and opts.append:
        raise InputError("--overwrite and --append exclude each other; choose one")
    gpkg.check_output_path(output, overwrite=opts.overwrite, append=opts.append)
    if opts.layer and n_queries > 1:
        raise InputError("--layer names one layer but several queries were given; drop --layer")
    for extra in (opts.probabilities, opts.mask_out):
        if extra is None:
            continue
        if n_scenes > 1 or n_queries > 1:
            raise InputError(f"{extra}: --probabilities/--mask-out take one scene and one query")
        if Path(extra).exists() and not opts.overwrite:
            raise OutputExistsError(f"{extra} exists; pass --overwrite to replace it")
        if not Path(extra).parent.is_dir():
            raise InputError(f"{extra}: its directory does not exist; create it first")


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


def work_directory(output: Path, checkpoints: Checkpoints | None) -> AbstractContextManager[str]:
    """A temporary directory beside the output, or the persistent one of a resumable run."""
    if checkpoints is None:
        return tempfile.TemporaryDirectory(dir=output.parent, prefix=".geoseg-")
    checkpoints.workdir.mkdir(parents=True, exist_ok=True)
    return nullcontext(str(checkpoints.workdir))


def with_fields(
    gdf: gpd.GeoDataFrame, *, query: str, model: Segmenter, run_id: str, source: str, target: str | None = None
) -> gpd.GeoDataFrame:
    gdf = gdf.copy()
    gdf["query"], gdf["target"] = query, target or query
    gdf["model"], gdf["model_version"] = model.info.name, model.info.version
    gdf["run_id"], gdf["source"] = run_id, source
    return gdf


def merge_scenes(parts: list[gpd.GeoDataFrame], dst_crs: str | None) -> gpd.GeoDataFrame:
    """One layer from several scenes: reprojected to `dst_crs` or to the first scene's CRS."""
    target = dst_crs or parts[0].crs
    if target is not None:
        parts = [p.to_crs(target) if p.crs is not None and p.crs != target else p for p in parts]
    return concat(parts)


def concat(parts: list[gpd.GeoDataFrame]) -> gpd.GeoDataFrame:
    if len(parts) == 1:
        return parts[0].reset_index(drop=True)
    return gpd.GeoDataFrame(pd.concat(parts, ignore_index=True), geometry="geometry", crs=parts[0].crs)


def layer_for(query: str, gdf: gpd.GeoDataFrame, record: dict, layer: str | None, direction: str | None) -> gpkg.LayerData:
    name = layer or gpkg.layer_name_for(query)
    record = {**record, "layer": name}
    if direction is not None:
        record["change_direction"] = direction
    return gpkg.LayerData(name=name, gdf=gdf, description=query, provenance=record)


def input_record(scene: raster.Scene) -> dict:
    return input_record_path(scene.paths[0]) | {
        "bands": list(scene.inputs[0].bands), "nodata": scene.inputs[0].nodata,
        "crs": scene.grid.crs.to_string() if scene.grid.crs else None,
        "width": scene.grid.width, "height": scene.grid.height,
    }


def input_record_path(path: str | Path) -> dict:
    return {"sha256": provenance.sha256_file(path), "bytes": os.path.getsize(path)}


def commit_outputs(
    output: Path, layers: list[gpkg.LayerData], opts: RunOptions, prob_paths: list[Path], summary: RunSummary
) -> None:
    """Write the optional COGs beside their targets, then the GeoPackage atomically, then rename."""
    # Two queries can slug to the same layer name ("Roads", "roads!"): suffix _2, _3 ...
    names = gpkg.unique_layer_names(layer.name for layer in layers)
    layers = [replace(layer, name=n, provenance={**layer.provenance, "layer": n}) for layer, n in zip(layers, names, strict=True)]
    staged: list[tuple[Path, Path]] = []
    try:
        for target, write in (
            (opts.probabilities, stitch.write_cog),
            (opts.mask_out, lambda src, dst: vectorize.write_mask(src, dst, threshold=opts.threshold)),
        ):
            if target is not None:
                part = Path(target).with_name(f".{Path(target).name}.geoseg-part")
                staged.append((part, Path(target)))
                write(prob_paths[0], part)
        gpkg.write_geopackage(output, layers, overwrite=opts.overwrite, append=opts.append)
        for part, target in staged:
            os.replace(part, target)
    finally:
        for part, _ in staged:
            part.unlink(missing_ok=True)
    summary.layers = [
        LayerSummary(layer.name, layer.description, len(layer.gdf),
                     layer.provenance.get("change_direction")) for layer in layers
    ]


def finish(summary: RunSummary, started: float, opts: RunOptions) -> RunSummary:
    summary.seconds = round(time.perf_counter() - started, 3)
    for layer in summary.layers:
        if layer.features == 0:
            log.warning("found nothing for %r: wrote an empty layer %r", layer.query, layer.name)
    return summary


def _parameters(model: Segmenter) -> Iterable[torch.Tensor]:
    module = getattr(model, "model", None)
    return module.parameters() if isinstance(module, torch.nn.Module) else ()
