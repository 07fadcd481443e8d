"""The compact model's query cache: a question asked before is answered from disk, bit for bit,
without loading the sentence encoder (and so without importing its tokenizer)."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from geoseg.models.compact.config import DEFAULT_TEXT_ENCODER
from geoseg.models.compact.text import TextEncoder, text_cache_dir

QUERIES = ["buildings", "flooded roads near the river"]


def test_a_second_encoder_reads_the_disk_cache_bit_for_bit(tmp_path):
    first = TextEncoder(DEFAULT_TEXT_ENCODER, 12, cache_dir=tmp_path)
    features = first.encode(QUERIES)
    assert first.loaded
    second = TextEncoder(DEFAULT_TEXT_ENCODER, 12, cache_dir=tmp_path)
    again = second.encode(QUERIES)
    assert not second.loaded  # nothing was encoded: both queries came from disk
    assert torch.equal(features.tokens, again.tokens) and torch.equal(features.mask, again.mask)
    # another token budget is another cache: its numbers are computed, not read
    other = TextEncoder(DEFAULT_TEXT_ENCODER, 8, cache_dir=tmp_path)
    other.encode(QUERIES[:1])
    assert other.loaded


def test_a_damaged_entry_is_a_miss_and_is_rewritten(tmp_path):
    features = TextEncoder(DEFAULT_TEXT_ENCODER, 12, cache_dir=tmp_path).encode(QUERIES)
    entries = sorted(p for p in tmp_path.rglob("*.pt"))
    assert len(entries) == len(QUERIES)
    entries[0].write_bytes(b"not a tensor")
    reader = TextEncoder(DEFAULT_TEXT_ENCODER, 12, cache_dir=tmp_path)
    assert torch.equal(reader.encode(QUERIES).tokens, features.tokens)
    assert reader.loaded
    rewritten = TextEncoder(DEFAULT_TEXT_ENCODER, 12, cache_dir=tmp_path)
    assert rewritten.encode(QUERIES).tokens.equal(features.tokens)
    assert not rewritten.loaded  # the recomputed entry was written back


def test_cache_location_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GEOSEG_CACHE_DIR", str(tmp_path))
    assert text_cache_dir() == tmp_path / "text"
    monkeypatch.setenv("GEOSEG_CACHE_DIR", "off")
    assert text_cache_dir() is None
    assert TextEncoder(DEFAULT_TEXT_ENCODER, 12).cache_dir is None
    monkeypatch.delenv("GEOSEG_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert text_cache_dir() == tmp_path / "xdg" / "geoseg" / "text"


def test_a_cached_query_runs_the_model_without_loading_the_encoder(tmp_path):
    """The first run encodes the query (the tokenizer is imported), the second reads it; neither
    imports transformers, whose import is what made a new query slow (minilm.py)."""
    code = (
        "import sys, torch; from geoseg import load_segmenter; "
        "s = load_segmenter('compact'); s.predict(torch.rand(1, 3, 64, 64), ['buildings']); "
        "print('tokenizers' in sys.modules, 'transformers' in sys.modules)"
    )
    env = dict(os.environ, GEOSEG_CACHE_DIR=str(tmp_path))
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            for _ in range(2)]
    assert [r.stdout.strip() for r in runs] == ["True False", "False False"]
