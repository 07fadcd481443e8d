"""Tiny SegEarth checkpoints and synthetic samples for the MLLM tests (CPU, no network).

The network is built with PyTorch's default initialisation and saved with the published key names
(geoseg's own module tree, checked against the published inventory by test_segearth.py). The
backbone uses patch size 1 so that a 64 px image still gives 2 x 2 visual tokens (the attention
supervision needs a token grid).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from segearth_words import WORDS

from geoseg.models.segearth.bitemporal import SegEarthBitemporal
from geoseg.models.segearth.checkpoint import save_checkpoint
from geoseg.models.segearth.config import parse_config
from geoseg.models.segearth.model import SegEarthR1
from geoseg.train.mllm import MLLMSample, generative_answer

EOS = "<|endoftext|>"
EXTRA_WORDS = [
    EOS, "[/INST]", "square", "circle", "red", "blue", "there", "no", "such", "target", "this",
    "These", "two", "temporal", "remote", "sensing", "images", "do", "Change", "Detection",
    "only", "damaged", "ones", "next", "river", "far", "from", "track", "Sure", "it",
]  # fmt: skip
IMAGE_SIZE = 64

TINY_MLLM_CONFIG = {
    "model_type": "segearth_r1_generative",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "vocab_size": 128,
    "mm_projector_type": "SparseConv_1",
    "swin_type": "base",
    "projector_outdim": 64,
    "mm_input_embeds": 128,
    "geoseg": {
        "image_size": IMAGE_SIZE,
        "overlap": 16,
        "gate_min_score": 0.0,
        "gate_min_area": 0,
        "max_new_tokens": 16,
        "swin": {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8], "window_size": 4, "patch_size": 1},
        "mask_decoder": {
            "conv_dim": 32, "mask_dim": 32, "hidden_dim": 32, "nheads": 4, "enc_layers": 1,
            "enc_ffn": 48, "dec_layers": 2, "dec_ffn": 40, "num_queries": 5,
        },
        "description_projector": {"dim": 24, "heads": 2, "dim_head": 8, "ff_mult": 1},
    },
}  # fmt: skip


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(dict.fromkeys(WORDS + EXTRA_WORDS))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token=EOS)
    hf.add_tokens(["<p>", "</p>", "[/INST]", "[SEG]"])
    hf.add_special_tokens({"pad_token": "[PAD]"})
    assert len(hf) <= TINY_MLLM_CONFIG["vocab_size"]
    return hf


def write_tiny_checkpoint(path: Path, model_type: str = "segearth_r1_generative", seed: int = 0, **geoseg) -> Path:
    config = json.loads(json.dumps(TINY_MLLM_CONFIG))
    config["model_type"] = model_type
    config["geoseg"].update(geoseg)
    cfg = parse_config(config)
    torch.manual_seed(seed)
    net = SegEarthBitemporal(cfg) if model_type == "segearth_r1_bitemporal" else SegEarthR1(cfg)
    return save_checkpoint(net.state_dict(), config, tiny_tokenizer(), Path(path))


# ------------------------------------------------------------------ synthetic scenes
def shapes_image(seed: int, size: int = IMAGE_SIZE) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A grey noisy image with a red square and a blue circle; their masks."""
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    image = 0.45 + 0.05 * torch.rand(3, size, size, generator=g)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    s = rng.randint(14, 20)
    y0, x0 = rng.randint(2, size // 2 - s // 2), rng.randint(2, size - s - 2)
    square = (yy >= y0) & (yy < y0 + s) & (xx >= x0) & (xx < x0 + s)
    r = rng.randint(7, 10)
    cy, cx = rng.randint(size // 2 + r // 2, size - r - 2), rng.randint(r + 2, size - r - 2)
    circle = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & ~square
    image[:, square] = torch.tensor([0.9, 0.1, 0.1])[:, None]
    image[:, circle] = torch.tensor([0.1, 0.2, 0.9])[:, None]
    return image.clamp(0, 1), {"red square": square.float(), "blue circle": circle.float()}


def generative_samples(n: int = 4) -> list[MLLMSample]:
    """Single, double and no-target instructions over n shape images."""
    out = []
    for i in range(n):
        image, masks = shapes_image(100 + i)
        if i % 3 == 0:
            phrases = ["red square", "blue circle"]
            instruction = "red square and blue circle"
        elif i % 3 == 1:
            phrases = ["blue circle"]
            instruction = "blue circle"
        else:
            phrases = ["red square"]
            instruction = "red square"
        out.append(MLLMSample(image, instruction, generative_answer(phrases), [masks[p] for p in phrases]))
    return out


def pair_samples(n: int = 3) -> list[MLLMSample]:
    """Before: a red square only; after: the same plus a blue circle (the change)."""
    out = []
    for i in range(n):
        after, masks = shapes_image(200 + i)
        before = after.clone()
        before[:, masks["blue circle"] > 0] = 0.47  # the circle was not there yet
        change = masks["blue circle"]
        out.append(MLLMSample(after, "new blue circle", "", [change], before, change))
    return out


class ListSource:
    """Cycles through fixed samples, `batch` at a time."""

    def __init__(self, samples: list[MLLMSample], batch: int | None = None):
        self.samples = samples
        self.batch = batch or len(samples)
        self.i = 0

    def next_samples(self) -> list[MLLMSample]:
        out = [self.samples[(self.i + k) % len(self.samples)] for k in range(self.batch)]
        self.i += self.batch
        return out
