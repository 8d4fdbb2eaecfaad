"""The rule-based extractor (the default): deterministic regular expressions, no I/O."""

from __future__ import annotations

import re
from collections.abc import Iterator

from app.domain import Entity, Extraction, Relation, normalise_name
from app.extraction.base import (
    MAX_ENTITIES,
    MAX_MATCHES,
    MAX_NAME_CHARS,
    MAX_RELATIONS,
    MAX_SCAN_CHARS,
    MAX_URL_CHARS,
)


def _upper_class() -> str:
    # Upper-case letters of Latin-1, Latin Extended-A, Greek and Cyrillic, so "Łukasz" or
    # "Ωmega" start a name; re has no \p{Lu}, and Extended-A interleaves upper and lower case.
    blocks = [(0xC0, 0xDF), (0x100, 0x17F), (0x391, 0x3A9), (0x400, 0x42F)]
    chars = "".join(chr(c) for lo, hi in blocks for c in range(lo, hi + 1) if chr(c).isupper())
    return "A-Z" + re.escape(chars)


_UP = _upper_class()


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_SP = r"[ \t\u00a0]+"  # phrases never span a line break
_MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"
_MON_ABBR = "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept|Sep|Oct|Nov|Dec"
_WEEKDAYS = "Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday"
_TITLES = "Dr|Mr|Mrs|Ms|Mx|Prof|Sir|Dame|Rev"
_ORG_LEGAL = "Inc|LLC|LLP|Ltd|Corp|GmbH|PLC|AG|Co"
_CONNECTORS = "of|de|da|di|du|del|della|van|von|der|den|la|le|&"
_DAY = r"\d{1,2}(?:st|nd|rd|th)?\b"
_YEAR = r"\d{4}(?!\d)"
# Month and weekday names never start a phrase token: they are dates (or nothing, "in March").
_NOT_CALENDAR = rf"(?!(?:{_MONTHS}|{_WEEKDAYS})s?\b|(?:{_MON_ABBR})\.?{_SP}\d)"
# A title starts a new phrase: "Meeting Dr. Smith" -> "Meeting", "Dr. Smith".
_NOT_TITLE = rf"(?!(?:{_TITLES})\.?{_SP})"
_CAPWORD = rf"{_NOT_CALENDAR}[{_UP}][^\W_]*(?:['\u2019-][^\W_]+)*"

# One pass over the text; at a given position the first alternative that matches wins, so the
# order is the priority (a URL beats the capitalised word inside it). Every alternative starts
# at a word boundary (look-behinds), which keeps the scan linear on long runs of one character.
_SCAN = re.compile(
    rf"""
    (?P<url>\b(?:https?://|www\.)[^\s<>"'`]+)
    |(?P<email>(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+)
    |(?P<hashtag>(?<![\w#&/])\#\w+)
    |(?P<date>
        (?<![\w/-])\d{{4}}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])(?!\d)
      |(?<!\w){_DAY}{_SP}(?:of{_SP})?(?:{_MONTHS}|{_MON_ABBR})\b(?:,?{_SP}{_YEAR})?
      |(?<!\w)(?:{_MONTHS}|{_MON_ABBR})\.?{_SP}{_DAY}(?:,?{_SP}{_YEAR})?
      |(?<!\w)(?:{_MONTHS}){_SP}{_YEAR}
      |(?<!\w)(?i:{_WEEKDAYS})\b
    )
    |(?P<quarter>(?<!\w)(?>Q[1-4](?:{_SP}(?:FY)?{_YEAR})?)(?![\w'\u2019]|{_SP}[{_UP}]))
    |(?P<phrase>(?<![\w@\#/.])
        (?P<title>(?:{_TITLES})\.?{_SP})?
        {_CAPWORD}
        (?:(?:{_SP}(?:(?:{_CONNECTORS}){_SP})?|,[ \t]*(?=(?:{_ORG_LEGAL})\b))
           {_NOT_TITLE}{_CAPWORD}){{0,5}}
    )
    """,
    re.VERBOSE,
)

_SENTENCE_END = re.compile(r"[.!?\u2026]+(?=[\s\"'\u201d\u2019)\]]|$)|\n")
# Words whose trailing period is not a sentence end.
_ABBREVIATIONS = _words(
    "dr mr mrs ms mx prof sir rev st jr sr inc corp ltd co vs approx dept"
)
# What may precede the first word of a sentence: space, quotes, bullets, list numbers.
_LEADING = re.compile(r"[\s\"'\u201c\u2018(\[*\u2022>#\-\u2013\u2014\d.)]*")
# A sentence-initial single word counts as a name only when followed by one of these.
_PERSON_CONTEXT = re.compile(
    rf"{_SP}(?:and|or|&|met|meets|said|says|told|asked|called|emailed|texted|wrote|replied|works"
    r"|worked|is|was|will|would|can|could|has|had|wants|wanted|needs|needed|likes|liked|loves"
    r"|loved|hates|prefers|lives|lived|moved|joined|left|from|who|thinks|thought|mentioned"
    rf"|suggested|agreed|sent|shared|recommended|owes)\b|,[ \t]*(?:who\b|[{_UP}])"
)
# Words that link two adjacent entities: "X works at Y", "X met Y", "X from Y".
_VERB_LINK = re.compile(
    r"\s*,?\s*(?:"
    r"(?P<works_at>(?:who\s+)?(?:(?:now|still|currently)\s+)?(?:works|worked|working"
    r"|is\s+working|has\s+worked)\s+(?:at|for))"
    r"|(?P<met>(?:met|meets|meeting|will\s+meet|is\s+meeting|has\s+met)(?:\s+with)?)"
    r"|(?P<from>(?:who\s+is\s+|is\s+|are\s+)?from)"
    r")\s*",
    re.IGNORECASE,
)
_MAX_LINK_GAP = 40
_TOKEN = re.compile(r"[^\s,]+")
_QUARTER_TOKEN = re.compile(r"Q[1-4]")

# Capitalised words that are never (part of) a name: function words, imperatives, time words.
_STOP = _words(
    """
    a an the i i'm i've i'll i'd we you he she it they me my our your his her its their this
    that these those there here what when where who why how which if then and or but so
    because also just maybe please thanks thank hi hello hey dear yes no not ok okay after
    before during since until while on in at for from with about to by as all any some every
    each both many much more most other another such only very really still even next last
    today tomorrow tonight yesterday now soon later morning afternoon evening night weekend
    remember remind note call email text ask tell buy get send check book schedule pick pay
    finish prepare discuss follow make take bring need needs want wants must should could
    would will can might let lets let's don't do does did is are was were be been have has
    had go going met meet see saw talked spoke said user likes loves prefers hates keep try
    add update fix move cancel confirm todo fyi asap re fwd ps nb btw tbd eod eow rsvp
    calling meeting emailing texting visiting seeing having getting buying sending
    mr mrs ms mx dr prof sir dame rev
    """
)
# Sentence-initial words that start an activity, not a name: "Meeting with John", "Lunch ...".
_EVENT_WORDS = _words(
    "meeting call lunch dinner breakfast coffee sync chat catch-up review interview "
    "appointment"
)
# Common nouns: alone they are not entities; inside a capitalised phrase they make it a topic.
_COMMON = _EVENT_WORDS | _words(
    """
    standup roadmap plan planning report launch sprint release budget deadline demo
    presentation birthday anniversary party trip vacation holiday conference summit workshop
    offsite kickoff retro retrospective notes agenda goals okrs strategy proposal contract
    invoice doc docs document team project program programme initiative campaign operation
    feature product design office home work gym dentist doctor school week month year
    rent bill bills taxes car house flat apartment kitchen dog cat kids wifi password weather
    traffic groceries laundry tea water food
    """
)
_ORG_SUFFIXES = _words(
    """
    Inc Corp Corporation Ltd LLC LLP PLC GmbH AG SA SAS BV NV Co Company Labs Lab Group
    University College Institute Bank Foundation Association Partners Holdings Technologies
    Systems Software Ventures Capital Studios Studio Agency Ministry Council Hospital Society
    Industries Enterprises Solutions Consulting Media Networks Airlines Motors Pharmaceuticals
    """
)
_ORG_HEADS = _words("University Bank Institute Ministry College Department Museum")
# First words of place names ("New York", "San Diego"): a topic rather than a person.
_PLACE_HEADS = _words("New San Santa Los Las St Saint Fort Mount Lake Port North South East West")
# All-caps words that are not organisations.
_ACRONYM_STOP = _words(
    """
    OK TODO ASAP FYI TBD EOD EOW RSVP BTW IMO FWIW LOL NB PS AKA DIY ID TV AM PM UTC GMT EST
    PST CET CEO CTO CFO COO CIO VP HR PR ETA FAQ PDF URL API AI ML IT QA UI UX SQL JSON HTML
    CSS USB SMS OKR OKRS KPI ROI MVP POC RE FW FWD US UK EU USA NB
    """
)
_CONNECTOR_WORDS = frozenset(_CONNECTORS.split("|"))


def _strip_possessive(token: str) -> tuple[str, bool]:
    if token.endswith(("'s", "\u2019s")) and len(token) > 2:
        return token[:-2], True
    return token, False


def _is_acronym(token: str) -> bool:
    return token.isalpha() and token.isupper() and 2 <= len(token) <= 6


def _classify(tokens: list[str], initial: bool, person_context: bool) -> str | None:
    """The type of a capitalised phrase (tokens without stop words), or None to drop it."""
    if len(tokens) == 1:
        token = tokens[0]
        if _QUARTER_TOKEN.fullmatch(token):
            return "quarter"
        if token.isupper() and token.isalpha():
            return "organization" if _is_acronym(token) and token not in _ACRONYM_STOP else None
        if any(c.isdigit() for c in token):
            return "topic"
        lower = token.lower()
        if lower in _COMMON or token in _ORG_SUFFIXES or len(token) < 2:
            return None
        # A sentence's first word is capitalised anyway: only a name-like context makes it one.
        if initial and not person_context:
            return None
        return "person"
    if tokens[-1] in _ORG_SUFFIXES or "&" in tokens or (tokens[0] in _ORG_HEADS and "of" in tokens):
        return "organization"
    if len(tokens) > 3 or tokens[0] in _PLACE_HEADS or any(
        t.lower() in _COMMON or _is_acronym(t) or any(c.isdigit() for c in t) for t in tokens
    ):
        return "topic"
    return "person"


def _clean_url(url: str) -> str:
    # Sentence punctuation is not part of a URL; a closing bracket only when it is unbalanced.
    while url and url[-1] in ".,;:!?'\")]}":
        if url[-1] == ")" and url.count("(") >= url.count(")"):
            break
        url = url[:-1]
    return url


class _Builder:
    """Collects entities and relations under the caps, one sentence at a time."""

    __slots__ = ("entities", "keys", "last", "relations", "sentence")

    def __init__(self) -> None:
        self.entities: list[tuple[str, str]] = []
        self.keys: dict[tuple[str, str], int] = {}
        # (low index, high index) -> (source index, target index, predicate)
        self.relations: dict[tuple[int, int], tuple[int, int, str]] = {}
        self.sentence: list[int] = []  # distinct entities of the current sentence, in order
        self.last: tuple[int, int] | None = None  # (entity index, end offset) of last mention

    def full(self) -> bool:
        return len(self.entities) >= MAX_ENTITIES and len(self.relations) >= MAX_RELATIONS

    def new_sentence(self) -> None:
        self.sentence = []
        self.last = None

    def _relate(self, source: int, target: int, predicate: str) -> None:
        key = (min(source, target), max(source, target))
        if key not in self.relations:
            if len(self.relations) < MAX_RELATIONS:
                self.relations[key] = (source, target, predicate)
        elif predicate != "co_mentioned":
            # A verb names the relation better than co-occurrence; the pair keeps its place.
            self.relations[key] = (source, target, predicate)

    def mention(self, text: str, type_: str, name: str, start: int, end: int) -> None:
        if len(name) > (MAX_URL_CHARS if type_ == "url" else MAX_NAME_CHARS):
            return
        key = (type_, normalise_name(name))
        index = self.keys.get(key)
        if index is None:
            if len(self.entities) >= MAX_ENTITIES:
                return
            index = self.keys[key] = len(self.entities)
            self.entities.append((name, type_))
        if index not in self.sentence:
            for other in self.sentence:
                self._relate(other, index, "co_mentioned")
            self.sentence.append(index)
        if self.last is not None and self.last[0] != index:
            gap_start = self.last[1]
            if start - gap_start <= _MAX_LINK_GAP:
                link = _VERB_LINK.fullmatch(text, gap_start, start)
                if link is not None and link.lastgroup is not None:
                    self._relate(self.last[0], index, link.lastgroup)
        self.last = (index, end)

    def result(self) -> Extraction:
        entities = [Entity(name=n, type=t) for n, t in self.entities]
        relations = [
            Relation(source=entities[s], target=entities[t], predicate=p)
            for s, t, p in self.relations.values()
        ]
        return Extraction(entities=entities, relations=relations)


class RuleExtractor:
    """Deterministic regex rules: people, organisations, dates, quarters, emails, URLs,
    hashtags and capitalised topics, related by co-mention or a few verb patterns."""

    identity = "rules/1"

    def extract(self, text: str) -> Extraction:
        """Entities in order of first appearance and one relation per pair in a sentence."""
        out = _Builder()
        ends = _SENTENCE_END.finditer(text)
        sentence_start = 0
        boundary = self._next_boundary(text, ends)
        for count, match in enumerate(_SCAN.finditer(text, 0, MAX_SCAN_CHARS)):
            if count >= MAX_MATCHES or out.full():
                break
            start = match.start()
            if start >= boundary:
                while start >= boundary:
                    sentence_start = boundary
                    boundary = self._next_boundary(text, ends)
                out.new_sentence()
            kind = match.lastgroup
            value = match.group()
            if kind == "phrase":
                self._phrase(text, match, sentence_start, out)
            elif kind == "url":
                value = _clean_url(value)
                out.mention(text, "url", value, start, start + len(value))
            elif kind == "email":
                email = value.lstrip(".")  # "...jo@acme.io": leading dots are punctuation
                if email.rsplit(".", 1)[-1].isalpha() and not email.startswith("@"):
                    out.mention(text, "email", email, match.end() - len(email), match.end())
            elif kind == "hashtag":
                if any(c.isalpha() for c in value):
                    out.mention(text, "hashtag", value, start, match.end())
            elif kind is not None:
                out.mention(text, kind, " ".join(value.split()), start, match.end())
        return out.result()

    @staticmethod
    def _next_boundary(text: str, ends: Iterator[re.Match[str]]) -> int:
        """Offset just after the next real sentence end (skips "Dr." and "Inc.")."""
        for end in ends:
            if end.group() == ".":
                i = end.start()
                j = i
                while j > 0 and i - j < 8 and text[j - 1].isalpha():
                    j -= 1
                word = text[j:i]
                if word.lower() in _ABBREVIATIONS or (len(word) == 1 and word.isupper()):
                    continue
            return end.end()
        return len(text) + 1

    @staticmethod
    def _phrase(text: str, match: re.Match[str], sentence_start: int, out: _Builder) -> None:
        start, end = match.span()
        if match.group("title"):
            # "Dr. Smith": the title makes it a person whatever else we know.
            name = " ".join(match.group().split())
            out.mention(text, "person", _strip_possessive(name)[0], start, end)
            return
        tokens = [(t.group(), t.start(), t.end()) for t in _TOKEN.finditer(text, start, end)]
        initial = _LEADING.fullmatch(text, sentence_start, start) is not None
        if initial:
            # "Meeting with John", "Remember Sarah's birthday": drop the sentence's opener.
            while tokens and (
                (low := tokens[0][0].lower()) in _STOP or low in _EVENT_WORDS
            ):
                tokens.pop(0)
                initial = False
        # Split at stop words: "When John" -> "John"; "FYI Sarah" -> "Sarah".
        group: list[tuple[str, int, int]] = []
        for token in [*tokens, None]:
            if token is not None and token[0].lower() not in _STOP:
                group.append(token)
                continue
            while group and group[0][0] in _CONNECTOR_WORDS:
                group.pop(0)
            while group and group[-1][0] in _CONNECTOR_WORDS:
                group.pop()
            if group:
                words = [t[0] for t in group]
                words[-1], possessive = _strip_possessive(words[-1])
                first = group[0][1] == start and initial
                g_end = group[-1][2]
                context = possessive or _PERSON_CONTEXT.match(text, g_end) is not None
                type_ = _classify(words, first, context)
                if type_ is not None:
                    out.mention(text, type_, " ".join(words), group[0][1], g_end)
            group = []
