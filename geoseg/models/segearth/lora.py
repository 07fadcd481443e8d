"""LoRA on the LLM's attention projections (peft), and merging it back into plain weights.

Only the Phi layers are adapted (`model.layers.N.self_attn.{q_proj,k_proj,v_proj,dense}`); the
regular expression keeps peft away from same-named modules elsewhere. After `merge_lora` the
network has exactly the keys of a plain checkpoint again, so `save_checkpoint` writes a directory
that `load_segearth_segmenter` reads like any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

PHI_ATTENTION = ("q_proj", "k_proj", "v_proj", "dense")


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")  # SegEarth-R2 / LISA choice

    def __post_init__(self):
        unknown = set(self.target_modules) - set(PHI_ATTENTION)
        if unknown or not self.target_modules:
            raise ValueError(
                f"LoRA target_modules must be among {PHI_ATTENTION} (the LLM attention "
                f"projections), not {sorted(unknown) or 'nothing'}"
            )
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, not {self.rank}")


def target_pattern(modules: Sequence[str]) -> str:
    """peft matches a string target with re.fullmatch against each module's full name."""
    return rf"model\.layers\.\d+\.self_attn\.({'|'.join(modules)})"


def apply_lora(net: nn.Module, settings: LoraSettings):
    """Wrap the targeted projections with LoRA adapters in place; returns peft's LoraModel (keep it
    for `merge_lora`). Only the adapter weights are trainable afterwards; callers unfreeze the
    heads they also train."""
    from peft import LoraConfig
    from peft.tuners.lora import LoraModel

    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=target_pattern(settings.target_modules),
        bias="none",
    )
    return LoraModel(net, config, "default")


def merge_lora(lora_model) -> nn.Module:
    """Fold the adapters into the base weights and remove the wrappers; returns the plain network."""
    return lora_model.merge_and_unload()
