"""The benchmark's sections, in the order a full run takes them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.context import Context
from bench.sections import check, http, lag, memory, projection, retrieval, search, write

Section = Callable[[Context], dict[str, Any]]

SECTIONS: dict[str, Section] = {
    "write": write.run,
    "projection": projection.run,
    "lag": lag.run,
    "check": check.run,
    "retrieval": retrieval.run,
    "search": search.run,
    "memory": memory.run,
    "http": http.run,
}
