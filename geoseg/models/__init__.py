"""The model contract and the models behind it.

    base.py       Segmenter, ModelInfo and the capability Protocols the run relies on
    change.py     how each kind of model answers a change question, one direction per channel
    concepts.py   what a model knows (its inventory) and the unknown-query check
    registry.py   --model NAME|DIR|HUB_ID -> a loaded segmenter
    compact/      the embedded CPU default (METRIS-style referring segmenter)
    segearth/     the SegEarth-R1/R2-family multimodal LLM segmenter

This package imports none of its modules itself: torch is loaded only by the model a run picks.
"""

__all__ = ["base", "change", "compact", "concepts", "registry", "segearth"]
