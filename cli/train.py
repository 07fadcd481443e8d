"""`geoseg train CONFIG` and `geoseg evaluate MODEL DATASET`: parse, call the library, print."""

from __future__ import annotations

import json

import click

from geoseg.options import EVAL_SCALE_MAX


def _progress(ctx: click.Context) -> bool:
    return not (ctx.obj or {}).get("quiet", 0)


@click.command(short_help="Train a model (compact or SegEarth MLLM) from YAML/TOML configs, phase after phase.")
@click.argument("configs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--steps", type=int, default=None, help="Override the config's number of steps (one config only).")
@click.option("--run-dir", default=None, help="Override the config's run directory (one config only).")
@click.pass_context
def train_command(ctx: click.Context, configs: tuple[str, ...], steps: int | None, run_dir: str | None) -> None:
    """Train (or resume) the model CONFIGS describe, one phase after the other: the compact model
    or its change variant, or the SegEarth-R1 MLLM (LoRA, bi-temporal stages; a GPU).

    Checkpoints go to RUN_DIR/checkpoints/ (config.json + model.safetensors); an interrupted run
    continues from RUN_DIR/checkpoints/last when started again with the same config, and a phase
    that already reached its steps or time limit is kept as it is, so a chain of phases (each
    `init_from` the one before) can be started again until all are done. Progress is shown on
    stderr; stdout gets each phase's final checkpoint directory.

    \b
      geoseg train configs/compact-real.yaml configs/compact-real-2.yaml
      geoseg train configs/segearth-bitemporal-stage1.yaml configs/segearth-bitemporal-stage2.yaml
    """
    from geoseg.train.config import load_train_config
    from geoseg.train.trainer import train

    if len(configs) > 1 and (steps is not None or run_dir is not None):
        raise click.UsageError("--steps and --run-dir apply to a single config; edit the configs of a chain")
    loaded = [load_train_config(path) for path in configs]  # all parse before any trains
    for cfg in loaded:
        if steps is not None:
            cfg.steps = steps
        if run_dir is not None:
            cfg.run_dir = run_dir
        click.echo(str(train(cfg, progress=_progress(ctx))))


@click.command(short_help="Score a model on a dataset manifest (gIoU, cIoU, mIoU, oIoU, Pr@K).")
@click.argument("model")
@click.argument("dataset", type=click.Path(exists=True))
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Probability above which a pixel counts as the target.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, mps, ...")
@click.option("--scale", type=click.FloatRange(0, EVAL_SCALE_MAX, min_open=True), default=1.0, show_default=True,
              help="Read every image resampled by this factor (0.5: half the pixels per side, like --gsd at "
                   "twice the ground resolution); probabilities are resampled back onto the truth.")
@click.option("--tag", "tags", multiple=True, metavar="TAG",
              help="Score only the manifest lines carrying this tag (repeatable: all must match), e.g. area-split:val.")
@click.option("--per-sample", is_flag=True,
              help="Also list every (image, expression): IoU, precision, recall, true and predicted area shares.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.pass_context
def evaluate_command(ctx: click.Context, model: str, dataset: str, threshold: float, device: str, scale: float,
                     tags: tuple[str, ...], per_sample: bool, as_json: bool) -> None:
    """Evaluate MODEL (registry name, checkpoint directory or hub id) on DATASET (a JSONL
    manifest or its folder; see docs/dataset-format.md).

    IoU is 1 for a sample whose prediction and truth are both empty; Pr@t counts IoU > t.
    Numbers are given for all samples, non-empty targets and empty targets; gIoU 95% (JSON:
    gIoU_ci95_low and _high) is a bootstrap interval over the samples, to read small sets by.

    \b
      geoseg evaluate compact data/heldout/manifest.jsonl --json
      geoseg evaluate compact data/dubai-hitl --tag area-split:val
      geoseg evaluate compact data/dubai-hitl --tag area-split:val --scale 0.5
      geoseg evaluate compact data/dubai-hitl --tag area-split:val --per-sample --json
    """
    from geoseg.models.registry import load_segmenter
    from geoseg.train.evaluate import evaluate_manifest, format_report

    segmenter = load_segmenter(model, device=device)
    result = evaluate_manifest(segmenter, dataset, threshold=threshold, tags=tags, scale=scale,
                                progress=_progress(ctx), per_sample=per_sample)
    click.echo(json.dumps(result, indent=2) if as_json else format_report(result))
