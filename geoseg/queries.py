"""What a query says before any model reads it: whether it can be stored at all, and which way
a change query looks (appeared, disappeared or both) from its words."""

from __future__ import annotations

import re
from collections.abc import Iterable

from geoseg.errors import InputError

MAX_QUERY_CHARS = 100_000
APPEARED_WORDS = r"new|newly|built|constructed|construction|appeared|appearing|added|emerging|expanded|flood|flooded|flooding|inundated"
DISAPPEARED_WORDS = r"demolished|removed|destroyed|lost|missing|cleared|disappeared|razed|torn|vanished|felled"


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
