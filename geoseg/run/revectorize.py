"""`geoseg vectorize`: polygons from a saved probability or mask raster, without any model.

Torch-free (and so is everything it imports): the command starts in a fraction of the time a
model run needs.
"""

from __future__ import annotations

import time
from pathlib import Path

import rasterio
from rasterio.errors import RasterioError

from geoseg import provenance, vectorize
from geoseg.io import raster, remote
from geoseg.options import RunOptions
from geoseg.queries import parse_queries
from geoseg.run.outputs import (
    RunSummary,
    check_outputs,
    commit_outputs,
    finish,
    layer_for,
    source_record,
    vector_options,
    with_fields,
)


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
    output = Path(output)
    source = raster.open_input(probabilities, pixel_coords=opts.pixel_coords)  # validates the file (or URL)
    check_outputs(output, opts, n_scenes=1, n_queries=1)
    with rasterio.open(source.href) as src:
        tags = src.tags()
    parsed = parse_queries([query or tags.get("geoseg_query") or Path(source.source.short_name).stem], layer=opts.layer)[0]
    run_id = provenance.new_run_id()
    summary = RunSummary("vectorize", str(output), run_id, tags.get("geoseg_model", "none"))
    try:
        gdf = vectorize.vectorize_probabilities(source.href, vector_options(opts), progress=opts.progress)
    except RasterioError as e:
        if not source.source.remote:
            raise
        remote.raise_for(str(source.path), str(e), opening=False)
    gdf = with_fields(gdf, query=parsed.text, model=(summary.model, tags.get("geoseg_model_version", "")),
                      run_id=run_id, source=str(source.path))
    record = provenance.run_record(
        run_id=run_id, command="vectorize", query=parsed.text,
        inputs={str(source.path): source_record(source.source, opts.hash_inputs)},
        model={"name": summary.model, "from_raster_tags": tags}, parameters=opts.record(),
        scene={"width": source.native.width, "height": source.native.height},
    )
    commit_outputs(output, [layer_for(parsed, gdf, record, None)], opts, [], summary)
    return finish(summary, started)
