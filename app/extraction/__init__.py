"""Entity extractors behind one small interface: fast rules by default, an LLM or spaCy (nlp,
in the worker only) as options."""

from __future__ import annotations

from app.extraction.base import (
    ENTITY_TYPES,
    MAX_ENTITIES,
    MAX_RELATIONS,
    EntityType,
    Extractor,
    Probed,
)
from app.extraction.llm import SYSTEM_PROMPT, LLMExtractor
from app.extraction.nlp import NlpExtractor
from app.extraction.rules import RuleExtractor
from app.settings import Settings


def make_extractor(settings: Settings) -> Extractor:
    """The extractor ``settings.extractor`` names.

    An LLM call never outlasts a quarter of the lease (a worker must finish its rows within
    their lease), and a thread waits out at most a tenth of it (1 s at most) for a rate limit.
    """
    if settings.extractor == "llm":
        return LLMExtractor(
            settings.llm_base_url,
            settings.llm_model,
            settings.llm_api_key,
            min(settings.llm_timeout_seconds, settings.lease_seconds / 4),
            max_wait=min(1.0, settings.lease_seconds / 10),
        )
    if settings.extractor == "nlp":
        # spaCy is imported and the model loaded on first use (or by ``load()``), not here.
        return NlpExtractor()
    return RuleExtractor()


__all__ = [
    "ENTITY_TYPES",
    "MAX_ENTITIES",
    "MAX_RELATIONS",
    "SYSTEM_PROMPT",
    "EntityType",
    "Extractor",
    "LLMExtractor",
    "NlpExtractor",
    "Probed",
    "RuleExtractor",
    "make_extractor",
]
