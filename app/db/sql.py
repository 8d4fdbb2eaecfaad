"""Load the named statements of ``queries.sql`` into a dict of SQLAlchemy ``text()`` objects."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from sqlalchemy import TextClause, text

_ENTRY = re.compile(r"^-- (\w+) --$", re.MULTILINE)


def parse(source: str) -> dict[str, str]:
    """Split the file into {name: sql}; comment lines inside an entry are dropped."""
    parts = _ENTRY.split(source)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [ln for ln in body.strip().splitlines() if not ln.lstrip().startswith("--")]
        if name in queries:
            raise ValueError(f"duplicate query name {name!r}")
        queries[name] = "\n".join(lines).strip().rstrip(";")
    return queries


@cache
def queries() -> dict[str, TextClause]:
    source = (Path(__file__).parent / "queries.sql").read_text()
    return {name: text(sql) for name, sql in parse(source).items()}


def q(name: str) -> TextClause:
    """The named statement."""
    return queries()[name]
