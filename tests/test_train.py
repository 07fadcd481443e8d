"""Training room: config files, data, a tiny run that learns, checkpoints and resume."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from geoseg.errors import InputError
from geoseg.models.compact import CompactModel, tiny_config
from geoseg.models.compact.text import shared_text_encoder
from geoseg.train.config import load_train_config, train_config_from_dict
from geoseg.train.data import make_batch_source
from geoseg.train.queries import HELDOUT_WORDS, by_concept, choose_queries, queries_by_split
from geoseg.train.synth import vocab
from geoseg.train.trainer import STATE_NAME, batch_loss, build_model, make_optimizer, train

TINY_MODEL = {k: v for k, v in tiny_config().to_dict().items() if k not in ("model_type", "extra")}


def _tiny(tmp_path, **over) -> dict:
    cfg = {
        "run_dir": str(tmp_path / "run"),
        "steps": 4,
        "batch_size": 2,
        "warmup": 2,
        "threads": 1,
        "checkpoint_every": 2,
        "log_every": 1,
        "model": TINY_MODEL,
        "pretrained_encoder": None,  # the tiny encoder has no ImageNet weights
        "data": {"pool_scenes": 2, "scene_size": 96, "tile": 64, "queries_per_image": 2, "gsds": [0.5]},
    }
    cfg.update(over)
    return cfg


def test_yaml_and_toml_configs(tmp_path):
    (tmp_path / "a.yaml").write_text("steps: 7\ndata:\n  tile: 96\n")
    (tmp_path / "b.toml").write_text("steps = 9\n[data]\ntile = 64\n")
    assert load_train_config(tmp_path / "a.yaml").steps == 7
    b = load_train_config(tmp_path / "b.toml")
    assert b.steps == 9 and b.data.tile == 64
    (tmp_path / "c.yaml").write_text("stpes: 7\n")
    with pytest.raises(InputError, match="stpes"):
        load_train_config(tmp_path / "c.yaml")
    with pytest.raises(InputError, match="multiple of 32"):
        train_config_from_dict({"data": {"tile": 100}})


ROOT = Path(__file__).parents[1]


def test_shipped_configs_parse():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        load_train_config(path)


@pytest.mark.parametrize("name", ["compact", "compact-change"])
def test_shipped_weights_come_from_one_documented_chain(name):
    """One config exports the shipped weights; following `init_from` back reaches a phase trained
    from scratch, and the model card gives that whole chain as one `geoseg train` command."""
    configs = {path: load_train_config(path) for path in sorted((ROOT / "configs").glob("*.yaml"))}
    by_run = {Path(cfg.run_dir): path for path, cfg in configs.items()}
    target = Path("geoseg/models/compact/weights") / name
    exporting = [path for path, cfg in configs.items() if cfg.export_to and Path(cfg.export_to) == target]
    assert len(exporting) == 1, exporting
    chain = exporting
    while configs[chain[0]].init_from:
        chain = [by_run[Path(configs[chain[0]].init_from).parents[1]], *chain]
    command = "geoseg train " + " ".join(f"configs/{path.name}" for path in chain)
    card = " ".join((ROOT / "docs/models/compact.md").read_text().replace("\\\n", " ").split())
    assert command in card


def test_heldout_wordings_never_reach_training():
    splits = queries_by_split()
    train_texts = {q.text for q in splits["train"]}
    for split in ("synonym", "attribute"):
        assert splits[split] and not train_texts & {q.text for q in splits[split]}
    assert not any(HELDOUT_WORDS & set(t.replace("-", " ").split()) for t in train_texts)
    assert not any("white" in t for t in train_texts)


def test_validation_and_heldout_sets_use_their_own_seeds():
    from geoseg.train.heldout import SETS, VALIDATION_SETS

    seeds = [seed for _, seed, _, _ in (*SETS.values(), *VALIDATION_SETS.values())]
    assert len(set(seeds)) == len(seeds)


def test_synthetic_batches_have_empty_and_nonempty_targets(tmp_path):
    cfg = train_config_from_dict(_tiny(tmp_path, batch_size=8, data={**_tiny(tmp_path)["data"], "queries_per_image": 4}))
    batch = make_batch_source(cfg).next_batch()
    assert batch.images.shape == (8, 3, 64, 64)
    assert float(batch.images.min()) >= 0 and float(batch.images.max()) <= 1
    areas = batch.masks.flatten(1).sum(1)
    assert len(batch.queries) == len(areas) == len(batch.image_index)
    assert (areas == 0).any() and (areas > 0).any()


def test_near_misses_ask_attributes_of_a_class_the_crop_shows():
    concepts = by_concept(queries_by_split()["train"])
    shown = {"building", "building/grey_roof", "road"}  # grey roofs and a road: no red roof, no water
    full, empty = np.ones((8, 8), bool), np.zeros((8, 8), bool)

    def empty_picks(share: float) -> list[str]:
        rng = np.random.default_rng(0)
        picks = [p for _ in range(300) for p in choose_queries(
            rng, concepts, lambda key: full if key in shown else empty, 4, 0.5, min_pixels=1, near_miss_share=share)]
        return [q.concept for q, mask in picks if not mask.any()]

    def shows_its_class(key: str) -> bool:
        return vocab.VOCABULARY[key].target in {"building", "road"}

    always = empty_picks(1.0)
    assert always and all(shows_its_class(c) for c in always)
    assert {"building/red_roof", "road/dirt"} <= set(always)
    never = empty_picks(0.0)  # uniform over the absent concepts: other classes too
    assert {"water", "field"} <= set(never)


@pytest.fixture
def one_thread():
    # on a shared 2-core machine two intra-op threads thrash; one is faster and steadier
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_tiny_training_lowers_the_loss(tmp_path, one_thread):
    """Overfit one fixed batch: the loss must fall well below where it started."""
    torch.manual_seed(0)
    cfg = train_config_from_dict(_tiny(tmp_path, lr=3e-3, warmup=1, steps=40, batch_size=4))
    model = build_model(cfg).train()
    text = shared_text_encoder(model.config.text_encoder, model.config.max_text_tokens)
    batch = make_batch_source(cfg).next_batch()
    opt, sched = make_optimizer(model, cfg)
    losses = []
    for _ in range(40):
        loss, _ = batch_loss(model, text, batch, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3]), losses


def test_train_writes_checkpoints_and_resumes(tmp_path, one_thread):
    cfg = train_config_from_dict(_tiny(tmp_path, export_to=str(tmp_path / "export")))
    final = train(cfg, progress=False)
    assert (final / "config.json").is_file() and (final / "model.safetensors").is_file()
    last = tmp_path / "run" / "checkpoints" / "last"
    assert torch.load(last / STATE_NAME, weights_only=True)["step"] == 4
    assert CompactModel.from_pretrained(tmp_path / "export").config.extra["trained_steps"] == 4
    # a longer run with the same run_dir continues from step 4
    cfg.steps = 6
    train(cfg, progress=False)
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_change_stages_build_and_step(tmp_path, one_thread):
    data = {**_tiny(tmp_path)["data"], "scene_size": 128}
    pre = train_config_from_dict(_tiny(tmp_path, stage="change_pretrain", steps=2, data=data))
    pre_final = train(pre, progress=False)
    fine = train_config_from_dict(
        _tiny(tmp_path, stage="change", steps=2, data=data, run_dir=str(tmp_path / "fine"), init_from=str(pre_final))
    )
    model = build_model(fine)
    assert model.config.change
    out = train(fine, progress=False)
    assert CompactModel.from_pretrained(out).config.model_type == "geoseg_compact_change"


def test_manifest_source_batches(tmp_path):
    from geoseg.train.synth.export import export_dataset

    manifest = export_dataset(tmp_path / "ds", 2, seed=3, size=64, gsd_choices=(0.5,), queries_per_image=2)
    cfg = train_config_from_dict(_tiny(tmp_path, batch_size=3, data={"source": str(manifest), "tile": 64}))
    batch = make_batch_source(cfg).next_batch()
    assert batch.images.shape == (3, 3, 64, 64) and batch.masks.shape == (3, 64, 64)
    assert len(batch.queries) == 3 and batch.before is None
    with pytest.raises(InputError, match="no change"):
        make_batch_source(train_config_from_dict(_tiny(tmp_path, stage="change", data={"source": str(manifest)})))


def test_train_command_chains_phases_and_keeps_finished_ones(tmp_path, one_thread):
    """`geoseg train A B`: B starts from A's final weights; a second call trains nothing more."""
    import yaml
    from click.testing import CliRunner

    from geoseg_cli.train import train_command

    # the first phase ends by its time limit (after its first step), the second by its steps
    first = _tiny(tmp_path, run_dir=str(tmp_path / "one"), steps=50, time_limit_min=1e-4)
    second = _tiny(tmp_path, run_dir=str(tmp_path / "two"), steps=2, init_from=str(tmp_path / "one/checkpoints/final"))
    paths = [tmp_path / "one.yaml", tmp_path / "two.yaml"]
    for path, cfg in zip(paths, (first, second), strict=True):
        path.write_text(yaml.safe_dump(cfg))
    args = [str(p) for p in paths]

    result = CliRunner().invoke(train_command, args, obj={"quiet": 1})
    assert result.exit_code == 0, result.output
    assert result.output.split() == [str(tmp_path / "one/checkpoints/final"), str(tmp_path / "two/checkpoints/final")]

    def weights(name: str) -> bytes:
        return (tmp_path / name / "checkpoints/final/model.safetensors").read_bytes()

    before = {name: weights(name) for name in ("one", "two")}
    logs = {name: (tmp_path / name / "log.jsonl").read_text() for name in ("one", "two")}

    again = CliRunner().invoke(train_command, args, obj={"quiet": 1})
    assert again.exit_code == 0, again.output
    for name in ("one", "two"):
        assert weights(name) == before[name]  # not even rewritten (safetensors' header order varies)
        assert (tmp_path / name / "log.jsonl").read_text() == logs[name]  # not one step more

    refused = CliRunner().invoke(train_command, [*args, "--steps", "5"], obj={"quiet": 1})
    assert refused.exit_code == 2 and "single config" in refused.output


def test_export_can_average_the_final_weights_with_an_earlier_phase(tmp_path):
    from geoseg.train.trainer import export_final

    torch.manual_seed(0)
    earlier, final = CompactModel(tiny_config()), CompactModel(tiny_config())
    earlier.save_pretrained(tmp_path / "earlier")
    final.save_pretrained(tmp_path / "final")
    cfg = train_config_from_dict(_tiny(tmp_path, export_to=str(tmp_path / "export"),
                                       export_average_with=str(tmp_path / "earlier"), export_average_share=0.3))
    exported = CompactModel.from_pretrained(export_final(tmp_path / "final", cfg)).state_dict()
    a, b = earlier.state_dict(), final.state_dict()
    for k, v in exported.items():
        expected = 0.3 * a[k] + 0.7 * b[k] if v.is_floating_point() else b[k]
        torch.testing.assert_close(v, expected)
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["extra"]["average_share"] == 0.3
    # kept beside the final too, for a later phase to start from after the export is replaced
    kept = tmp_path / "exported" / "model.safetensors"
    assert kept.read_bytes() == (tmp_path / "export" / "model.safetensors").read_bytes()
    CompactModel(tiny_config(change=True)).save_pretrained(tmp_path / "other")
    cfg.export_average_with = str(tmp_path / "other")
    with pytest.raises(InputError, match="not a checkpoint of the model"):
        export_final(tmp_path / "final", cfg)


def test_export_can_reestimate_batchnorm_on_training_batches(tmp_path):
    """Only BatchNorm's statistics change, to the plain average over the drawn training batches:
    the first BatchNorm's running mean is the mean of its inputs over those same batches."""
    from geoseg.train.trainer import BATCHNORM_DRAW_STEP, export_final

    torch.manual_seed(0)
    CompactModel(tiny_config()).save_pretrained(tmp_path / "final")
    cfg = train_config_from_dict(_tiny(tmp_path, export_to=str(tmp_path / "export"), export_bn_batches=3))
    before = CompactModel.from_pretrained(tmp_path / "final").state_dict()
    after = CompactModel.from_pretrained(export_final(tmp_path / "final", cfg)).state_dict()
    stats = {k for k in before if k.endswith(("running_mean", "running_var"))}
    assert stats and all(not torch.equal(before[k], after[k]) for k in stats)
    assert all(torch.equal(before[k], after[k]) for k in before if k not in stats and "num_batches" not in k)

    # the first BatchNorm the images meet normalises the stem's output, which no statistics change
    model = CompactModel.from_pretrained(tmp_path / "final")
    seen: list[tuple[str, torch.Tensor]] = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.register_forward_pre_hook(lambda m, x, name=name: seen.append((name, x[0].mean(dim=(0, 2, 3)))))
    source = make_batch_source(cfg, start_step=BATCHNORM_DRAW_STEP)
    with torch.no_grad():
        means = []
        for _ in range(3):
            seen.clear()
            model.encode_images(source.next_batch().images)
            means.append(seen[0][1])
    first = seen[0][0]
    torch.testing.assert_close(after[f"{first}.running_mean"], torch.stack(means).mean(0))
    extra = json.loads((tmp_path / "export" / "config.json").read_text())["extra"]
    assert extra["batchnorm_reestimated_on"] == 3
    with pytest.raises(InputError, match="export_bn_batches"):
        train_config_from_dict(_tiny(tmp_path, export_bn_batches=-1))


def test_export_can_average_several_earlier_phases(tmp_path):
    """Thirds: the final and two earlier checkpoints, each at 1/3."""
    from geoseg.train.trainer import export_final

    torch.manual_seed(0)
    models = {name: CompactModel(tiny_config()) for name in ("p1", "p2", "final")}
    for name, model in models.items():
        model.save_pretrained(tmp_path / name)
    cfg = train_config_from_dict(_tiny(tmp_path, export_to=str(tmp_path / "export"), export_average_share=1 / 3,
                                       export_average_with=[str(tmp_path / "p1"), str(tmp_path / "p2")]))
    exported = CompactModel.from_pretrained(export_final(tmp_path / "final", cfg)).state_dict()
    states = [m.state_dict() for m in models.values()]
    for k, v in exported.items():
        expected = sum(s[k] for s in states) / 3 if v.is_floating_point() else states[2][k]
        torch.testing.assert_close(v, expected)
    with pytest.raises(InputError, match="between 0 and 1"):  # 2 x 0.5 leaves the final nothing
        train_config_from_dict(_tiny(tmp_path, export_average_share=0.5,
                                     export_average_with=[str(tmp_path / "p1"), str(tmp_path / "p2")]))


def test_ema_keeps_a_moving_average_across_a_resume_and_can_be_exported(tmp_path, one_thread):
    """checkpoints/ema is the moving average of the weights after each step: with decay 0 the
    final weights themselves, with decay 0.5 not; a resumed run goes on averaging (every step
    counted once); `export_ema` exports the average."""
    from geoseg.train.trainer import EMA_DIR

    def params(directory: Path) -> dict[str, torch.Tensor]:
        return dict(CompactModel.from_pretrained(directory).named_parameters())

    train(train_config_from_dict(_tiny(tmp_path / "d0", ema_decay=0.0)), progress=False)
    run = tmp_path / "d0" / "run" / "checkpoints"
    for k, v in params(run / EMA_DIR).items():
        torch.testing.assert_close(v, params(run / "final")[k])

    cfg = train_config_from_dict(_tiny(tmp_path / "d5", ema_decay=0.5, export_ema=True,
                                       export_to=str(tmp_path / "export")))
    cfg.steps = 2
    train(cfg, progress=False)
    cfg.steps = 4  # resumed from step 2
    train(cfg, progress=False)
    run = tmp_path / "d5" / "run" / "checkpoints"
    assert int(torch.load(run / "last" / STATE_NAME, weights_only=True)["ema"]["n_averaged"]) == 4
    ema, final = params(run / EMA_DIR), params(run / "final")
    assert any(not torch.equal(ema[k], final[k]) for k in ema)  # an average, not the last weights
    for k, v in params(tmp_path / "export").items():
        torch.testing.assert_close(v, ema[k])
    assert CompactModel.from_pretrained(tmp_path / "export").config.extra["ema_decay"] == 0.5
    with pytest.raises(InputError, match="ema_decay"):
        train_config_from_dict(_tiny(tmp_path, ema_decay=1.0))
    with pytest.raises(InputError, match="set ema_decay"):
        train_config_from_dict(_tiny(tmp_path, export_ema=True))
