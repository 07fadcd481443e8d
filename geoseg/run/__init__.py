"""One run of a model over a scene, from input rasters to a vector file.

    pipeline.py     segment / change / dry-run: each command a short script over one shared run
    engine.py       channels, tile plan, batches of tiles predicted and blended into rasters on disk
    tiling.py       the tile plan and a prefetching tile reader
    stitch.py       blending overlapping tiles into probability rasters, in bounded memory
    outputs.py      the steps around the model: output checks, layer fields, provenance, commit
    grounding.py    generative models: a query answered once per scene, then segmented per tile
    revectorize.py  `geoseg vectorize`: polygons from a saved raster, no model (torch-free)
    dialogue.py     multi-turn chat over one scene (above the pipeline)

Data flows one way: run -> io, vectorize, models. Submodules are imported on use: this package
imports nothing itself (`geoseg vectorize` must not pay for the model's imports).
"""

__all__ = ["dialogue", "engine", "grounding", "outputs", "pipeline", "revectorize", "stitch", "tiling"]
