"""Training and evaluation (`geoseg train CONFIG`, `geoseg evaluate MODEL DATASET`).

    config.py                TrainConfig, read from one YAML or TOML file
    loop.py                  the one training loop (seeding, budget, resume, checkpoints)
    trainer.py, mllm.py      the compact and SegEarth MLLM tasks plugged into the loop
    losses.py, mllm_losses.py
    data.py, batch.py        training batches from the synthetic generator or manifests
    real.py, damage.py       real labelled chips; building damage composited onto them
    synthdata.py, synth/     procedural georeferenced scenes with exact truth
    queries.py, inventory.py which wordings are trained or held out; the inventory a config teaches
    manifest.py, heldout.py  dataset manifests; the held-out evaluation sets
    evaluate.py, metrics.py  scoring a model on a dataset (gIoU, cIoU, empty-target view)
    gpu/                     the pack and runner for a lent GPU machine

This package imports none of its modules itself.
"""

__all__ = ["config", "evaluate", "inventory", "loop", "manifest", "metrics", "queries", "synth", "trainer"]
