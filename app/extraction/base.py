"""The extractor interface and the bounds every extractor keeps.

Workers cache an extraction under (content hash, ``identity``), so an extractor must change its
identity whenever its output for the same text may change (new rules, new prompt, new model).
"""

from __future__ import annotations

from typing import Literal, Protocol, get_args, runtime_checkable

from app.domain import Extraction

EntityType = Literal[
    "person", "organization", "place", "date", "quarter", "email", "url", "hashtag", "topic"
]
ENTITY_TYPES: frozenset[str] = frozenset(get_args(EntityType))

MAX_ENTITIES = 50
MAX_RELATIONS = 200
# Bounds on the work per text, whatever its size: characters scanned (about 0.1 s of regex
# work in the worst case) and regex matches handled in Python.
MAX_SCAN_CHARS = 100_000
MAX_MATCHES = 2_000
# Longer "names" are run-on junk (a URL may be long, but not this long).
MAX_NAME_CHARS = 200
MAX_URL_CHARS = 2_000
MAX_RAW_IN_ERROR = 2_000


class Extractor(Protocol):
    """Finds entities and relations in one text; must be deterministic for a given identity."""

    @property
    def identity(self) -> str:
        """Names the extractor and its version: the extraction cache's key with the content."""
        ...

    def extract(self, text: str) -> Extraction:
        """Entities and relations of ``text``; raises ExtractionError or ExtractionRetryable."""
        ...


@runtime_checkable
class Probed(Protocol):
    """An extractor that calls a remote endpoint, which its breaker can probe."""

    def probe(self) -> None:
        """Return when the endpoint answers and accepts our settings; raise like ``extract``."""
        ...
