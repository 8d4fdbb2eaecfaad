"""How the nlp extractor merges spaCy's findings with the rules' (pure: no spaCy here).

- The rules keep what they do exactly: quarters, dates, emails, URLs and hashtags. A spaCy name
  that overlaps one of those ("Q4" tagged ORG, a host name inside a URL) is dropped.
- spaCy types names: a rule name (person, organization, topic) that shares its words with a
  spaCy name (one contains the other, word by word) becomes that name with spaCy's type and
  spelling; rule names spaCy did not see stay as the rules typed them; spaCy names the rules
  missed (often a sentence's first word: "Priya called") are added. A sentence-initial spaCy
  name that ends with a rule name is cut to it ("Sold Peter" -> "Peter"); a name with a stray
  lower-case word ("Nick on Lake Geneva") is dropped.
- Relations: the rules' (their endpoints mapped to what replaced them), co-mentions of spaCy
  names within a sentence, and the parse's verb links, which name a pair better than a
  co-mention does.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from app.domain import Entity, Extraction, Relation, normalise_name
from app.extraction.base import MAX_ENTITIES, MAX_NAME_CHARS, MAX_RELATIONS

# Rule types kept as they are, and rule types spaCy may retype.
RULE_KEPT = frozenset({"quarter", "date", "email", "url", "hashtag"})
RULE_NAMES = frozenset({"person", "organization", "topic"})
CO_MENTIONED = "co_mentioned"

_WORD = re.compile(r"[^\W_]+")
_LEADING_ARTICLE = re.compile(r"^(?:the|a|an)\s+", re.IGNORECASE)
_TRAILING_POSSESSIVE = re.compile(r"['\u2019]s?$")
_EDGE_PUNCT = " \t\n\"'\u2018\u2019\u201c\u201d.,;:!?()[]{}-"
# Lower-case words a name may hold ("Bank of America"); any other one is a run-on span
# ("Nick on Lake Geneva"), dropped in favour of what the rules found there.
_CONNECTORS = frozenset(["of", "de", "da", "di", "du", "del", "della", "van", "von", "der",
                         "den", "la", "le", "and", "for", "&"])


@dataclass(frozen=True)
class Name:
    """A name spaCy found: its text as written, our type, its sentence's index, and whether it
    starts its sentence (where spaCy often takes a capitalised opener in: "Roommate Josh")."""

    text: str
    type: str
    sentence: int
    initial: bool = False


@dataclass(frozen=True)
class Link:
    """A relation the dependency parse supports between two names (by their ``text``)."""

    source: str
    target: str
    predicate: str


def clean_name(text: str) -> str:
    """A name as it should be stored: no leading article, possessive or edge punctuation."""
    name = " ".join(text.split()).strip(_EDGE_PUNCT)
    name = _LEADING_ARTICLE.sub("", name)
    name = _TRAILING_POSSESSIVE.sub("", name).strip(_EDGE_PUNCT)
    return name


def words(name: str) -> tuple[str, ...]:
    """The normalised words of a name, punctuation dropped ("Acme, Inc." -> acme, inc)."""
    return tuple(_WORD.findall(normalise_name(name)))


def _contains(outer: tuple[str, ...], inner: tuple[str, ...]) -> bool:
    n = len(inner)
    return n > 0 and any(outer[i:i + n] == inner for i in range(len(outer) - n + 1))


def overlaps(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """One name's words appear, in order, inside the other's."""
    return _contains(a, b) or _contains(b, a)


def _usable(name: str) -> bool:
    return (0 < len(name) <= MAX_NAME_CHARS and any(c.isalpha() for c in name)
            and any(c.isupper() for c in name)
            and all(w in _CONNECTORS or not w[:1].islower() for w in name.split()))


def _trim_opener(name: str, w: tuple[str, ...], rule_words: list[tuple[str, ...]]
                 ) -> tuple[str, tuple[str, ...]]:
    """A sentence-initial name cut to the rules' name it ends with ("Sold Peter" -> "Peter")."""
    for r in sorted(rule_words, key=len, reverse=True):
        if 0 < len(r) < len(w) and w[-len(r):] == r:
            kept = name.split()[len(w) - len(r):]
            if len(kept) == len(r):  # the words map one to one onto the written ones
                return " ".join(kept), r
    return name, w


class _Merged:
    """Entities and relations under the caps, deduplicated by (type, normalised name)."""

    def __init__(self) -> None:
        self.entities: list[Entity] = []
        self.index: dict[tuple[str, str], int] = {}
        self.relations: dict[tuple[int, int], tuple[int, int, str]] = {}

    def add(self, entity: Entity) -> int | None:
        key = (entity.type, normalise_name(entity.name))
        if key in self.index:
            return self.index[key]
        if len(self.entities) >= MAX_ENTITIES:
            return None
        self.index[key] = len(self.entities)
        self.entities.append(entity)
        return self.index[key]

    def relate(self, source: int | None, target: int | None, predicate: str) -> None:
        if source is None or target is None or source == target:
            return
        pair = (min(source, target), max(source, target))
        if pair not in self.relations:
            if len(self.relations) < MAX_RELATIONS:
                self.relations[pair] = (source, target, predicate)
        elif predicate != CO_MENTIONED:
            self.relations[pair] = (source, target, predicate)

    def result(self) -> Extraction:
        return Extraction(entities=list(self.entities), relations=[
            Relation(source=self.entities[s], target=self.entities[t], predicate=p)
            for s, t, p in self.relations.values()])


def combine(rules: Extraction, names: Sequence[Name], links: Sequence[Link]) -> Extraction:
    """The rules' extraction with spaCy's ``names`` typed in and its ``links`` added."""
    kept_words = [words(e.name) for e in rules.entities if e.type in RULE_KEPT]
    rule_words = [words(e.name) for e in rules.entities if e.type in RULE_NAMES]
    spacy: list[tuple[Entity, tuple[str, ...], int]] = []  # (entity, words, sentence)
    for n in names:
        text = clean_name(n.text)
        w = words(text)
        if not _usable(text) or not w or any(overlaps(w, k) for k in kept_words):
            continue
        if n.initial:
            text, w = _trim_opener(text, w, rule_words)
        spacy.append((Entity(name=text, type=n.type), w, n.sentence))

    out = _Merged()
    replaced: dict[Entity, int | None] = {}  # rule entity -> its index in the result
    for e in rules.entities:
        if e.type in RULE_NAMES:
            w = words(e.name)
            # The longest spaCy name that shares its words wins ("John" -> "John Smith").
            cover = max((s for s in spacy if overlaps(s[1], w)), key=lambda s: len(s[1]),
                        default=None)
            if cover is not None:
                replaced[e] = out.add(cover[0])
                continue
        replaced[e] = out.add(e)
    by_text: dict[str, int | None] = {}
    by_sentence: dict[int, list[int]] = {}
    for entity, _, sentence in spacy:
        index = out.add(entity)
        by_text.setdefault(entity.name, index)
        if index is not None and index not in by_sentence.setdefault(sentence, []):
            by_sentence[sentence].append(index)

    for r in rules.relations:
        out.relate(replaced.get(r.source), replaced.get(r.target), r.predicate)
    for members in by_sentence.values():
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                out.relate(a, b, CO_MENTIONED)
    for link in links:
        out.relate(by_text.get(clean_name(link.source)), by_text.get(clean_name(link.target)),
                   link.predicate)
    return out.result()
