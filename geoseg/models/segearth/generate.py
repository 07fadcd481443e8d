"""SegEarth-R2-style generative path on the SegEarth-R1 architecture: the LLM answers with text and
k `[SEG]` tokens, each tied to a phrase (`<p>building</p>[SEG] far from the <p>track field</p>[SEG]`);
the last-layer hidden state of each `[SEG]` becomes one query of the mask decoder, so k targets give
k masks and an answer without `[SEG]` gives an empty result.

How a turn is laid out (LLaMA-2 style `llava_phi` template, the separator is the EOS token):

    [INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\nThis is an image <image>, Please doing Reasoning
    Segmentation according to the following instruction:\\n{query 1} [/INST] {answer 1}<eos>
    [INST] {query 2} [/INST] {answer 2}<eos> ...

Earlier turns (MIRAS-style dialogue history) stay in the prompt verbatim, `[SEG]` included; only the
`[SEG]` tokens of the current answer are decoded into masks. Decoding is greedy (deterministic).

Each `[SEG]` state goes through the same projections as SegEarth-R1's pooled refer state (pooled path
+ Perceiver cross-attention over res5, concatenated, projected to the decoder's query), so a
SegEarth-R1 checkpoint initialises every tensor of this path; `geoseg train` fine-tunes it to emit
`[SEG]` (docs/models/mllm-training.md).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from geoseg.errors import ModelLoadError
from geoseg.models.base import Prediction, Target
from geoseg.models.segearth.model import ImageFeatures, SegEarthR1
from geoseg.models.segearth.preprocess import unpad
from geoseg.models.segearth.prompt import SEG_TOKEN, SYSTEM, TASK_WORDS
from geoseg.models.segearth.segmenter import EncodedTiles, SegEarthSegmenter

IMAGE = -200  # placeholder id of an image slot in a token list (LLaVA's convention)
IGNORE = -100  # label / id of positions that are not text (image slots, padding)
PHRASE = re.compile(r"<\s*p\s*>(.*?)<\s*/\s*p\s*>", re.S)
MARKUP = re.compile(r"<\s*/?\s*p\s*>|\[SEG\]")


# ------------------------------------------------------------------ dialogue and answers
@dataclass(frozen=True)
class Turn:
    """One earlier turn of a conversation: what the user asked and what the model answered."""

    query: str
    answer: str  # the raw answer, markup and [SEG] included (as it is fed back)


@dataclass(frozen=True)
class Answer:
    """A parsed answer: its text, one phrase per [SEG] (in order) and its token ids."""

    query: str
    raw: str  # decoded answer with its <p>..</p> and [SEG] markup
    text: str  # the same without markup, for people
    phrases: tuple[str, ...]  # one per [SEG]
    ids: tuple[int, ...]  # answer token ids ([SEG] included, EOS excluded)
    history: tuple[Turn, ...] = ()

    @property
    def turn(self) -> Turn:
        return Turn(self.query, self.raw)

    def to_record(self) -> dict:
        """What a layer's provenance keeps of the answer."""
        return {
            "turn": len(self.history) + 1,
            "query": self.query,
            "answer": self.text,
            "raw_answer": self.raw,
            "targets": list(self.phrases),
            "history": [{"query": t.query, "answer": t.answer} for t in self.history],
        }


@dataclass(frozen=True)
class GenerativeIds:
    """Token ids the generative prompt needs (from the checkpoint's tokenizer)."""

    before_image: list[int]
    seg_id: int
    eos_id: int
    pad_id: int
    task: str = "reasoning"


def generative_ids(tokenizer, seg_id: int, pad_id: int, task: str | None, where: str) -> GenerativeIds:
    if tokenizer.eos_token_id is None:
        raise ModelLoadError(f"{where}: the tokenizer has no EOS token; use the checkpoint's tokenizer files")
    before = f"[INST] <<SYS>>\n{SYSTEM}\n<</SYS>>\n\nThis is an image "
    return GenerativeIds(
        before_image=tokenizer.encode(before, add_special_tokens=False),
        seg_id=seg_id,
        eos_id=int(tokenizer.eos_token_id),
        pad_id=pad_id,
        task=task or "reasoning",  # SegEarth-R2 trains with the reasoning wording
    )


def dialogue_ids(tokenizer, ids: GenerativeIds, query: str, history: Sequence[Turn] = ()) -> list[int]:
    """Token ids of the prompt up to where the assistant's answer to `query` starts.

    One IMAGE placeholder marks where the visual tokens go. Each chunk is tokenised on its own,
    without special tokens, as the reference does; turns are separated by the EOS id."""

    def enc(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    out = list(ids.before_image) + [IMAGE]
    intro = f", Please doing {TASK_WORDS[ids.task]} according to the following instruction:\n"
    for i, turn in enumerate([*history, Turn(query, "")]):
        out += enc((intro if i == 0 else "[INST] ") + turn.query.strip() + " [/INST]")
        if i < len(history):
            out += answer_ids(tokenizer, turn.answer, ids.eos_id)
    return out


def answer_ids(tokenizer, answer: str, eos_id: int | None) -> list[int]:
    """Ids of an answer as the assistant writes it: a leading space, the text, then EOS."""
    out = tokenizer.encode(" " + answer.strip(), add_special_tokens=False)
    return out + ([eos_id] if eos_id is not None else [])


def clean_text(raw: str) -> str:
    return re.sub(r"\s+([.,;:!?])", r"\1", re.sub(r"\s+", " ", MARKUP.sub(" ", raw))).strip()


def parse_answer(
    tokenizer, query: str, generated: Sequence[int], ids: GenerativeIds, history: Sequence[Turn] = ()
) -> Answer:
    """Split a generated answer at its [SEG] ids; each [SEG] takes the last `<p>phrase</p>` before
    it (since the previous [SEG]), or the query when the model wrote none."""
    tokens = []
    for t in generated:
        if t == ids.eos_id:
            break
        tokens.append(int(t))
    phrases, chunk = [], []
    for t in tokens:
        if t != ids.seg_id:
            chunk.append(t)
            continue
        found = PHRASE.findall(tokenizer.decode(chunk))
        phrase = " ".join(found[-1].split()) if found else ""
        phrases.append(phrase or query.strip())
        chunk = []
    raw = " ".join(tokenizer.decode(tokens).split())
    return Answer(query, raw, clean_text(raw), tuple(phrases), tuple(tokens), tuple(history))


def answer_from_text(tokenizer, query: str, raw: str, ids: GenerativeIds, history: Sequence[Turn] = ()) -> Answer:
    """An Answer from text (e.g. a training target or a fixed answer): tokenised, then parsed."""
    return parse_answer(tokenizer, query, answer_ids(tokenizer, raw, None), ids, history)


# ------------------------------------------------------------------ sequences
@dataclass
class MultimodalBatch:
    """Right-padded LLM inputs with image slots filled by visual tokens."""

    embeds: torch.Tensor  # N x L x D
    attention: torch.Tensor  # N x L bool
    ids: torch.Tensor  # N x L: token ids, IMAGE at visual positions, IGNORE at padding
    answer_start: torch.Tensor  # N: first position of the current answer (L if none)
    image_positions: list[list[int]] = field(default_factory=list)  # per sample: start of each image


def multimodal_batch(
    net: SegEarthR1,
    prompts: Sequence[Sequence[int]],
    visual: Sequence[Sequence[torch.Tensor]],
    answers: Sequence[Sequence[int]] | None = None,
) -> MultimodalBatch:
    """Embed `prompt + answer` per sample; each IMAGE id of a prompt takes the next T x D tensor of
    `visual[i]` (one tensor per image slot)."""
    embed = net.model.embed_tokens
    device, dtype = embed.weight.device, embed.weight.dtype
    rows, id_rows, starts, image_pos = [], [], [], []
    for i, prompt in enumerate(prompts):
        answer = list(answers[i]) if answers is not None else []
        parts: list[torch.Tensor] = []
        part_ids: list[torch.Tensor] = []
        images, pos = iter(visual[i]), []
        text: list[int] = []

        def flush(text=text, parts=parts, part_ids=part_ids):
            if text:
                t = torch.tensor(text, device=device)
                parts.append(embed(t))
                part_ids.append(t)
                text.clear()

        length = 0
        for tok in list(prompt):
            if tok == IMAGE:
                flush()
                tokens = next(images).to(device=device, dtype=dtype)
                pos.append(length)
                parts.append(tokens)
                part_ids.append(torch.full((tokens.shape[0],), IMAGE, device=device))
                length += tokens.shape[0]
            else:
                text.append(int(tok))
                length += 1
        starts.append(length)
        text.extend(answer)
        flush()
        rows.append(torch.cat(parts))
        id_rows.append(torch.cat(part_ids))
        image_pos.append(pos)
    lengths = torch.tensor([r.shape[0] for r in rows], device=device)
    embeds = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
    ids = torch.nn.utils.rnn.pad_sequence(id_rows, batch_first=True, padding_value=IGNORE)
    attention = torch.arange(embeds.shape[1], device=device)[None] < lengths[:, None]
    return MultimodalBatch(embeds, attention, ids, torch.tensor(starts, device=device), image_pos)


def llm_hidden(net: SegEarthR1, batch: MultimodalBatch) -> torch.Tensor:
    """Last-layer hidden states N x L x D (one forward pass, no cache)."""
    return net.model(
        inputs_embeds=batch.embeds, attention_mask=batch.attention.long(), use_cache=False
    ).last_hidden_state


def seg_positions(batch: MultimodalBatch, seg_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sample index, position) of every [SEG] of the current answers, in reading order."""
    positions = torch.arange(batch.ids.shape[1], device=batch.ids.device)[None]
    is_seg = (batch.ids == seg_id) & (positions >= batch.answer_start[:, None])
    samples, positions_of_seg = is_seg.nonzero(as_tuple=True)
    return samples, positions_of_seg


def decode_targets(
    net: SegEarthR1, states: torch.Tensor, feats: ImageFeatures, image_index: torch.Tensor
) -> torch.Tensor:
    """Mask logits K x S/4 x S/4, one per [SEG] state; each is the single query of the decoder
    over its own image's features (targets do not attend to each other, as in SegEarth-R2)."""
    if states.shape[0] == 0:
        size = feats.mask_features.shape[-2:]
        return feats.mask_features.new_zeros((0, *size))
    own = feats.select(image_index)
    query = net.seg_query_embedding(states.to(own.res5_tokens.dtype), own)
    return net.predictor(query, own.multi_scale, own.mask_features)


@torch.no_grad()
def greedy_generate(
    net: SegEarthR1, batch: MultimodalBatch, eos_id: int, max_new_tokens: int
) -> list[list[int]]:
    """Greedy decoding with a KV cache for prompts of equal length (no padding): argmax at every
    step, so the same inputs always give the same answer."""
    from transformers import DynamicCache

    if not bool(batch.attention.all()):
        raise ValueError("greedy_generate needs prompts of equal length")
    n = batch.embeds.shape[0]
    cache = DynamicCache(config=net.phi_config)
    out = net.model(inputs_embeds=batch.embeds, past_key_values=cache, use_cache=True)
    tokens: list[list[int]] = [[] for _ in range(n)]
    done = torch.zeros(n, dtype=torch.bool, device=batch.embeds.device)
    last = out.last_hidden_state[:, -1]
    for _ in range(max_new_tokens):
        nxt = net.lm_head(last).float().argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
        for i, t in enumerate(nxt.tolist()):
            if not done[i]:
                tokens[i].append(t)
        done |= nxt == eos_id
        if bool(done.all()):
            break
        step = net.model.embed_tokens(nxt)[:, None]
        out = net.model(inputs_embeds=step, past_key_values=out.past_key_values, use_cache=True)
        last = out.last_hidden_state[:, -1]
    return tokens


# ------------------------------------------------------------------ the segmenter
class GenerativeSegmenter(SegEarthSegmenter):
    """A SegEarth checkpoint used generatively: `answer` writes text with k [SEG], `ground` turns
    an answer's [SEG] into k masks on any tile, `predict` does both per tile.

    `with_history(turns)` gives a view that answers inside a conversation; `grounded(answers)` a
    view that grounds fixed answers (one per query, e.g. decided once on a scene overview) on every
    tile, so the phrases and the text are the same across tiles (see geoseg.run.dialogue)."""

    def __init__(self, *args, ids: GenerativeIds, **kwargs):
        super().__init__(*args, **kwargs)
        self.ids = ids
        self.history: tuple[Turn, ...] = ()
        self.last_answers: list[list[Answer]] = []  # [b][q] of the latest `predict`

    # --- views -------------------------------------------------------------------------------
    def with_history(self, history: Sequence[Turn]) -> GenerativeSegmenter:
        view = copy.copy(self)
        view.history = tuple(history)
        return view

    def grounded(self, answers: Sequence[Answer]) -> GroundedSegmenter:
        return GroundedSegmenter(self, answers)

    # --- language side -------------------------------------------------------------------------
    def _prompt(self, query: str) -> list[int]:
        return dialogue_ids(self.tokenizer, self.ids, query, self.history)

    @torch.inference_mode()
    def answer_encoded(self, encoded: EncodedTiles, query: str) -> list[Answer]:
        """One greedy answer per encoded image."""
        prompt = self._prompt(query)
        visual = encoded.features.visual_tokens
        batch = multimodal_batch(self.net, [prompt] * len(encoded), [[v] for v in visual])
        with self._autocast():
            generated = greedy_generate(
                self.net, batch, self.ids.eos_id, self.options.max_new_tokens
            )
        return [parse_answer(self.tokenizer, query, g, self.ids, self.history) for g in generated]

    def answer(self, images: torch.Tensor, queries: Sequence[str]) -> list[list[Answer]]:
        """Answers [b][q] for B x 3 x H x W images in [0, 1] (e.g. one scene overview)."""
        encoded = self.encode(images)
        per_query = [self.answer_encoded(encoded, q) for q in queries]
        return [[per_query[q][b] for q in range(len(queries))] for b in range(len(encoded))]

    @torch.inference_mode()
    def target_logits(self, encoded: EncodedTiles, answers: Sequence[Answer]) -> list[torch.Tensor]:
        """Per image, K_b x H x W mask logits (tile frame) for the [SEG] of its answer."""
        prompts = [dialogue_ids(self.tokenizer, self.ids, a.query, a.history) for a in answers]
        visual = [[v] for v in encoded.features.visual_tokens]
        batch = multimodal_batch(self.net, prompts, visual, [list(a.ids) for a in answers])
        with self._autocast():
            hidden = llm_hidden(self.net, batch)
            sample, pos = seg_positions(batch, self.ids.seg_id)
            small = decode_targets(self.net, hidden[sample, pos], encoded.features, sample)
        logits = unpad(small.float(), encoded.pad) if small.shape[0] else None
        out = []
        for b in range(len(answers)):
            if logits is None:
                out.append(torch.zeros(0, encoded.pad.height, encoded.pad.width, device=self.device))
            else:
                out.append(logits[sample == b])
        return out

    def targets(self, encoded: EncodedTiles, answers: Sequence[Answer]) -> list[list[Target]]:
        """Gated per-target probabilities, each with its phrase, per image."""
        out = []
        for answer, logits in zip(answers, self.target_logits(encoded, answers), strict=True):
            probs = self.probabilities(logits) if logits.shape[0] else logits
            out.append([Target(p, probs[k]) for k, p in enumerate(answer.phrases)])
        return out

    # --- the Segmenter contract ----------------------------------------------------------------
    def predict(self, images: torch.Tensor, queries: Sequence[str]) -> Prediction:
        """Per tile and query: a greedy answer, then one mask per [SEG]. `probabilities` is the
        union (max) of a query's targets (zeros without [SEG]); `targets[b][q]` names them."""
        encoded = self.encode(images)
        answers = [self.answer_encoded(encoded, q) for q in queries]  # [q][b]
        self.last_answers = [[answers[q][b] for q in range(len(queries))] for b in range(len(encoded))]
        return assemble(encoded, [self.targets(encoded, a) for a in answers], answers, self.device)


def assemble(
    encoded: EncodedTiles,
    per_query_targets: list[list[list[Target]]],  # [q][b]
    per_query_answers: list[list[Answer]],  # [q][b]
    device: torch.device,
) -> Prediction:
    b, h, w = len(encoded), encoded.pad.height, encoded.pad.width
    probs = torch.zeros(b, len(per_query_targets), h, w, device=device)
    targets: list[list[list[Target]]] = [[[] for _ in per_query_targets] for _ in range(b)]
    for q, per_image in enumerate(per_query_targets):
        for i, found in enumerate(per_image):
            targets[i][q] = found
            if found:
                probs[i, q] = torch.stack([t.probabilities for t in found]).amax(0)
    texts = []
    for answers in per_query_answers:
        distinct = list(dict.fromkeys(a.text for a in answers))
        texts.append("\n".join(distinct))
    return Prediction(probabilities=probs, targets=targets, text=texts)


class GroundedSegmenter:
    """A Segmenter view that grounds fixed answers (one per query) on every tile it is given.

    The pipeline asks `answers` for the phrases (one channel per target) and `provenance(q)` for
    the record of query q; `predict` fills `Prediction.targets` with the same phrases on every tile.
    A query this view has no answer for is answered per tile (the parent's behaviour)."""

    def __init__(self, parent: GenerativeSegmenter, answers: Sequence[Answer]):
        self.parent = parent
        self.answers = list(answers)
        self.info = parent.info
        self.device = parent.device
        self.model = parent.net
        self._by_query = {a.query: a for a in self.answers}

    def provenance(self, query_index: int) -> dict:
        return {"dialogue": self.answers[query_index].to_record()}

    def predict(self, images: torch.Tensor, queries: Sequence[str]) -> Prediction:
        encoded = self.parent.encode(images)
        per_targets, per_answers = [], []
        for q in queries:
            fixed = self._by_query.get(q)
            answers = [fixed] * len(encoded) if fixed else self.parent.answer_encoded(encoded, q)
            per_answers.append(answers)
            per_targets.append(self.parent.targets(encoded, answers))
        return assemble(encoded, per_targets, per_answers, self.device)


__all__ = [
    "IMAGE",
    "SEG_TOKEN",
    "Answer",
    "GenerativeIds",
    "GenerativeSegmenter",
    "GroundedSegmenter",
    "MultimodalBatch",
    "Turn",
    "answer_from_text",
    "answer_ids",
    "decode_targets",
    "dialogue_ids",
    "generative_ids",
    "greedy_generate",
    "llm_hidden",
    "multimodal_batch",
    "parse_answer",
    "seg_positions",
]
