"""The compact, CPU-friendly referring segmenter shipped inside geoseg (METRIS-style).

See docs/models/compact.md for the architecture, the training recipe and measured accuracy.
"""

from geoseg.models.compact.config import CompactConfig, tiny_config
from geoseg.models.compact.model import CompactModel, ModelOutput
from geoseg.models.compact.segmenter import CompactSegmenter, load_compact_segmenter
from geoseg.models.compact.text import TextEncoder, TextFeatures, shared_text_encoder

__all__ = [
    "CompactConfig",
    "CompactModel",
    "CompactSegmenter",
    "ModelOutput",
    "TextEncoder",
    "TextFeatures",
    "load_compact_segmenter",
    "shared_text_encoder",
    "tiny_config",
]
