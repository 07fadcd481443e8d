"""What a model says it knows: the concepts and wordings it was trained on (its inventory), the
rule that decides whether a query is close enough to one of them, and the answer for each query.

A model that declares an inventory (the compact models, in config.json under `inventory`) is
asked `KnowsConcepts.check_queries` before a run: each query's sentence embedding is compared
with the embedding of every trained wording. A query whose nearest trained wording is less similar
than the rule's `min_similarity` is not known: the run warns (or, with `--unknown-query error`,
refuses) and the provenance says so. Comparing with wordings rather than concept names is what
separates "cars" (nearest wording "roads", far) from "homes" (nearest "buildings"... and closer
wordings such as "structures"); docs/models/compact.md, "Queries it does not know", says how the
threshold was chosen.

This module holds the typed values only (JSON in and out) and the arithmetic on embeddings; the
embeddings come from the model's own sentence encoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the typed values load without torch (CompactConfig reads them)
    import torch

ORIGINS = ("real", "composited", "synthetic")  # real labels; damage composited on real chips; rendered scenes
NEIGHBOURS = 3  # nearest trained concepts reported per query


@dataclass(frozen=True)
class TrainedConcept:
    """One concept the weights were trained on: its name, its wordings, where its labels came from."""

    name: str
    origin: str  # one of ORIGINS
    wordings: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.origin not in ORIGINS:
            raise ValueError(f"concept {self.name!r}: origin {self.origin!r} must be one of {', '.join(ORIGINS)}")
        if not self.wordings:
            raise ValueError(f"concept {self.name!r} lists no wordings")
        object.__setattr__(self, "wordings", tuple(self.wordings))

    def to_dict(self) -> dict:
        return {"name": self.name, "origin": self.origin, "wordings": list(self.wordings)}

    @classmethod
    def from_dict(cls, data: dict) -> TrainedConcept:
        return cls(str(data["name"]), str(data["origin"]), tuple(str(w) for w in data["wordings"]))


@dataclass(frozen=True)
class KnownRule:
    """A query is known when the cosine similarity of its sentence embedding to the nearest trained
    wording is at least `min_similarity`; `chosen_on` says how that number was chosen."""

    min_similarity: float
    chosen_on: str = ""

    def to_dict(self) -> dict:
        return {"min_similarity": round(float(self.min_similarity), 4), "chosen_on": self.chosen_on}

    @classmethod
    def from_dict(cls, data: dict) -> KnownRule:
        return cls(float(data["min_similarity"]), str(data.get("chosen_on", "")))


# Used when an inventory declares no rule of its own (e.g. weights exported before the rule was
# chosen for them): the threshold chosen for compact 0.7.1 and 0.8.0 (docs/models/compact.md).
DEFAULT_RULE = KnownRule(0.5294, "default: the threshold chosen for compact 0.7.1's and 0.8.0's inventories")


@dataclass(frozen=True)
class Inventory:
    """The concepts a model was trained on and the rule its queries are checked with."""

    concepts: tuple[TrainedConcept, ...]
    rule: KnownRule | None = None
    source: str = ""  # what produced it (the training configs), for people

    def __post_init__(self) -> None:
        object.__setattr__(self, "concepts", tuple(self.concepts))
        names = [c.name for c in self.concepts]
        if len(set(names)) != len(names):
            raise ValueError(f"inventory names a concept twice: {names}")

    @property
    def effective_rule(self) -> KnownRule:
        return self.rule or DEFAULT_RULE

    def wordings(self) -> list[tuple[str, str]]:
        """(wording, concept name) for every trained wording, in declaration order, each once."""
        seen: dict[str, str] = {}
        for c in self.concepts:
            for w in c.wordings:
                seen.setdefault(w, c.name)
        return list(seen.items())

    def with_rule(self, rule: KnownRule | None) -> Inventory:
        return Inventory(self.concepts, rule, self.source)

    def to_dict(self) -> dict:
        return {
            "concepts": [c.to_dict() for c in self.concepts],
            "rule": self.rule.to_dict() if self.rule else None,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Inventory:
        rule = data.get("rule")
        return cls(tuple(TrainedConcept.from_dict(c) for c in data.get("concepts", ())),
                   KnownRule.from_dict(rule) if rule else None, str(data.get("source", "")))


@dataclass(frozen=True)
class Neighbour:
    """A trained concept near a query: the best similarity over its wordings, and that wording."""

    concept: str
    similarity: float
    wording: str

    def to_dict(self) -> dict:
        return {"concept": self.concept, "similarity": round(self.similarity, 3), "wording": self.wording}


@dataclass(frozen=True)
class QueryKnowledge:
    """The check's answer for one query."""

    query: str
    known: bool
    nearest: tuple[Neighbour, ...]  # up to NEIGHBOURS trained concepts, most similar first
    min_similarity: float  # the rule it was judged by
    model: str = ""  # "compact 0.7.1": who was asked

    @property
    def similarity(self) -> float:
        return self.nearest[0].similarity if self.nearest else 0.0

    @property
    def wording(self) -> str | None:
        """The trained wording most similar to the query."""
        return self.nearest[0].wording if self.nearest else None

    def to_dict(self) -> dict:
        return {
            "query": self.query, "known": self.known, "similarity": round(self.similarity, 3),
            "wording": self.wording, "min_similarity": round(self.min_similarity, 4),
            "nearest": [n.to_dict() for n in self.nearest], "model": self.model,
        }

    def describe(self) -> str:
        """One line for people: what the model was trained on near this query."""
        near = ", ".join(f"{n.concept} {n.similarity:.2f}" for n in self.nearest)
        return (f'query "{self.query}" is not a concept {self.model} was trained on '
                f"(nearest: {near}; known from {self.min_similarity:.2f}); expect few or no polygons")


def sentence_embeddings(token_features: torch.Tensor) -> torch.Tensor:
    """L2-normalised sentence embeddings (M x D) from sentence tokens (M x D, mean-pooled)."""
    import torch

    return torch.nn.functional.normalize(token_features.float(), dim=-1)


def judge(
    queries: Sequence[str], query_vectors: torch.Tensor, inventory: Inventory, wording_vectors: torch.Tensor,
    *, model: str = "",
) -> list[QueryKnowledge]:
    """Each query against the inventory: `query_vectors` (Q x D) and `wording_vectors` (W x D, in
    `inventory.wordings()` order) are L2-normalised sentence embeddings."""
    pairs = inventory.wordings()
    if wording_vectors.shape[0] != len(pairs):
        raise ValueError(f"{wording_vectors.shape[0]} wording embeddings for {len(pairs)} wordings")
    rule = inventory.effective_rule
    similarity = query_vectors.float() @ wording_vectors.float().T  # Q x W cosine
    out = []
    for qi, query in enumerate(queries):
        best: dict[str, Neighbour] = {}
        for wi, (wording, concept) in enumerate(pairs):
            s = float(similarity[qi, wi])
            if concept not in best or s > best[concept].similarity:
                best[concept] = Neighbour(concept, s, wording)
        nearest = tuple(sorted(best.values(), key=lambda n: -n.similarity)[:NEIGHBOURS])
        known = bool(nearest) and nearest[0].similarity >= rule.min_similarity
        out.append(QueryKnowledge(query, known, nearest, rule.min_similarity, model))
    return out
