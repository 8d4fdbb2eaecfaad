"""Named statements: files of SQL or Cypher split into ``{name: statement}``.

Both stores keep every statement in one file (``app/db/queries.sql``,
``app/graph/queries.cypher``); an entry starts with a line ``-- name --`` (``// name //`` for
Cypher) followed by a one-line purpose as a comment and the statement.
"""

from __future__ import annotations

import re
from pathlib import Path


def parse(source: str, comment: str = "--") -> dict[str, str]:
    """Split a file of named statements into {name: statement}; comment lines are dropped.

    Text before the first entry is a file header. A name used twice is an error.
    """
    marker = re.escape(comment)
    entry = re.compile(rf"^{marker} (\w+) {marker}$", re.MULTILINE)
    parts = entry.split(source)
    statements: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [ln for ln in body.strip().splitlines() if not ln.lstrip().startswith(comment)]
        if name in statements:
            raise ValueError(f"duplicate statement name {name!r}")
        statements[name] = "\n".join(lines).strip().rstrip(";")
    return statements


def load(path: Path, comment: str = "--") -> dict[str, str]:
    """The named statements of one file."""
    return parse(path.read_text(encoding="utf-8"), comment)
