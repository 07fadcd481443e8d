"""SegEarth-R1's instruction prompt and how a query becomes token ids.

The reference builds one LLaMA-2-style turn with the `llava_phi` template (separator
`<|endoftext|>`), with two placeholders: `<image>` (replaced by the 64 visual tokens) and `<refer>`
(replaced by the embeddings of `" " + query` followed by the `[SEG]` token). The mask is computed
from the hidden states at the `<refer>` positions only; the answer that follows in the reference's
prompt comes later under causal attention and cannot change them, so it is not fed at all.
Each text chunk is tokenised separately without special tokens, as the reference does.
"""

from __future__ import annotations

from dataclasses import dataclass

from geoseg.errors import ModelLoadError

SYSTEM = (
    "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
)
TASK_WORDS = {"referring": "Referring Segmentation", "reasoning": "Reasoning Segmentation"}
SEG_TOKEN = "[SEG]"
PAD_TOKEN = "[PAD]"


def prompt_chunks(task: str) -> tuple[str, str]:
    """Text before `<image>` and between `<image>` and `<refer>`."""
    before_image = f"[INST] <<SYS>>\n{SYSTEM}\n<</SYS>>\n\nThis is an image "
    after_image = f", Please doing {TASK_WORDS[task]} according to the following instruction:\n"
    return before_image, after_image


def guess_task(name: str) -> str:
    """EarthReason checkpoints were trained on reasoning prompts, the others on referring ones."""
    return "reasoning" if "reason" in name.lower() else "referring"


@dataclass(frozen=True)
class PromptIds:
    before_image: list[int]
    after_image: list[int]
    seg_id: int
    pad_id: int


def prepare_tokenizer(tokenizer, task: str, vocab_size: int, where: str) -> PromptIds:
    """Make sure `[SEG]` (and a pad token) exist like in the reference, then tokenise the template."""
    # The reference adds `[PAD]` as a special token when the tokenizer has none and `[SEG]` as a
    # plain token; the published tokenizer files already contain both.
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    if SEG_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens(SEG_TOKEN)
    seg_ids = tokenizer.encode(SEG_TOKEN, add_special_tokens=False)
    seg_id, pad_id = seg_ids[0], tokenizer.pad_token_id
    if len(seg_ids) != 1 or max(seg_id, pad_id) >= vocab_size:
        raise ModelLoadError(
            f"{where}: the tokenizer's {SEG_TOKEN} id {seg_id} does not fit the embedding table "
            f"({vocab_size} rows); use the tokenizer files published with the checkpoint"
        )
    before, after = prompt_chunks(task)
    return PromptIds(
        before_image=tokenizer.encode(before, add_special_tokens=False),
        after_image=tokenizer.encode(after, add_special_tokens=False),
        seg_id=seg_id,
        pad_id=pad_id,
    )


def refer_ids(tokenizer, query: str, ids: PromptIds) -> list[int]:
    """Token ids embedded at `<refer>`: the instruction with a leading space, then `[SEG]`."""
    return tokenizer.encode(" " + query.strip(), add_special_tokens=False) + [ids.seg_id]
