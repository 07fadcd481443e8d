"""The inventory a training config teaches (geoseg.models.concepts), derived from what it trains,
so it is declared once: the exported config.json says which concepts and wordings the weights saw.

- segment stage: the synthetic training phrases (geoseg.train.queries, split "train"), grouped by
  their class (every "large buildings", "red roofs" ... joins "buildings"); a class whose wordings
  a real concept shares (RealVocabulary.concepts) takes the real concept's name, wordings and origin
  `real` when a manifest of the config labels it; damage composited on real chips
  (RealVocabulary.composited) is `composited`; everything else `synthetic`;
- change stages: the change kinds with their training wordings; `real` for the kinds real pairs
  are made for (geoseg.train.real.CHANGE_KINDS) when the config has real data.

Never in it: the unrelated concepts of geoseg.train.queries (UNRELATED_*) and the held-out
wordings (HELDOUT_WORDS), which the unknown-query rule is chosen and scored on.

`choose_rule` picks the threshold on UNRELATED_TUNE / KNOWN_TUNE only (the fixed rule below);
`write_inventory` puts both into a checkpoint's config.json (the trainer's export calls it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from geoseg.models.compact.config import CompactConfig
from geoseg.models.compact.text import TextEncoder, shared_text_encoder
from geoseg.models.concepts import Inventory, KnownRule, TrainedConcept, judge, sentence_embeddings
from geoseg.train.config import TrainConfig
from geoseg.train.queries import (
    HELDOUT_WORDS,
    KNOWN_EVAL,
    KNOWN_TUNE,
    UNRELATED_EVAL,
    UNRELATED_TRAIN,
    UNRELATED_TUNE,
    queries_by_split,
)
from geoseg.train.real import CHANGE_KINDS, VAL_TAG, RealVocabulary
from geoseg.train.synth import vocab

log = logging.getLogger(__name__)

RULE_TEXT = (
    "min_similarity = the midpoint between the highest UNRELATED_TUNE similarity and the lowest KNOWN_TUNE "
    "similarity when they separate; otherwise the largest threshold that warns no KNOWN_TUNE wording "
    "(geoseg.train.queries, fixed before training; docs/models/unknown_queries.py)"
)


class TrainedWordings(Protocol):
    """What the inventory reads of geoseg.train.real.RealVocabulary (tests give a stand-in)."""

    concepts: dict[str, list[str]]  # real concept -> wordings
    composited: dict[str, list[str]]  # concept of damage composited on real chips -> wordings
    change: dict[str, list[str]]  # change kind -> wordings real (and composited) pairs are asked with


def _kept(wordings: Sequence[str]) -> list[str]:
    """Without held-out and unrelated wordings (they must stay out of the inventory), each once."""
    banned = set(UNRELATED_TRAIN) | set(UNRELATED_TUNE) | set(UNRELATED_EVAL) | set(KNOWN_EVAL)
    return [w for w in dict.fromkeys(wordings)
            if w not in banned and not HELDOUT_WORDS & set(w.replace("-", " ").split())]


def labelled_concepts(manifests: Sequence[str | Path]) -> set[str]:
    """The single-date concepts (manifest expressions) a config's real manifests label with at
    least one non-empty training mask (val lines never train)."""
    out: set[str] = set()
    for manifest in manifests:
        path = Path(manifest)
        path = path / "manifest.jsonl" if path.is_dir() else path
        try:
            lines = path.read_text().splitlines()
        except OSError as e:
            log.warning("inventory: %s unreadable (%s); its concepts are not counted as real", path, e)
            continue
        for line in lines:
            if not line.strip():
                continue
            rec = json.loads(line)
            if VAL_TAG in rec.get("tags", ()) or rec.get("empty") or "before" in rec:
                continue
            out.add(str(rec.get("expression", "")))
    return out


def _class_name(target: str) -> str:
    """A synthetic class's display name: its first wording ("damaged_building" -> "damaged buildings")."""
    groups = vocab.SYNONYMS.get(target)
    first = next(iter(groups.values()))[0] if groups else target.replace("_", " ")
    return first


def inventory_for(config: TrainConfig, words: TrainedWordings | None = None) -> Inventory:
    """The concepts and wordings `config` trains (see the module's docstring)."""
    words = words if words is not None else RealVocabulary()
    uses_real = bool(config.data.real) and config.data.real_share > 0
    labelled = labelled_concepts(config.data.real) if uses_real else set()
    names = [Path(m).parent.name if Path(m).name == "manifest.jsonl" else Path(m).name for m in config.data.real]
    source = f"real: {', '.join(names)}; synthetic scenes" if uses_real else "synthetic scenes"
    if config.stage != "segment":
        return Inventory(tuple(_change_concepts(config, words, labelled)), None, f"change stage {source}")

    # synthetic training phrases grouped by class (the part of the concept key before "/")
    by_class: dict[str, list[str]] = {}
    for q in queries_by_split()["train"]:
        by_class.setdefault(q.concept.split("/")[0], []).append(q.text)
    concepts: dict[str, tuple[str, list[str]]] = {}  # name -> (origin, wordings)
    for target, phrases in by_class.items():
        real = next((name for name, ws in words.concepts.items() if set(ws) & set(phrases)), None)
        if real is not None:
            origin = "real" if real in labelled else "synthetic"
            concepts[real] = (origin, list(words.concepts[real]) + phrases)
        else:
            concepts[_class_name(target)] = ("synthetic", phrases)
    for name, ws in words.concepts.items():  # real concepts with no synthetic class
        if name in labelled and name not in concepts:
            concepts[name] = ("real", list(ws))
    if composites(config, labelled):
        for name, ws in words.composited.items():
            origin, before = concepts.get(name, ("composited", []))
            concepts[name] = ("real" if origin == "real" else "composited", before + list(ws))
    out = [TrainedConcept(name, origin, tuple(_kept(ws))) for name, (origin, ws) in concepts.items()]
    return Inventory(tuple(c for c in out if c.wordings), None, source)


def composites(config: TrainConfig, labelled: set[str]) -> bool:
    """Whether `config` composites damage onto real building chips (data.damage_share)."""
    return config.data.damage_share > 0 and "buildings" in labelled


def _change_concepts(config: TrainConfig, words: TrainedWordings, labelled: set[str]) -> list[TrainedConcept]:
    """Change kinds: the synthetic ones with their wordings (origin `real` where real pairs are made
    for them), and, when damage is composited, the kinds only composited pairs teach."""
    real_kinds = {kind for concept, kinds in CHANGE_KINDS.items() if concept in labelled for kind in kinds if kind}
    damage = composites(config, labelled)
    by_kind: dict[str, tuple[str, list[str]]] = {}
    for q in queries_by_split()["change"]:
        kind = q.concept.removeprefix("change/")
        by_kind.setdefault(kind, ("real" if kind in real_kinds else "synthetic", []))[1].append(q.text)
    if damage:  # the wordings real and composited pairs add (e.g. "destroyed buildings")
        for kind, ws in words.change.items():
            if kind in by_kind:
                by_kind[kind][1].extend(ws)
            else:
                by_kind[kind] = ("composited", list(ws))
    out = [TrainedConcept(kind.replace("_", " "), origin, tuple(_kept(ws))) for kind, (origin, ws) in by_kind.items()]
    return [c for c in out if c.wordings]


# ---- the rule --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scored:
    """A wording's similarity to its nearest trained wording, and whether the rule warns it."""

    query: str
    similarity: float
    nearest: str
    warned: bool


def embed(text: TextEncoder, strings: Sequence[str]) -> torch.Tensor:
    """L2-normalised sentence embeddings (the mean-pooled sentence token the model also reads)."""
    return sentence_embeddings(text.encode(list(strings)).tokens[:, 0])


def score(inventory: Inventory, queries: Sequence[str], text: TextEncoder) -> list[Scored]:
    vectors = embed(text, [w for w, _ in inventory.wordings()])
    answers = judge(queries, embed(text, queries), inventory, vectors)
    return [Scored(a.query, a.similarity, f"{a.wording} ({a.nearest[0].concept})", not a.known) for a in answers]


def choose_rule(inventory: Inventory, text: TextEncoder) -> KnownRule:
    """The fixed rule (RULE_TEXT) applied to UNRELATED_TUNE and KNOWN_TUNE; nothing else is looked at."""
    probe = inventory.with_rule(KnownRule(0.0))
    unrelated = [s.similarity for s in score(probe, UNRELATED_TUNE, text)]
    known = [s.similarity for s in score(probe, KNOWN_TUNE, text)]
    high, low = max(unrelated), min(known)
    if high < low:
        threshold, how = (high + low) / 2, f"midpoint of {high:.3f} (highest unrelated) and {low:.3f} (lowest known)"
    else:
        threshold = low - 1e-4
        warned = sum(u < threshold for u in unrelated)
        how = (f"lowest known {low:.3f} is below the highest unrelated {high:.3f}: the largest threshold that warns no "
               f"KNOWN_TUNE wording, which warns {warned}/{len(unrelated)} UNRELATED_TUNE")
    return KnownRule(round(threshold, 4), f"chosen on UNRELATED_TUNE/KNOWN_TUNE (geoseg.train.queries): {how}")


def write_inventory(checkpoint: str | Path, inventory: Inventory, text: TextEncoder | None = None,
                    *, rule: KnownRule | None = None) -> Inventory:
    """Write `inventory` with its rule (given, or chosen here on the TUNE lists) into the
    checkpoint's config.json; returns what was written."""
    checkpoint = Path(checkpoint)
    config = CompactConfig.load(checkpoint)
    if rule is None:
        text = text or shared_text_encoder(config.text_encoder, config.max_text_tokens)
        rule = choose_rule(inventory, text)
    inventory = inventory.with_rule(rule)
    config.inventory = inventory
    config.save(checkpoint)
    return inventory


def export_inventory(export: str | Path, config: TrainConfig) -> Inventory:
    """The trainer's export hook: the inventory `config` trains, with its rule, in `export`."""
    return write_inventory(export, inventory_for(config))
