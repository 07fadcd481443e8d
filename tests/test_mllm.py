"""MLLM variants of the SegEarth family: forward/backward, losses, LoRA, multi-[SEG] answers.

Tiny random checkpoints (tests/mllm_helpers.py); no network. The overfitting and bi-temporal
runs are in test_mllm_overfit.py and test_mllm_bitemporal.py.
"""

from __future__ import annotations

import json

import pytest
import torch
from mllm_helpers import (
    IMAGE_SIZE,
    ListSource,
    generative_samples,
    pair_samples,
    shapes_image,
    write_tiny_checkpoint,
)

from geoseg.errors import InputError
from geoseg.models.base import ChangeAware
from geoseg.models.registry import load_segmenter
from geoseg.models.segearth import GenerativeSegmenter, load_network, load_segearth_segmenter
from geoseg.models.segearth.generate import (
    Turn,
    answer_from_text,
    dialogue_ids,
    parse_answer,
)
from geoseg.train.config import TrainConfig
from geoseg.train.mllm import (
    MLLMSettings,
    parse_settings,
    prepare,
    save_merged,
    step_loss,
    train_mllm,
)
from geoseg.train.mllm_losses import attention_supervision_loss, token_cover

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def generative_dir(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("gen") / "gen")


@pytest.fixture(scope="module")
def r1_dir(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("r1") / "r1", model_type="segearth_r1")


@pytest.fixture(scope="module")
def segmenter(generative_dir) -> GenerativeSegmenter:
    return load_segearth_segmenter(generative_dir)


def trainee_for(path, stage="segment", **model):
    settings = parse_settings({"type": "segearth_r1_generative", **model})
    loaded = load_network(path, variant=settings.variant, dtype=torch.float32)
    return prepare(loaded, settings, stage)


# ------------------------------------------------------------------ forward / backward
@pytest.mark.parametrize(
    "model_type, stage, finetune",
    [
        ("segearth_r1_generative", "segment", "lora"),
        ("segearth_r1_generative", "segment", "full"),
        ("segearth_r1", "segment", "lora"),
        ("segearth_r1_bitemporal", "change_pretrain", "full"),
        ("segearth_r1_bitemporal", "change", "full"),
    ],
)
def test_forward_backward_of_each_variant(r1_dir, model_type, stage, finetune):
    settings = parse_settings({"type": model_type, "finetune": finetune})
    loaded = load_network(r1_dir, variant=settings.variant, dtype=torch.float32)
    trainee = prepare(loaded, settings, stage)
    samples = pair_samples(2) if model_type.endswith("bitemporal") else generative_samples(3)
    if model_type == "segearth_r1":
        for s in samples:
            s.masks = s.masks[:1]
    loss, parts = step_loss(trainee, samples)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    named = dict(trainee.net.named_parameters())
    grads = {n for n, p in named.items() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads, "no parameter received a gradient"
    assert not any(n.startswith("model.vision_tower.") for n in grads)  # frozen backbone
    assert any(n.startswith("predictor.") for n in grads)
    if stage == "change_pretrain":
        assert set(parts) == {"change"}
        assert any(n.startswith("temporal_fusion.") for n in grads)
        assert not any(n.startswith("model.layers.") for n in grads)  # vision-only stage
    elif finetune == "lora":
        assert any(".lora_" in n for n in grads)
        assert not any(n.startswith("model.layers.") and ".lora_" not in n for n in grads)
    else:
        assert any(n.startswith("model.layers.") for n in grads)
    if model_type == "segearth_r1_generative":
        assert {"ce", "bce", "dice", "attention"} <= set(parts)


# ------------------------------------------------------------------ attention supervision
def test_attention_loss_is_finite_and_falls_as_foreground_separates():
    cover = torch.tensor([[True, False, False, False]])
    uniform = torch.full((1, 4), 0.25)
    separated = torch.tensor([[0.7, 0.1, 0.1, 0.1]])
    flat, apart = attention_supervision_loss(uniform, cover), attention_supervision_loss(separated, cover)
    assert torch.isfinite(flat) and torch.isfinite(apart)
    assert apart < flat  # moving the foreground away from the background mean lowers the loss
    # the gradient pushes foreground attention further up when it is above the background mean
    a = separated.clone().requires_grad_(True)
    attention_supervision_loss(a, cover).backward()
    assert a.grad[0, 0] < 0
    # a [SEG] whose mask covers no token (or every token) has no contrast: zero, still finite
    none = attention_supervision_loss(separated, torch.zeros(1, 4, dtype=torch.bool))
    assert none.item() == 0.0


def test_token_cover_marks_the_cells_a_mask_touches():
    mask = torch.zeros(1, 64, 64)
    mask[0, 5:10, 40:50] = 1  # top-right cell of a 2 x 2 grid
    assert token_cover(mask, 2).tolist() == [[False, True, False, False]]


def test_attention_loss_weight_zero_disables_it(generative_dir):
    samples = generative_samples(3)
    on = trainee_for(generative_dir, finetune="full")
    loss_on, parts_on = step_loss(on, samples)
    assert "attention" in parts_on and parts_on["attention"] > 0
    assert on.net.model.config._attn_implementation == "eager"
    off = trainee_for(generative_dir, finetune="full", loss={"attention": 0.0})
    loss_off, parts_off = step_loss(off, samples)
    assert "attention" not in parts_off
    assert off.net.model.config._attn_implementation == "sdpa"  # fast attention kept
    assert not off.attention_maps
    w = off.settings.loss
    expected = w.ce * parts_off["ce"] + w.bce * parts_off["bce"] + w.dice * parts_off["dice"]
    assert loss_off.item() == pytest.approx(expected, rel=1e-5)
    # same weights, same data: the only difference is 0.01 x the attention term
    assert loss_on.item() == pytest.approx(loss_off.item() + 0.01 * parts_on["attention"], rel=1e-4)


# ------------------------------------------------------------------ LoRA
def test_lora_settings_are_configurable_and_only_touch_llm_attention(generative_dir):
    trainee = trainee_for(
        generative_dir,
        lora={"rank": 3, "alpha": 6, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "dense"]},
    )
    lora = [n for n, _ in trainee.net.named_parameters() if ".lora_" in n]
    assert lora and all(n.startswith("model.layers.") for n in lora)
    wrapped = {n.split(".self_attn.")[1].split(".")[0] for n in lora}
    assert wrapped == {"q_proj", "k_proj", "dense"}
    a = dict(trainee.net.named_parameters())["model.layers.0.self_attn.q_proj.lora_A.default.weight"]
    assert a.shape[0] == 3
    trainable = {n.split(".")[0] for n, p in trainee.trainable()}
    assert {"pixel_decoder", "predictor", "SEG_token_projector", "lm_head"} <= trainable
    assert not any(n.startswith("model.vision_tower") for n, _ in trainee.trainable())
    with pytest.raises(InputError, match="target_modules"):
        parse_settings({"lora": {"target_modules": ["qkv"]}})
    with pytest.raises(InputError, match="unknown option"):
        parse_settings({"lora": {"rnak": 4}})


def test_lora_merge_and_save_reloads_to_the_same_outputs(generative_dir, tmp_path):
    trainee = trainee_for(generative_dir, lora={"dropout": 0.0}, loss={"attention": 0.0})
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # make the adapters matter (B starts at zero)
        for n, p in trainee.net.named_parameters():
            if ".lora_B." in n:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
    trainee.net.eval()
    samples = generative_samples(3)
    with torch.no_grad():
        before, _ = step_loss(trainee, samples)
    out = save_merged(trainee, tmp_path / "merged")
    names = set(json.loads((out / "config.json").read_text()))
    assert "geoseg" in names
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert not any("lora" in k or "base_layer" in k for k in keys)
    reloaded = trainee_for(out, loss={"attention": 0.0}, finetune="full")
    reloaded.net.eval()
    with torch.no_grad():
        after, _ = step_loss(reloaded, samples)
    assert after.item() == pytest.approx(before.item(), rel=1e-4)
    seg = load_segearth_segmenter(out)  # and it is a plain checkpoint for --model DIR
    assert isinstance(seg, GenerativeSegmenter)


# ------------------------------------------------------------------ answers with k [SEG]
def test_parse_answer_ties_each_seg_to_its_phrase(segmenter):
    tok, ids = segmenter.tokenizer, segmenter.ids
    answer = answer_from_text(tok, "q", "<p>red square</p>[SEG] far from the <p>blue circle</p>[SEG].", ids)
    assert answer.phrases == ("red square", "blue circle")
    assert answer.text == "red square far from the blue circle."
    assert answer.ids.count(ids.seg_id) == 2
    none = answer_from_text(tok, "q", "There is no such target in this image.", ids)
    assert none.phrases == () and "[SEG]" not in none.text
    bare = answer_from_text(tok, "blue circle", "Sure, [SEG].", ids)  # no <p>: the query names it
    assert bare.phrases == ("blue circle",)
    # generation stops at EOS; later tokens are ignored
    cut = parse_answer(tok, "q", list(answer.ids) + [ids.eos_id, ids.seg_id], ids)
    assert cut.phrases == answer.phrases


def test_two_seg_give_two_masks_with_their_phrases_and_none_gives_empty(segmenter):
    image, _ = shapes_image(1)
    tok, ids = segmenter.tokenizer, segmenter.ids
    two = answer_from_text(tok, "red square and blue circle", "<p>red square</p>[SEG] and <p>blue circle</p>[SEG].", ids)
    none = answer_from_text(tok, "river", "There is no such target in this image.", ids)
    view = segmenter.grounded([two, none])
    pred = view.predict(image[None], ["red square and blue circle", "river"])
    assert pred.probabilities.shape == (1, 2, IMAGE_SIZE, IMAGE_SIZE)
    found = pred.targets[0][0]
    assert [t.phrase for t in found] == ["red square", "blue circle"]
    assert all(t.probabilities.shape == (IMAGE_SIZE, IMAGE_SIZE) for t in found)
    assert not torch.equal(found[0].probabilities, found[1].probabilities)  # two queries, two masks
    union = torch.maximum(found[0].probabilities, found[1].probabilities)
    assert torch.equal(pred.probabilities[0, 0], union)
    assert pred.targets[0][1] == [] and pred.probabilities[0, 1].max() == 0  # no [SEG]: empty
    assert pred.text == [two.text, none.text]
    assert view.provenance(0)["dialogue"]["targets"] == ["red square", "blue circle"]


def test_predict_generates_greedily_and_is_deterministic(segmenter):
    images = torch.stack([shapes_image(s)[0] for s in (1, 2)])
    a = segmenter.predict(images, ["red square"])
    b = segmenter.predict(images, ["red square"])
    assert torch.equal(a.probabilities, b.probabilities) and a.text == b.text
    assert len(a.targets) == 2 and len(segmenter.last_answers) == 2
    for row, answers in zip(a.targets, segmenter.last_answers, strict=True):
        assert [t.phrase for t in row[0]] == list(answers[0].phrases)


def test_history_goes_into_the_prompt(segmenter):
    tok, ids = segmenter.tokenizer, segmenter.ids
    first = dialogue_ids(tok, ids, "buildings")
    history = (Turn("buildings", "<p>buildings</p>[SEG]."),)
    second = dialogue_ids(tok, ids, "only the damaged ones", history)
    assert second[: len(first)] == first  # the earlier turn is kept verbatim
    assert ids.eos_id in second[len(first) :]  # turns are separated by EOS
    assert second.count(ids.seg_id) == 1  # the earlier answer's [SEG] is part of the history
    view = segmenter.with_history(history)
    image = shapes_image(3)[0][None]
    view.predict(image, ["only the damaged ones"])
    assert view.last_answers[0][0].history == history
    assert segmenter.history == ()  # the view does not change the segmenter


def test_registry_dispatches_the_new_model_types(tmp_path, generative_dir):
    assert isinstance(load_segmenter(str(generative_dir), device="cpu"), GenerativeSegmenter)
    bt = load_segmenter(str(write_tiny_checkpoint(tmp_path / "bt", model_type="segearth_r1_bitemporal")), device="cpu")
    assert isinstance(bt, ChangeAware)
    with pytest.raises(InputError, match="geoseg change"):
        bt.predict(shapes_image(0)[0][None], ["x"])


def test_r1_checkpoint_can_run_generatively(r1_dir):
    seg = load_segearth_segmenter(r1_dir, variant="generative")
    assert isinstance(seg, GenerativeSegmenter) and seg.ids.task == "reasoning"


# ------------------------------------------------------------------ config
def test_settings_are_validated():
    assert parse_settings({}).type == "segearth_r1_generative"
    assert parse_settings({"loss": {"attention": 0.0}}).loss.attention == 0.0
    assert MLLMSettings().loss.attention == 0.01
    with pytest.raises(InputError, match="type must be"):
        parse_settings({"type": "llama"})
    with pytest.raises(InputError, match="finetune"):
        parse_settings({"finetune": "qlora"})


def test_training_needs_a_checkpoint_and_a_fitting_stage(tmp_path, generative_dir):
    config = TrainConfig(run_dir=str(tmp_path / "run"), steps=1, model={"type": "segearth_r1_generative"})
    with pytest.raises(InputError, match="init_from"):
        train_mllm(config, progress=False, source=ListSource(generative_samples(1)))
    config.init_from, config.stage = str(generative_dir), "change"
    with pytest.raises(InputError, match="stage 'change'"):
        train_mllm(config, progress=False, source=ListSource(generative_samples(1)))


def test_gradient_accumulation_and_checkpointing_run_and_resume(tmp_path, generative_dir):
    model = {"type": "segearth_r1_generative", "grad_accum": 2, "gradient_checkpointing": True}
    config = TrainConfig(
        run_dir=str(tmp_path / "run"), steps=2, lr=1e-3, warmup=1, threads=1, checkpoint_every=1,
        log_every=1, init_from=str(generative_dir), model=model,
    )  # fmt: skip
    settings = parse_settings(model)
    trainee = prepare(load_network(generative_dir, variant="generative"), settings, "segment")
    assert all(layer.gradient_checkpointing for layer in trainee.net.model.layers)
    source = ListSource(generative_samples(2), batch=1)
    final = train_mllm(config, progress=False, source=source)
    assert source.i == 4  # 2 steps x 2 accumulated micro-batches
    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]
    assert (final / "model.safetensors").is_file()
    config.steps = 3  # resuming continues from the saved step
    train_mllm(config, progress=False, source=source)
    assert json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])["step"] == 3
