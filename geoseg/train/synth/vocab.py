"""The query vocabulary of synthetic scenes, as data.

A *concept* says how to compute a mask: which target class, which attribute filters (relations
such as "near the river" are boolean attributes computed from geometry in `layout.RELATIONS`),
or which change kind. A *phrase* is one wording of a concept and records the synonym group of
its noun and the attribute set it uses, so a trainer can hold out, e.g., every phrase that says
"houses" or every phrase about red roofs:

    train = [p for p in PHRASES if p.synonym != "building:houses" and p.attribute != "red_roof"]
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

# Class masks: target name -> (instance class, attribute filters). These are the per-class masks
# of every rendered scene. A destroyed building (a heap of rubble) is a damaged building but no
# longer a building; a damaged one (broken roof) is both.
CLASS_FILTERS: dict[str, tuple[str, tuple[tuple[str, tuple], ...]]] = {
    "building": ("building", (("damage", ("intact", "damaged")),)),
    "damaged_building": ("building", (("damage", ("damaged", "destroyed")),)),
    "road": ("road", ()),
    "water": ("water", ()),
    "tree": ("tree", ()),
    "field": ("field", ()),
    "bare": ("bare", ()),
}
CLASS_NAMES = tuple(CLASS_FILTERS)
CHANGE_KINDS = ("new_buildings", "demolished_buildings", "new_roads", "flooding", "damaged_buildings")
DEFAULT_CHANGE_KINDS = ("new_buildings", "new_roads", "demolished_buildings", "flooding")


@dataclass(frozen=True)
class Concept:
    """How to compute the mask of a family of phrases."""

    key: str
    kind: str  # "class" | "attribute" | "relation" | "change"
    target: str  # a CLASS_NAMES entry, or the change kind for kind == "change"
    where: tuple[tuple[str, tuple], ...] = ()  # extra (attribute, allowed values) filters
    attribute: str | None = None  # attribute set this concept belongs to (for hold-outs)

    @property
    def change(self) -> str | None:
        return self.target if self.kind == "change" else None


@dataclass(frozen=True)
class Phrase:
    """One wording of a concept."""

    text: str
    concept: str
    kind: str
    synonym: str | None = None  # "<target>:<group>" of the noun used, None when none
    attribute: str | None = None


# Noun synonym groups per target: group -> wordings (the first is the plural used in templates).
SYNONYMS: dict[str, dict[str, tuple[str, ...]]] = {
    "building": {
        "buildings": ("buildings", "building"),
        "houses": ("houses", "house", "homes"),
        "roofs": ("roofs", "rooftops"),
        "structures": ("structures", "built structures"),
    },
    "damaged_building": {
        "damaged": ("damaged buildings", "damaged building", "damaged houses", "damaged structures"),
        "destroyed": ("destroyed buildings", "destroyed houses"),
        "rubble": ("rubble", "debris", "ruins"),
        "affected": ("buildings affected by the disaster", "disaster-damaged buildings"),
    },
    "road": {
        "roads": ("roads", "road"),
        "streets": ("streets", "street"),
        "network": ("road network", "the road network", "roadways"),
    },
    "water": {
        "water": ("water", "water bodies", "waterbodies"),
        "open_water": ("open water", "surface water"),
    },
    "tree": {
        "trees": ("trees", "tree"),
        "canopy": ("tree canopy", "tree crowns", "canopy"),
    },
    "field": {
        "fields": ("fields", "field"),
        "farmland": ("farmland", "cropland", "agricultural fields", "crop fields"),
    },
    "bare": {
        "bare": ("bare ground", "bare soil", "bare land"),
        "exposed": ("exposed soil", "barren land", "open ground"),
    },
}

# Attribute / relation concepts: key -> (kind, target, filters, attribute set, templates).
# "{noun}" is filled with the plural of every synonym group of the target.
_REFINEMENTS: dict[str, tuple[str, str, tuple[tuple[str, tuple], ...], str, tuple[str, ...]]] = {
    "building/large": ("attribute", "building", (("large", (True,)),), "large",
                       ("large {noun}", "big {noun}")),
    "building/small": ("attribute", "building", (("large", (False,)),), "small",
                       ("small {noun}", "little {noun}")),
    "building/red_roof": ("attribute", "building", (("roof_colour", ("red",)),), "red_roof",
                          ("red-roofed {noun}", "{noun} with red roofs", "red roofs", "red tiled roofs")),
    "building/white_roof": ("attribute", "building", (("roof_colour", ("white",)),), "white_roof",
                            ("white-roofed {noun}", "{noun} with white roofs", "white roofs")),
    "building/grey_roof": ("attribute", "building", (("roof_colour", ("grey", "dark_grey")),), "grey_roof",
                           ("grey-roofed {noun}", "{noun} with grey roofs", "grey roofs", "gray roofs")),
    "building/flat_roof": ("attribute", "building", (("roof_type", ("flat",)),), "flat_roof",
                           ("flat-roofed {noun}", "{noun} with flat roofs", "flat roofs")),
    "building/l_shaped": ("attribute", "building", (("shape", ("L",)),), "l_shaped",
                          ("l-shaped {noun}",)),
    "building/intact": ("attribute", "building", (("damage", ("intact",)),), "intact",
                        ("intact {noun}", "undamaged {noun}", "{noun} without damage")),
    "building/partially_damaged": ("attribute", "building", (("damage", ("damaged",)),), "partially_damaged",
                                   ("partially damaged {noun}", "{noun} with broken roofs", "damaged roofs")),
    "building/destroyed": ("attribute", "damaged_building", (("damage", ("destroyed",)),), "destroyed",
                           ("completely destroyed {noun}", "collapsed {noun}", "flattened {noun}")),
    "road/paved": ("attribute", "road", (("paved", (True,)),), "paved",
                   ("paved {noun}", "asphalt {noun}", "tarmac roads")),
    "road/dirt": ("attribute", "road", (("paved", (False,)),), "dirt",
                  ("dirt {noun}", "unpaved {noun}", "dirt tracks", "gravel roads")),
    "road/main": ("attribute", "road", (("kind", ("main",)),), "main",
                  ("main {noun}", "major {noun}", "wide roads")),
    "water/river": ("attribute", "water", (("subclass", ("river",)),), "river",
                    ("river", "rivers", "the river", "stream")),
    "water/lake": ("attribute", "water", (("subclass", ("lake",)),), "lake",
                   ("lake", "lakes", "pond", "ponds")),
    "tree/woodland": ("attribute", "tree", (("subclass", ("woodland",)),), "woodland",
                      ("woodland", "woods", "forest", "forest patches")),
    "tree/single": ("attribute", "tree", (("subclass", ("single",)),), "single",
                    ("single {noun}", "isolated {noun}", "individual {noun}")),
    "field/ploughed": ("attribute", "field", (("subclass", ("ploughed",)),), "ploughed",
                       ("ploughed {noun}", "plowed {noun}")),
    "field/rapeseed": ("attribute", "field", (("subclass", ("rapeseed",)),), "rapeseed",
                       ("rapeseed {noun}", "canola {noun}")),
    "building/near_river": ("relation", "building", (("near_river", (True,)),), "near_river",
                            ("{noun} next to the river", "{noun} near the river", "{noun} along the river",
                             "riverside {noun}")),
    "building/near_water": ("relation", "building", (("near_water", (True,)),), "near_water",
                            ("{noun} near water", "{noun} by the water", "waterfront {noun}")),
    "building/along_road": ("relation", "building", (("along_road", (True,)),), "along_road",
                            ("{noun} along the road", "{noun} next to the road", "{noun} by the road",
                             "roadside {noun}")),
    "building/away_from_road": ("relation", "building", (("along_road", (False,)),), "away_from_road",
                                ("{noun} away from roads", "{noun} far from the road")),
    "damaged_building/near_river": ("relation", "damaged_building", (("near_river", (True,)),), "near_river",
                                    ("{noun} next to the river", "{noun} near the river")),
    "tree/along_road": ("relation", "tree", (("along_road", (True,)),), "along_road",
                        ("{noun} along the road", "street trees", "roadside {noun}")),
    "field/near_river": ("relation", "field", (("near_river", (True,)),), "near_river",
                         ("{noun} next to the river", "{noun} near the river", "riverside {noun}")),
    "road/near_river": ("relation", "road", (("near_river", (True,)),), "near_river",
                        ("{noun} along the river", "{noun} next to the river")),
}

CHANGE_PHRASES: dict[str, tuple[str, ...]] = {
    "new_buildings": ("new buildings", "newly built buildings", "new houses", "newly constructed buildings",
                      "new construction", "buildings that appeared", "added buildings"),
    "demolished_buildings": ("demolished buildings", "removed buildings", "torn down buildings", "demolished houses",
                             "buildings that disappeared", "missing buildings"),
    "new_roads": ("new roads", "newly built roads", "new streets", "road construction", "roads that appeared",
                  "new tracks"),
    "flooding": ("flooded fields", "flooding", "flooded areas", "inundated fields", "flood water", "new water"),
    "damaged_buildings": ("newly damaged buildings", "buildings damaged between the dates", "building damage",
                          "new damage"),
}


def normalise(text: str) -> str:
    """Lower case, single spaces, no trailing punctuation, no leading article, hyphens as spaces."""
    t = text.strip().lower().replace("-", " ").replace("gray", "grey")
    t = re.sub(r"[.!?]+$", "", t)
    t = re.sub(r"\s+", " ", t).strip()
    t = re.sub(r"^(all of the|all the|all|the) ", "", t)
    return t


def _build() -> tuple[dict[str, Concept], tuple[Phrase, ...]]:
    concepts: dict[str, Concept] = {}
    phrases: list[Phrase] = []
    for target, groups in SYNONYMS.items():
        concepts[target] = Concept(target, "class", target)
        for group, words in groups.items():
            phrases += [Phrase(w, target, "class", f"{target}:{group}") for w in words]
    for key, (kind, target, where, attr, templates) in _REFINEMENTS.items():
        concepts[key] = Concept(key, kind, target, where, attr)
        for tpl in templates:
            if "{noun}" not in tpl:
                phrases.append(Phrase(tpl, key, kind, None, attr))
                continue
            # "collapsed {noun}" reads "collapsed buildings", not "collapsed damaged buildings"
            nouns = "building" if (target == "damaged_building" and kind == "attribute") else target
            for group, words in SYNONYMS[nouns].items():
                phrases.append(Phrase(tpl.format(noun=words[0]), key, kind, f"{nouns}:{group}", attr))
    for change, words in CHANGE_PHRASES.items():
        concepts[f"change/{change}"] = Concept(f"change/{change}", "change", change, (), change)
        phrases += [Phrase(w, f"change/{change}", "change", None, change) for w in words]
    unique: dict[str, Phrase] = {}
    for p in phrases:  # one concept per wording, or queries would be ambiguous
        first = unique.setdefault(normalise(p.text), p)
        if first.concept != p.concept:
            raise AssertionError(f"phrase {p.text!r} names both {first.concept} and {p.concept}")
    return concepts, tuple(unique.values())


VOCABULARY, PHRASES = _build()
PHRASE_INDEX: dict[str, Phrase] = {normalise(p.text): p for p in PHRASES}
ATTRIBUTE_SETS: dict[str, tuple[str, ...]] = {}
for _c in VOCABULARY.values():
    if _c.attribute:
        ATTRIBUTE_SETS[_c.attribute] = (*ATTRIBUTE_SETS.get(_c.attribute, ()), _c.key)
EXPRESSIONS: dict[str, tuple[str, ...]] = {}  # concept key -> its wordings
for _p in PHRASES:
    EXPRESSIONS[_p.concept] = (*EXPRESSIONS.get(_p.concept, ()), _p.text)
SYNONYM_SETS: tuple[str, ...] = tuple(f"{t}:{g}" for t, groups in SYNONYMS.items() for g in groups)


class UnknownPhraseError(KeyError):
    """The phrase is not in the synthetic vocabulary."""

    def __str__(self) -> str:
        return str(self.args[0])


def resolve(phrase: str) -> Concept:
    """The concept a phrase (or a concept key such as "building/red_roof") stands for."""
    if phrase in VOCABULARY:
        return VOCABULARY[phrase]
    key = normalise(phrase)
    if key in PHRASE_INDEX:
        return VOCABULARY[PHRASE_INDEX[key].concept]
    if key.replace(" ", "_") in VOCABULARY:
        return VOCABULARY[key.replace(" ", "_")]
    close = difflib.get_close_matches(key, list(PHRASE_INDEX), n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownPhraseError(f"phrase {phrase!r} is not in the synthetic vocabulary{hint}")


def filters_of(concept: Concept) -> tuple[str, tuple[tuple[str, tuple], ...]]:
    """(instance class, all attribute filters) selecting the instances of a non-change concept."""
    if concept.kind == "change":
        raise ValueError(f"{concept.key} is a change concept; it has a change mask, not an instance filter")
    cls, base = CLASS_FILTERS[concept.target]
    return cls, base + concept.where


def matches(cls: str, subclass: str, attrs: dict, concept: Concept) -> bool:
    """True when an instance (class, subclass, attributes) belongs to the concept's target."""
    want_cls, where = filters_of(concept)
    if cls != want_cls:
        return False
    for name, allowed in where:
        value = subclass if name == "subclass" else attrs.get(name)
        if value not in allowed:
            return False
    return True


def phrases_for(concept_key: str) -> tuple[Phrase, ...]:
    return tuple(p for p in PHRASES if p.concept == concept_key)
