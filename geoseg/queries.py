"""What a query says before any model reads it: whether it can be stored at all, the layer name it
gets, and which way a change query looks (appeared, disappeared or both) from its words.

A run parses its queries once (`parse_queries`) into `Query` values that travel with it to the
vector file; the model's check (KnowsConcepts) is added to them before any tile runs.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from geoseg.errors import InputError

if TYPE_CHECKING:
    from geoseg.models.concepts import QueryKnowledge

MAX_QUERY_CHARS = 100_000
APPEARED_WORDS = r"new|newly|built|constructed|construction|appeared|appearing|added|emerging|expanded|flood|flooded|flooding|inundated"
DISAPPEARED_WORDS = r"demolished|removed|destroyed|lost|missing|cleared|disappeared|razed|torn|vanished|felled"


# GeoPackage table names: at most 63 characters, none of SQLite's or GeoPackage's own
MAX_LAYER_NAME = 63
RESERVED_PREFIXES = ("gpkg_", "rtree_", "sqlite_")
RESERVED_NAMES = ("layer_styles",)


@dataclass(frozen=True)
class Query:
    """A query as a run carries it: its text (stored verbatim), the layer it is written to, and what
    the model knows of it (None: not checked, the model declares no concepts)."""

    text: str
    layer: str
    knowledge: QueryKnowledge | None = None

    def knowing(self, knowledge: QueryKnowledge) -> Query:
        return replace(self, knowledge=knowledge)


def parse_queries(texts: Iterable[str], *, layer: str | None = None) -> list[Query]:
    """The run's queries, each checked once (validate_queries) and named: `layer` (--layer) or the
    slug of its text (layer_name_for). Two queries may slug alike; the writer makes names unique."""
    return [Query(text, layer or layer_name_for(text)) for text in validate_queries(texts)]


def layer_name_for(query: str) -> str:
    """A layer name from a query: lowercase ASCII [a-z0-9_], at most 63 characters, never empty.

    Accents are folded ("bâtiments" -> "batiments"), everything else becomes "_"; a name that
    would start with a digit or a reserved GeoPackage prefix gets "q_" in front.
    """
    folded = unicodedata.normalize("NFKD", query).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "_", folded.lower()).strip("_")
    if not slug:
        slug = "query"
    if slug[0].isdigit() or slug.startswith(RESERVED_PREFIXES) or slug in RESERVED_NAMES:
        slug = f"q_{slug}"
    return slug[:MAX_LAYER_NAME].rstrip("_")


def validate_queries(queries: Iterable[str]) -> list[str]:
    """Queries are stored verbatim; only what no database or model can carry is refused."""
    out = []
    for q in queries:
        if not isinstance(q, str) or not q.strip():
            raise InputError("the query is empty; say what to find, e.g. \"buildings\"")
        if "\x00" in q:
            raise InputError("the query contains a NUL character; remove it")
        if len(q) > MAX_QUERY_CHARS:
            raise InputError(f"the query has {len(q)} characters; keep it under {MAX_QUERY_CHARS}")
        out.append(q)
    return out


def change_direction(query: str) -> str:
    """appeared | disappeared | both, read from the words of a change query."""
    words = query.lower()
    appeared = re.search(rf"\b({APPEARED_WORDS})\b", words) is not None
    disappeared = re.search(rf"\b({DISAPPEARED_WORDS})\b", words) is not None
    if appeared == disappeared:
        return "both"
    return "appeared" if appeared else "disappeared"
