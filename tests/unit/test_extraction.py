"""Extractors: the rule tables, a property over any text, and the LLM answer handling."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain import Extraction, normalise_name
from app.errors import ConfigError, ExtractionError, ExtractionRetryable
from app.extraction import (
    ENTITY_TYPES,
    MAX_ENTITIES,
    MAX_RELATIONS,
    LLMExtractor,
    RuleExtractor,
    make_extractor,
)
from app.settings import Settings

RULES = RuleExtractor()


def found(text: str) -> list[tuple[str, str]]:
    return [(e.name, e.type) for e in RULES.extract(text).entities]


def links(extraction: Extraction) -> list[tuple[str, str, str]]:
    return [(r.source.name, r.predicate, r.target.name) for r in extraction.relations]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # the example from the design
        ("Meeting with John about Q4 roadmap", [("John", "person"), ("Q4", "quarter")]),
        # people
        ("I had coffee with John.", [("John", "person")]),
        ("Dinner with Sarah Connor tonight", [("Sarah Connor", "person")]),
        ("Ask Dr. Smith about the scan", [("Dr. Smith", "person")]),
        ("We owe Mrs Alvarez a card", [("Mrs Alvarez", "person")]),
        ("Remember Sarah's birthday", [("Sarah", "person")]),
        ("Our guide was Leonardo da Vinci", [("Leonardo da Vinci", "person")]),
        ("Met Łukasz Nowak at the airport", [("Łukasz Nowak", "person")]),
        # organisations
        ("She joined Acme Corp last week", [("Acme Corp", "organization")]),
        ("He moved to Deutsche Bank", [("Deutsche Bank", "organization")]),
        ("A job offer from Acme, Inc. arrived", [("Acme Inc", "organization")]),
        ("savings at Bank of America", [("Bank of America", "organization")]),
        ("shares of Procter & Gamble", [("Procter & Gamble", "organization")]),
        ("the grant from Zürich Labs", [("Zürich Labs", "organization")]),
        ("I sold IBM and bought NASA mugs", [("IBM", "organization"), ("NASA", "organization")]),
        ("FYI the CEO said OK ASAP", []),
        # dates
        ("Rent is due 2024-03-01", [("2024-03-01", "date")]),
        ("dentist on March 3", [("March 3", "date")]),
        ("flight on 3 March 2025", [("3 March 2025", "date")]),
        ("party on the 3rd of March", [("3rd of March", "date")]),
        ("launch on March 3rd, 2025", [("March 3rd, 2025", "date")]),
        ("moving in September 2025", [("September 2025", "date")]),
        ("yoga every Friday", [("Friday", "date")]),
        ("Call me tomorrow or today, not tonight", []),
        ("In March we ship.", []),
        # quarters
        ("targets for Q4", [("Q4", "quarter")]),
        ("hiring freeze until Q1 2025", [("Q1 2025", "quarter")]),
        # emails, URLs, hashtags
        ("write to jane.doe+work@acme.co.uk today", [("jane.doe+work@acme.co.uk", "email")]),
        ("or ...jo@acme.io, not a@b.c1", [("jo@acme.io", "email")]),
        ("see https://example.com/a?b=1.", [("https://example.com/a?b=1", "url")]),
        ("(docs at https://en.wikipedia.org/wiki/Foo_(bar))",
         [("https://en.wikipedia.org/wiki/Foo_(bar)", "url")]),
        ("tagged #launch and #1", [("#launch", "hashtag")]),
        # topics
        ("Review the Q4 Roadmap", [("Q4 Roadmap", "topic")]),
        ("Project Phoenix ships soon", [("Project Phoenix", "topic")]),
        ("we flew to San Francisco", [("San Francisco", "topic")]),
        # a sentence's first word is not a name just for its capital letter
        ("Gym at 6pm.", []),
        ("Lunch with Sarah", [("Sarah", "person")]),
        ("Pick up the kids. Buy milk.", []),
        ("Sarah loves sushi", [("Sarah", "person")]),
        ("John, Sarah and Mike", [("John", "person"), ("Sarah", "person"), ("Mike", "person")]),
        ("When Maria lands, call her", [("Maria", "person")]),
        ("Email Bob the slides", [("Bob", "person")]),
        ("", []),
    ],
)
def test_rule_entities(text: str, expected: list[tuple[str, str]]) -> None:
    assert found(text) == expected


def test_duplicates_keep_the_first_spelling_in_order_of_appearance() -> None:
    text = "Sarah  Connor met John. Later John called Sarah Connor about #Launch and #launch."
    assert found(text) == [
        ("Sarah Connor", "person"),
        ("John", "person"),
        ("#Launch", "hashtag"),
    ]


def test_same_name_with_different_types_is_two_entities() -> None:
    assert found("Friday is on Friday") == [("Friday", "date")]
    assert found("Mail jo@acme.io, https://acme.io.") == [
        ("jo@acme.io", "email"), ("https://acme.io", "url")
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "John, Sarah and Mike visited Acme Corp.",
            [
                ("John", "co_mentioned", "Sarah"),
                ("John", "co_mentioned", "Mike"),
                ("Sarah", "co_mentioned", "Mike"),
                ("John", "co_mentioned", "Acme Corp"),
                ("Sarah", "co_mentioned", "Acme Corp"),
                ("Mike", "co_mentioned", "Acme Corp"),
            ],
        ),
        ("John called. Sarah replied.", []),
        ("Sarah Connor works at Cyberdyne Systems.",
         [("Sarah Connor", "works_at", "Cyberdyne Systems")]),
        ("Priya, who works for Acme Corp, said hi",
         [("Priya", "works_at", "Acme Corp")]),
        ("John met Dr. Smith from NASA.",
         [("John", "met", "Dr. Smith"), ("John", "co_mentioned", "NASA"),
          ("Dr. Smith", "from", "NASA")]),
        ("Anna from Stripe Labs called", [("Anna", "from", "Stripe Labs")]),
        ("Mike is meeting with Anna on Friday",
         [("Mike", "met", "Anna"), ("Mike", "co_mentioned", "Friday"),
          ("Anna", "co_mentioned", "Friday")]),
        # one relation per pair, however often the pair appears; a verb wins over co-mention
        ("Anna and Mike talked. Later Mike met Anna.", [("Mike", "met", "Anna")]),
        # a verb links adjacent mentions only
        ("Yesterday John thanked Sarah who met Bob",
         [("John", "co_mentioned", "Sarah"), ("John", "co_mentioned", "Bob"),
          ("Sarah", "co_mentioned", "Bob")]),
    ],
)
def test_rule_relations(text: str, expected: list[tuple[str, str, str]]) -> None:
    assert links(RULES.extract(text)) == expected


def test_abbreviations_do_not_end_sentences() -> None:
    extraction = RULES.extract("Acme Inc. hired Dr. Smith. Bob left.")
    assert links(extraction) == [("Acme Inc", "co_mentioned", "Dr. Smith")]


def test_huge_input_is_capped_and_fast() -> None:
    text = " ".join(f"#tag{i} ops{i}@acme.io" for i in range(20_000))  # one 500 kB sentence
    started = time.perf_counter()
    extraction = RULES.extract(text)
    elapsed = time.perf_counter() - started
    assert len(extraction.entities) == MAX_ENTITIES
    assert len(extraction.relations) == MAX_RELATIONS
    assert elapsed < 2.0


@pytest.mark.parametrize(
    "text",
    ["a" * 1_000_000, "Aa " * 300_000, "x@" * 500_000, "#" * 1_000_000, "Q1 " * 300_000,
     "Zz" * 500_000],
)
def test_pathological_input_stays_bounded(text: str) -> None:
    started = time.perf_counter()
    extraction = RULES.extract(text)
    assert time.perf_counter() - started < 2.0
    assert all(len(e.name) <= 200 for e in extraction.entities)


def test_rules_are_deterministic_and_named() -> None:
    text = "Sarah met John at Acme Corp on 2024-03-01 about Project Phoenix."
    assert RULES.extract(text) == RuleExtractor().extract(text)
    assert RULES.identity == "rules/1"


_FRAGMENTS = st.sampled_from([
    "John", "Sarah Connor", "Dr. Smith", "Acme Corp", "IBM", "Q4", "Q1 2025", "2024-03-01",
    "March 3", "3 March 2025", "Friday", "a@b.io", "https://x.io/a(b)", "#tag", "Project",
    "met", "works at", "from", "Meeting", "of", "&", ".", ". ", "\n", ",", "'s", "Ł", "É",
    "tomorrow", "  ", "I", "The",
])


@settings(database=None, max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.lists(st.one_of(_FRAGMENTS, st.text(max_size=5))).map(" ".join)))
def test_any_text_gives_a_well_formed_extraction(text: str) -> None:
    extraction = RULES.extract(text)
    keys = [(e.type, normalise_name(e.name)) for e in extraction.entities]
    assert len(keys) == len(set(keys)) <= MAX_ENTITIES
    for entity in extraction.entities:
        assert entity.name.strip()
        assert entity.type in ENTITY_TYPES
    pairs = set()
    for relation in extraction.relations:
        assert relation.source in extraction.entities
        assert relation.target in extraction.entities
        assert relation.source != relation.target
        pairs.add(frozenset((relation.source, relation.target)))
    assert len(pairs) == len(extraction.relations) <= MAX_RELATIONS


# ---------------------------------------------------------------------------------------------
# LLM answer handling, through httpx's mock transport (the real HTTP path is an integration test)
# ---------------------------------------------------------------------------------------------

KEY = "sk-unit-secret"


def completion(content: str | None, finish_reason: str = "stop") -> dict[str, object]:
    return {"choices": [{"index": 0, "finish_reason": finish_reason,
                         "message": {"role": "assistant", "content": content}}]}


def llm(handler: Callable[[httpx.Request], httpx.Response]) -> LLMExtractor:
    transport = httpx.MockTransport(handler)
    return LLMExtractor("http://llm.test/v1", "m1", KEY, 1.0, transport=transport)


def answering(content: str | None, finish_reason: str = "stop") -> LLMExtractor:
    return llm(lambda _: httpx.Response(200, json=completion(content, finish_reason)))


def test_llm_answer_is_cleaned() -> None:
    answer = {
        "entities": [
            {"name": " John ", "type": "Person"},
            {"name": "john", "type": "PERSON"},
            {"name": "", "type": "person"},
            {"name": "Acme", "type": "Organization"},
        ],
        "relations": [
            {"source": "John", "target": "acme", "predicate": "Works At"},
            {"source": "John", "target": "Nobody", "predicate": "met"},
            {"source": "John", "target": "John", "predicate": "is"},
        ],
    }
    extractor = answering("```json\n" + json.dumps(answer) + "\n```")
    extraction = extractor.extract("John works at Acme")
    extractor.close()
    assert [(e.name, e.type) for e in extraction.entities] == [
        ("John", "person"), ("Acme", "organization")
    ]
    assert links(extraction) == [("John", "works_at", "Acme")]
    assert extractor.identity == "llm/m1/1"


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("not json at all", "not json at all"),
        ('{"entities": "John"}', '{"entities": "John"}'),
        ('[{"name": "John", "type": "person"}]', '[{"name": "John"'),
        (None, "no message content"),
    ],
)
def test_malformed_llm_answers_are_retryable(content: str | None, why: str) -> None:
    with pytest.raises(ExtractionRetryable) as info:
        answering(content).extract("text")
    assert why in str(info.value)


def test_raw_answer_in_the_error_is_truncated() -> None:
    with pytest.raises(ExtractionRetryable) as info:
        answering("x" * 10_000).extract("text")
    assert "x" * 2_000 in str(info.value)
    assert "x" * 2_001 not in str(info.value)


def test_content_filter_is_permanent() -> None:
    with pytest.raises(ExtractionError) as info:
        answering(None, finish_reason="content_filter").extract("text")
    assert not isinstance(info.value, ExtractionRetryable)


def test_the_key_never_reaches_an_error() -> None:
    def echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, text=f"bad key: {request.headers['authorization']}")

    with pytest.raises(ExtractionError) as info:
        llm(echo).extract("text")
    assert not isinstance(info.value, ExtractionRetryable)
    assert KEY not in str(info.value)
    assert "401" in str(info.value)


def test_transport_errors_are_retryable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(ExtractionRetryable):
        llm(refuse).extract("text")


def test_a_bad_base_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        LLMExtractor("llm.test/v1", "m1", KEY, 1.0)


def test_make_extractor_follows_the_setting() -> None:
    rules = Settings(_env_file=None, extractor="rules")
    assert isinstance(make_extractor(rules), RuleExtractor)
    chosen = make_extractor(
        Settings(_env_file=None, extractor="llm", llm_model="tiny", llm_api_key=KEY)
    )
    assert isinstance(chosen, LLMExtractor)
    assert chosen.identity == "llm/tiny/1"
    chosen.close()
