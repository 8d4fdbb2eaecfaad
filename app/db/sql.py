"""Load the named statements of ``queries.sql`` into a dict of SQLAlchemy ``text()`` objects."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from sqlalchemy import TextClause, text


def parse(source: str, comment: str = "--") -> dict[str, str]:
    """Split a file of named statements into {name: statement}; comment lines are dropped.

    An entry starts with a line ``-- name --`` (``// name //`` for Cypher, ``comment`` chosen
    by the caller) followed by the statement; text before the first entry is a file header.
    """
    marker = re.escape(comment)
    entry = re.compile(rf"^{marker} (\w+) {marker}$", re.MULTILINE)
    parts = entry.split(source)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [ln for ln in body.strip().splitlines() if not ln.lstrip().startswith(comment)]
        if name in queries:
            raise ValueError(f"duplicate statement name {name!r}")
        queries[name] = "\n".join(lines).strip().rstrip(";")
    return queries


@cache
def queries() -> dict[str, TextClause]:
    source = (Path(__file__).parent / "queries.sql").read_text()
    return {name: text(sql) for name, sql in parse(source).items()}


def q(name: str) -> TextClause:
    """The named statement."""
    return queries()[name]
