"""The nlp extractor's merge of spaCy's names and links with the rules (pure: no spaCy), and
the web process never importing spaCy."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest

from app.domain import Entity, Extraction, Relation
from app.extraction import MAX_ENTITIES, MAX_RELATIONS, RuleExtractor
from app.extraction.combine import CO_MENTIONED, Link, Name, clean_name, combine, overlaps, words

RULES = RuleExtractor()


def ents(x: Extraction) -> list[tuple[str, str]]:
    return [(e.name, e.type) for e in x.entities]


def rels(x: Extraction) -> set[tuple[str, str, str]]:
    return {(r.source.name, r.predicate, r.target.name) for r in x.relations}


def test_spacy_types_the_names_the_rules_found() -> None:
    text = "Alice works at Siemens in Munich."
    assert ents(RULES.extract(text)) == [("Alice", "person"), ("Siemens", "person"),
                                         ("Munich", "person")]
    names = [Name("Alice", "person", 0), Name("Siemens", "organization", 0),
             Name("Munich", "place", 0)]
    merged = combine(RULES.extract(text), names, [Link("Alice", "Siemens", "works_at")])
    assert ents(merged) == [("Alice", "person"), ("Siemens", "organization"),
                            ("Munich", "place")]
    assert ("Alice", "works_at", "Siemens") in rels(merged)
    assert ("Siemens", CO_MENTIONED, "Munich") in rels(merged)


def test_the_rules_keep_quarters_dates_emails_urls_and_hashtags() -> None:
    text = "Priya: Q4 plan due 2024-03-01, see https://acme.io/q4 #launch, mail jo@acme.io"
    rules = RULES.extract(text)
    # spaCy's usual slips: a quarter as ORG, a host inside a URL as a place, an email's user.
    names = [Name("Priya", "person", 0), Name("Q4", "organization", 0),
             Name("acme.io", "place", 0), Name("Jo@acme.io", "person", 0)]
    merged = combine(rules, names, [])
    kept = [(n, t) for n, t in ents(merged) if t in ("quarter", "date", "url", "hashtag",
                                                     "email")]
    assert kept == [(n, t) for n, t in ents(rules) if t in ("quarter", "date", "url",
                                                            "hashtag", "email")]
    assert len(kept) == 5
    assert ("Priya", "person") in ents(merged)
    assert not any(t in ("organization", "place") for _, t in ents(merged))


def test_names_the_rules_missed_are_added_and_unseen_rule_names_stay() -> None:
    text = "Priya booked the table. Lunch with Marco at Osteria Roma."
    rules = RULES.extract(text)
    assert ("Priya", "person") not in ents(rules)  # a sentence's first word: the rules pass
    merged = combine(rules, [Name("Priya", "person", 0), Name("Osteria Roma", "place", 1)], [])
    assert ("Priya", "person") in ents(merged)
    assert ("Marco", "person") in ents(merged)  # spaCy did not see it: the rules' name stays
    assert ("Osteria Roma", "place") in ents(merged)


def test_the_longest_covering_name_replaces_a_rule_name_and_its_relations() -> None:
    rules = Extraction(
        entities=[Entity(name="John", type="person"), Entity(name="Acme", type="person")],
        relations=[Relation(source=Entity(name="John", type="person"),
                            target=Entity(name="Acme", type="person"), predicate="from")])
    names = [Name("John", "person", 0), Name("John Smith", "person", 0),
             Name("the Acme, Inc.", "organization", 0)]
    merged = combine(rules, names, [])
    assert ents(merged) == [("John Smith", "person"), ("Acme, Inc", "organization"),
                            ("John", "person")]
    assert ("John Smith", "from", "Acme, Inc") in rels(merged)


def test_a_verb_link_names_a_pair_better_than_a_co_mention() -> None:
    names = [Name("Alice", "person", 0), Name("Bob", "person", 0),
             Name("Acme Corp", "organization", 0)]
    links = [Link("Alice", "Acme Corp", "works_at"), Link("Bob", "Acme Corp", "works_at")]
    merged = combine(Extraction(), names, links)
    assert rels(merged) == {("Alice", CO_MENTIONED, "Bob"), ("Alice", "works_at", "Acme Corp"),
                            ("Bob", "works_at", "Acme Corp")}


def test_names_in_different_sentences_are_not_co_mentioned() -> None:
    merged = combine(Extraction(), [Name("Alice", "person", 0), Name("Berlin", "place", 1)],
                     [])
    assert rels(merged) == set()


@pytest.mark.parametrize(
    ("raw", "clean"),
    [("Sarah's", "Sarah"), ("the Louvre", "Louvre"), ("  Acme  Corp. ", "Acme Corp"),
     ("\u201cBerlin\u201d", "Berlin"), ("Chris\u2019", "Chris")],
)
def test_names_are_cleaned(raw: str, clean: str) -> None:
    assert clean_name(raw) == clean


def test_a_sentence_opener_is_cut_to_the_rules_name() -> None:
    rules = Extraction(entities=[Entity(name="Peter", type="person")])
    merged = combine(rules, [Name("Sold Peter's", "person", 0, initial=True),
                             Name("Volvo", "organization", 0)], [])
    assert ents(merged) == [("Peter", "person"), ("Volvo", "organization")]
    # Not at a sentence's start: spaCy's longer name stands.
    merged = combine(rules, [Name("Sold Peter", "person", 0)], [])
    assert ents(merged) == [("Sold Peter", "person")]


def test_a_run_on_span_gives_way_to_the_rules() -> None:
    text = "Fishing with Nick on Lake Geneva in June"
    merged = combine(RULES.extract(text), [Name("Nick on Lake Geneva", "organization", 0)], [])
    assert ents(merged) == ents(RULES.extract(text))
    assert combine(Extraction(), [Name("Bank of America", "organization", 0)], []
                   ).entities == [Entity(name="Bank of America", type="organization")]


def test_unusable_names_are_dropped() -> None:
    names = [Name("2024", "organization", 0), Name("lowercase thing", "place", 0),
             Name("'s", "person", 0), Name("X" * 500, "person", 0)]
    assert combine(Extraction(), names, []).entities == []


def test_words_and_overlap() -> None:
    assert words("Acme, Inc.") == ("acme", "inc")
    assert overlaps(words("John"), words("John Smith"))
    assert not overlaps(words("John Smith"), words("Smithers"))
    assert not overlaps((), words("John"))


def test_the_caps_hold() -> None:
    names = [Name(f"Person{i:03d} Name", "person", 0) for i in range(MAX_ENTITIES * 2)]
    links = [Link(a.text, b.text, "met") for a, b in itertools.pairwise(names)]
    merged = combine(Extraction(), names, links)
    assert len(merged.entities) == MAX_ENTITIES
    assert len(merged.relations) == MAX_RELATIONS
    assert all(r.source in merged.entities and r.target in merged.entities
               for r in merged.relations)


def test_links_to_unknown_names_are_ignored() -> None:
    merged = combine(Extraction(), [Name("Alice", "person", 0)],
                     [Link("Alice", "Nobody", "met"), Link("Alice", "Alice", "met")])
    assert merged.relations == []


def test_the_web_process_never_imports_spacy() -> None:
    # A fresh interpreter: this one may have loaded spaCy for other tests.
    code = ("import sys\n"
            "from app.api import create_app\n"
            "from app.settings import Settings\n"
            "from app.wiring import build_services\n"
            "settings = Settings(extractor='nlp', embedding_provider='hashing')\n"
            "create_app(settings)\n"
            "assert type(build_services(settings).extractor).__name__ == 'NlpExtractor'\n"
            "assert 'spacy' not in sys.modules, 'spacy imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
