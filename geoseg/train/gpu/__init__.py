"""Training the compact model on a lent GPU machine from a pre-drawn pack (docs/models/compact.md,
"Training on a GPU").

- `pack.py` (runs here, with the full environment): draws training batches with the project's own
  batch sources and writes them, compressed, to a folder small enough to travel with the working
  tree to the GPU machine;
- `run.py` (runs there): trains from that folder. It and `codec.py` import only torch, numpy,
  safetensors and geoseg modules that import nothing else (no rasterio, GDAL, shapely, scipy, PIL or
  MiniLM package); tests/test_gpu_pack.py checks that with those imports blocked.

Nothing here is imported by the rest of geoseg.
"""
