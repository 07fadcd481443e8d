"""Which queries the training data asks, and which are held out for evaluation.

The wordings and what they mean come from geoseg.train.synth.vocab (concepts = instance filters or
change kinds; phrases = wordings with their synonym group and attribute set). This module only
decides the splits and draws (phrase, mask) pairs for a crop:

- held-out synonyms: every phrase whose noun belongs to HELDOUT_SYNONYMS ("houses", "homes",
  "streets"), and every other phrase that uses one of their words ("damaged houses");
- held-out attributes: every phrase of an attribute set in HELDOUT_ATTRIBUTES (white roofs);
- held-out change wordings: HELDOUT_CHANGE_PHRASES;
- held-out single words (HELDOUT_EXTRA_WORDS: "ponds", "woodland", "cropland"): wordings a user types
  that must be understood from their neighbours; with "houses", "homes" and "streets" they are the
  wordings the unknown-query check is scored on, so they stay out of training and of the model's
  declared inventory.
None of these is ever shown in training; evaluation reports them as separate groups.

Concepts the models are NOT meant to know are fixed here too, in three disjoint lists (fixed before
the 0.8 training, docs/models/compact.md "Queries it does not know"):
- UNRELATED_TRAIN: asked on real crops with empty masks, so the existence head learns to answer
  "nothing" to a concept it was never shown;
- UNRELATED_TUNE and KNOWN_TUNE: the wordings the unknown-query rule (its similarity threshold) is
  chosen on;
- UNRELATED_EVAL and KNOWN_EVAL: the wordings it is scored on, never used to choose anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from geoseg.train.synth import vocab

HELDOUT_SYNONYMS = ("building:houses", "road:streets")
HELDOUT_ATTRIBUTES = ("white_roof",)
HELDOUT_CHANGE_PHRASES = ("added buildings", "missing buildings", "new tracks", "inundated fields")
HELDOUT_EXTRA_WORDS = ("pond", "ponds", "woodland", "cropland")
TRAIN_CHANGE_KINDS = vocab.DEFAULT_CHANGE_KINDS

UNRELATED_TRAIN = (
    "helicopters", "trains", "construction cranes", "lighthouses", "chimneys", "playgrounds", "tents",
    "cattle", "sheep", "horses", "people", "traffic lights", "statues", "fountains", "billboards",
    "satellite dishes", "radio antennas", "bicycles", "motorcycles", "buses", "trucks", "flags",
    "benches", "ski lifts", "camels", "cranes on a port",
)
UNRELATED_TUNE = (
    "ferris wheels", "runways", "helipads", "piers", "race tracks", "tractors", "ice rinks",
    "transmission towers", "oil rigs", "water towers",
)
KNOWN_TUNE = (
    "bodies of water", "forested areas", "highways", "dwellings", "agricultural land", "reservoirs", "motorways",
    "residential buildings", "flooded houses", "collapsed houses",
)
UNRELATED_EVAL = (
    "zebra crossings", "bridges", "boats", "stadiums", "golf courses", "solar panels", "cars",
    "airplanes", "wind turbines", "tennis courts", "shipping containers", "oil storage tanks",
    "cemeteries", "power lines", "greenhouses", "baseball fields",
)
KNOWN_EVAL = ("houses", "homes", "streets", "ponds", "cropland", "woodland")

InstanceTable = list[tuple[int, str, str, dict]]  # (id, class, subclass, attributes)


@dataclass(frozen=True)
class Query:
    text: str
    concept: str
    split: str  # "train", "synonym", "attribute" (held out)


def _heldout_words() -> frozenset[str]:
    """Every word of the held-out synonym groups: training never shows them in any phrase."""
    words = set()
    for key in HELDOUT_SYNONYMS:
        target, group = key.split(":")
        for wording in vocab.SYNONYMS[target][group]:
            words.update(wording.split())
    return frozenset(words | set(HELDOUT_EXTRA_WORDS))


HELDOUT_WORDS = _heldout_words()


def split_of(phrase: vocab.Phrase) -> str:
    uses_heldout_word = bool(HELDOUT_WORDS & set(phrase.text.replace("-", " ").split()))
    if phrase.kind == "change":
        heldout = phrase.text in HELDOUT_CHANGE_PHRASES or uses_heldout_word
        return "change_heldout" if heldout else "change"
    if phrase.attribute in HELDOUT_ATTRIBUTES:
        return "attribute"
    if phrase.synonym in HELDOUT_SYNONYMS or uses_heldout_word:
        return "synonym"
    return "train"


def queries_by_split() -> dict[str, list[Query]]:
    """{"train", "synonym", "attribute", "change", "change_heldout"} -> queries."""
    out: dict[str, list[Query]] = {}
    for p in vocab.PHRASES:
        if p.kind == "change" and vocab.VOCABULARY[p.concept].change not in TRAIN_CHANGE_KINDS:
            continue
        split = split_of(p)
        out.setdefault(split, []).append(Query(p.text, p.concept, split))
    return out


def by_concept(queries: list[Query]) -> dict[str, list[Query]]:
    out: dict[str, list[Query]] = {}
    for q in queries:
        out.setdefault(q.concept, []).append(q)
    return out


def concept_mask(concept_key: str, instance_ids: np.ndarray, table: InstanceTable) -> np.ndarray:
    """Truth mask of a (non-change) concept: pixels of every instance it selects."""
    concept = vocab.VOCABULARY[concept_key]
    ids = [i for i, cls, sub, attrs in table if vocab.matches(cls, sub, attrs, concept)]
    if not ids:
        return np.zeros(instance_ids.shape, bool)
    return np.isin(instance_ids, ids)


def choose_queries(
    rng: np.random.Generator,
    concepts: dict[str, list[Query]],
    mask_of: Callable[[str], np.ndarray],
    n: int,
    empty_share: float,
    min_pixels: int = 16,
    near_miss_share: float = 0.0,
) -> list[tuple[Query, np.ndarray]]:
    """Pick n (query, mask) pairs for one crop, about `empty_share` of them with empty masks.

    A target covering fewer than `min_pixels` pixels is neither asked for nor used as an empty
    example (a sliver at the crop's edge is ambiguous). About `near_miss_share` of the empty draws
    are near misses when the crop has any: absent concepts of a class the crop shows ("red roofs"
    where every roof is grey), the negatives that teach an attribute word to restrict."""
    present, absent = [], []
    for key in concepts:
        mask = mask_of(key)
        area = int(mask.sum())
        if area >= min_pixels:
            present.append((key, mask))
        elif area == 0:
            absent.append((key, mask))
    shown = {vocab.VOCABULARY[key].target for key, _ in present}
    near_misses = [(key, mask) for key, mask in absent if vocab.VOCABULARY[key].target in shown]
    picks = []
    for key, mask in draw_targets(rng, present, absent, n, empty_share, near_misses, near_miss_share):
        options = concepts[key]
        picks.append((options[int(rng.integers(len(options)))], mask))
    return picks


def draw_targets(rng: np.random.Generator, present: list, absent: list, n: int, empty_share: float,
                 near_misses: Sequence = (), near_miss_share: float = 0.0) -> Iterator:
    """Up to n draws from `present` (targets in the crop) or, about `empty_share` of the time and
    whenever nothing is present, from `absent` (from its subset `near_misses` about
    `near_miss_share` of those times); a generator, so a caller's own draws between two of these
    keep their place in the random stream. With `near_miss_share` 0 the stream is the one drawn
    before near misses existed."""
    for _ in range(n):
        want_empty = rng.random() < empty_share or not present
        pool: Sequence = absent if (want_empty and absent) or not present else present
        if pool is absent and near_misses and near_miss_share > 0 and rng.random() < near_miss_share:
            pool = near_misses
        if not pool:
            return
        yield pool[int(rng.integers(len(pool)))]
