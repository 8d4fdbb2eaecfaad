"""Every named SQL and Cypher statement is used, and every name the code asks for exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from app import statements
from app.db.connector import sql
from app.graph.neo4j import cypher

APP = Path(__file__).resolve().parents[2] / "app"
# Calls that take a statement name as their first argument.
SQL_CALLS = {"one", "all", "scalar", "execute", "execute_many", "_clause", "_psycopg"}
CYPHER_CALLS = {"c"}


def _sources() -> list[Path]:
    return [p for p in APP.rglob("*.py") if "migrations" not in p.parts]


def _asked(calls: set[str]) -> dict[str, list[str]]:
    """Statement names passed as a literal first argument to one of ``calls``, with where."""
    found: dict[str, list[str]] = {}
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            first = node.args[0]
            if name in calls and isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.setdefault(first.value, []).append(f"{path.name}:{node.lineno}")
    return found


def _literals() -> set[str]:
    """Every string literal in the app's code."""
    return {node.value for path in _sources()
            for node in ast.walk(ast.parse(path.read_text(), str(path)))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)}


def test_every_sql_name_the_code_asks_for_exists() -> None:
    missing = {name: where for name, where in _asked(SQL_CALLS).items() if name not in sql()}
    assert not missing


def test_every_cypher_name_the_code_asks_for_exists() -> None:
    missing = {name: where for name, where in _asked(CYPHER_CALLS).items()
               if name not in cypher()}
    assert not missing


@pytest.mark.parametrize("kind", ["sql", "cypher"])
def test_every_statement_is_used(kind: str) -> None:
    names = set(sql() if kind == "sql" else cypher())
    assert names - _literals() == set()


def test_each_entry_has_a_one_line_purpose() -> None:
    for path, comment in ((APP / "db" / "queries.sql", "--"),
                          (APP / "graph" / "queries.cypher", "//")):
        text = path.read_text()
        for name in statements.parse(text, comment):
            after = text.split(f"{comment} {name} {comment}\n", 1)[1]
            assert after.startswith(f"{comment} "), f"{path.name}: {name} has no purpose line"


def test_parse_refuses_a_duplicate_name() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        statements.parse("-- a --\nSELECT 1;\n-- a --\nSELECT 2;\n")


def test_a_statement_drops_comments_and_the_semicolon() -> None:
    parsed = statements.parse("-- header\n-- a --\n-- purpose\nSELECT 1\n-- note\nFROM t;\n")
    assert parsed == {"a": "SELECT 1\nFROM t"}
    assert re.fullmatch(r"\w+", next(iter(parsed)))
