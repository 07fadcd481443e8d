"""geoseg: language-guided segmentation of large GeoTIFFs into georeferenced GeoPackage polygons.

The public API is what this package exports (`__all__`); each name is imported on first use, so
`import geoseg` stays cheap (no torch, no GDAL) until a run needs them:

    segment(scenes, queries, output, options)            one GeoPackage layer per query
    change(before, after, queries, output, options)      layers of appeared / disappeared polygons
    vectorize_raster(probabilities, output, options)     polygons from a saved raster, no model
    dry_run(scenes, options)                             tile plan and memory estimate
    RunOptions, MinArea                                  every option of a run, checked on creation
    load_segmenter(name_or_dir)                          a model, to reuse across runs
    ChatSession(scene, output, options)                  a conversation with a generative model
    GeosegError, InputError, OutputExistsError, ModelLoadError, EmptyResultError

`vectorize_raster` is not called `vectorize`: `geoseg.vectorize` is the vectorising module.
A notebook-style walk through: docs/api.md.

>>> import geoseg
>>> opts = geoseg.RunOptions(threshold=0.6, min_area="50m2", overwrite=True)
>>> opts.min_area
MinArea(px=0, m2=50.0)
>>> geoseg.RunOptions(tile_size=8)
Traceback (most recent call last):
    ...
geoseg.errors.InputError: RunOptions: option tile-size=8: must be at least 16
>>> summary = geoseg.segment(["sample_tiles/village_4326_1m.tif"], ["buildings"], "village.gpkg", opts)
>>> summary.status, [layer.name for layer in summary.layers]
('ok', ['buildings'])
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it (imported on first access)
_EXPORTS = {
    "segment": "geoseg.run.pipeline",
    "change": "geoseg.run.pipeline",
    "dry_run": "geoseg.run.pipeline",
    "vectorize_raster": "geoseg.run.revectorize",
    "RunOptions": "geoseg.options",
    "MinArea": "geoseg.options",
    "RunSummary": "geoseg.run.outputs",
    "load_segmenter": "geoseg.models.registry",
    "ChatSession": "geoseg.run.dialogue",
    "GeosegError": "geoseg.errors",
    "InputError": "geoseg.errors",
    "OutputExistsError": "geoseg.errors",
    "ModelLoadError": "geoseg.errors",
    "EmptyResultError": "geoseg.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'geoseg' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
