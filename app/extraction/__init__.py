"""Entity extractors behind one small interface: fast rules by default, an LLM as an option."""

from __future__ import annotations

from app.extraction.base import ENTITY_TYPES, MAX_ENTITIES, MAX_RELATIONS, EntityType, Extractor
from app.extraction.llm import SYSTEM_PROMPT, LLMExtractor
from app.extraction.rules import RuleExtractor
from app.settings import Settings


def make_extractor(settings: Settings) -> Extractor:
    """The extractor ``settings.extractor`` names."""
    if settings.extractor == "llm":
        return LLMExtractor(
            settings.llm_base_url,
            settings.llm_model,
            settings.llm_api_key,
            settings.llm_timeout_seconds,
        )
    return RuleExtractor()


__all__ = [
    "ENTITY_TYPES",
    "MAX_ENTITIES",
    "MAX_RELATIONS",
    "SYSTEM_PROMPT",
    "EntityType",
    "Extractor",
    "LLMExtractor",
    "RuleExtractor",
    "make_extractor",
]
