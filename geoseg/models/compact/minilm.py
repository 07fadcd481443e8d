"""The sentence encoder's forward pass (a BERT such as all-MiniLM-L6-v2) on torch's own layers.

Why not transformers' `BertModel`: importing `transformers.models.bert` pulls in torch._dynamo,
torch.distributed and scipy (transformers 5), and every cold run with a new query paid for it: 2.6 s
more than a cached query on the end-to-end benchmark (docs/performance.md). A BERT encoder is
embeddings + LayerNorm, then post-norm layers with GELU feed-forwards, which is exactly `nn.TransformerEncoderLayer(norm_first=False,
activation="gelu")`; the tokenizer is the `tokenizers` library's, read from `tokenizer.json`.
tests/test_minilm.py checks token ids and outputs against transformers on a BERT built from a
config, so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file
from torch import nn

if TYPE_CHECKING:  # imported when a string is first encoded, not with the model
    from tokenizers import Tokenizer

# Names this forward pass in the query cache's folder (text.py), so features computed another way
# are never mixed with its own.
FORWARD_PASS = "torch-layers"
# The files a model folder must hold (what `save_pretrained` writes for a BERT with a fast tokenizer).
FILES = ("config.json", "tokenizer.json", "model.safetensors")


@dataclass(frozen=True)
class BertShape:
    """The fields of a BERT config.json that decide the forward pass."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float

    @classmethod
    def from_config(cls, path: Path) -> BertShape:
        raw = json.loads(path.read_text())
        if raw.get("model_type") != "bert" or raw.get("hidden_act", "gelu") != "gelu" \
                or raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{path}: not a BERT with GELU and absolute positions, which is all this encoder computes")
        return cls(**{name: raw[name] for name in cls.__dataclass_fields__})


class BertEncoder(nn.Module):
    """Token ids (1 x T, one unpadded string) -> last hidden states (1 x T x hidden)."""

    def __init__(self, shape: BertShape) -> None:
        super().__init__()
        h = shape.hidden_size
        self.word = nn.Embedding(shape.vocab_size, h)
        self.position = nn.Embedding(shape.max_position_embeddings, h)
        self.token_type = nn.Embedding(shape.type_vocab_size, h)
        self.norm = nn.LayerNorm(h, eps=shape.layer_norm_eps)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(h, shape.num_attention_heads, shape.intermediate_size, dropout=0.0,
                                       activation="gelu", layer_norm_eps=shape.layer_norm_eps, batch_first=True)
            for _ in range(shape.num_hidden_layers)
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.norm(self.word(ids) + self.position(positions)[None] + self.token_type.weight[0])
        for layer in self.layers:
            x = layer(x)
        return x


def bert_key_map(num_layers: int) -> dict[str, str]:
    """Published BERT state-dict names -> this module's names (Q, K, V are stacked separately)."""
    keys = {"embeddings.word_embeddings.weight": "word.weight",
            "embeddings.position_embeddings.weight": "position.weight",
            "embeddings.token_type_embeddings.weight": "token_type.weight",
            "embeddings.LayerNorm.weight": "norm.weight", "embeddings.LayerNorm.bias": "norm.bias"}
    for i in range(num_layers):
        src, dst = f"encoder.layer.{i}.", f"layers.{i}."
        for part in ("weight", "bias"):
            keys[f"{src}attention.output.dense.{part}"] = f"{dst}self_attn.out_proj.{part}"
            keys[f"{src}attention.output.LayerNorm.{part}"] = f"{dst}norm1.{part}"
            keys[f"{src}intermediate.dense.{part}"] = f"{dst}linear1.{part}"
            keys[f"{src}output.dense.{part}"] = f"{dst}linear2.{part}"
            keys[f"{src}output.LayerNorm.{part}"] = f"{dst}norm2.{part}"
    return keys


def _published_state(path: Path, num_layers: int) -> dict[str, torch.Tensor]:
    """model.safetensors (a bare BertModel's, as sentence encoders publish it) in this module's keys."""
    raw = load_file(path)
    state = {dst: raw[src] for src, dst in bert_key_map(num_layers).items()}
    for i in range(num_layers):
        src, dst = f"encoder.layer.{i}.attention.self.", f"layers.{i}.self_attn.in_proj_"
        for part in ("weight", "bias"):
            state[dst + part] = torch.cat([raw[f"{src}{name}.{part}"] for name in ("query", "key", "value")])
    return state


def load_bert(folder: Path) -> tuple[Tokenizer, BertEncoder]:
    """(tokenizer, encoder in eval mode) from a saved BERT folder (FILES)."""
    from tokenizers import Tokenizer

    shape = BertShape.from_config(folder / "config.json")
    with torch.device("meta"):  # no random initialisation of weights that are replaced at once
        encoder = BertEncoder(shape)
    encoder.load_state_dict(_published_state(folder / "model.safetensors", shape.num_hidden_layers), assign=True)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()
    return tokenizer, encoder.eval().requires_grad_(False)


def encode_one(tokenizer: Tokenizer, encoder: BertEncoder, text: str, max_length: int, device: torch.device) -> torch.Tensor:
    """Last hidden states (T x hidden) of one string, truncated to `max_length` tokens in all."""
    tokenizer.enable_truncation(max_length)
    ids = torch.tensor([tokenizer.encode(text).ids], device=device)
    return encoder(ids)[0]
