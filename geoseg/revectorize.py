"""`geoseg vectorize`: polygons from a saved probability or mask raster, without any model.

Torch-free (and so is everything it imports): the command starts in a fraction of the time a
model run needs.
"""

from __future__ import annotations

import time
from pathlib import Path

import rasterio

from geoseg import provenance, raster, vectorize
from geoseg.options import RunOptions
from geoseg.outputs import (
    RunSummary,
    check_outputs,
    commit_outputs,
    finish,
    input_record_path,
    layer_for,
    vector_options,
    with_fields,
)
from geoseg.queries import validate_queries


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
    gdf = vectorize.vectorize_probabilities(probabilities, vector_options(opts), progress=opts.progress)
    gdf = with_fields(gdf, query=query, model=(summary.model, tags.get("geoseg_model_version", "")),
                      run_id=run_id, source=str(probabilities))
    record = provenance.run_record(
        run_id=run_id, command="vectorize", query=query,
        inputs={str(probabilities): input_record_path(probabilities)},
        model={"name": summary.model, "from_raster_tags": tags}, parameters=opts.record(),
        scene={"width": source.native.width, "height": source.native.height},
    )
    commit_outputs(output, [layer_for(query, gdf, record, opts.layer, None)], opts, [], summary)
    return finish(summary, started)
