"""Synthetic memories: short assistant notes that name people, organisations, dates and topics.

Deterministic for a seed, so every run (and both sides of a comparison) sees the same texts.
Each text carries a serial number so no two memories are identical (identical vectors would make
recall ambiguous) while entities repeat across memories of one user, as they do in real notes.
"""

from __future__ import annotations

import random

FIRST = [
    "John", "Sarah", "Priya", "Miguel", "Aiko", "Lars", "Fatima", "Chen", "Olga", "Tom", "Amara",
    "Lucas", "Noor", "Emma", "Ravi", "Ines", "Kofi", "Hana", "Pedro", "Mia", "Omar", "Yuki",
    "Anna", "Diego", "Leila", "Sam", "Nina", "Ivan", "Zoe", "Arjun"
]
LAST = [
    "Smith", "Patel", "Garcia", "Tanaka", "Berg", "Khan", "Wei", "Petrova", "Brown", "Okafor",
    "Silva", "Haddad", "Jones", "Kumar", "Rossi", "Mensah", "Sato", "Costa", "Novak", "Ali",
    "Ito", "Larsen", "Moreau", "Diaz", "Kim", "Weber"
]
ORGS = ["Acme Corp", "Globex Inc", "Initech", "Umbrella Labs", "Stark Industries", "Wayne Ltd",
        "Hooli", "Vandelay Industries", "Soylent Corp", "Cyberdyne Systems", "Tyrell Corp",
        "Wonka Industries", "Pied Piper", "Massive Dynamic", "Aperture Science", "Oscorp"]
TOPICS = [
    "roadmap", "budget", "hiring", "launch", "migration", "security", "audit", "pricing",
    "onboarding", "retention", "analytics", "design", "review", "offsite", "contract", "renewal",
    "forecast", "incident", "postmortem", "partnership", "research", "hackathon", "compliance",
    "infrastructure"
]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
TEMPLATES = [
    "Meeting with {p1} about the Q{q} {t1} on {m} {d}.",
    "{p1} from {o1} wants to discuss {t1} and {t2} next week.",
    "Remember {p1}'s birthday on {m} {d}; maybe a gift from {o1}.",
    "Call {p1} and {p2} to review the {t1} plan for {o1}.",
    "{p1} works at {o1} and leads the {t1} team.",
    "Lunch with {p1} at {o1}: talked about {t1}, {t2} and the Q{q} numbers.",
    "Send the {t1} notes to {p1} before {m} {d}. #{t2}",
    "{o1} signed the {t1} contract with {o2}; {p1} is the contact.",
    "Follow up with {p2} about {t1} after the {t2} sync with {p1}.",
    "Prefers morning meetings; {p1} said {o1} will freeze {t1} until Q{q}.",
]


class Corpus:
    """Memory texts and search queries from a seed."""

    def __init__(self, seed: int = 7) -> None:
        self.seed = seed

    def _fill(self, rnd: random.Random, template: str) -> str:
        return template.format(
            p1=f"{rnd.choice(FIRST)} {rnd.choice(LAST)}",
            p2=f"{rnd.choice(FIRST)} {rnd.choice(LAST)}",
            o1=rnd.choice(ORGS), o2=rnd.choice(ORGS), t1=rnd.choice(TOPICS),
            t2=rnd.choice(TOPICS), m=rnd.choice(MONTHS), d=rnd.randint(1, 28), q=rnd.randint(1, 4))

    def text(self, i: int) -> str:
        """Memory number ``i`` (the same text for the same seed and ``i``)."""
        rnd = random.Random(self.seed * 1_000_003 + i)
        return f"{self._fill(rnd, rnd.choice(TEMPLATES))} (note {i})"

    def texts(self, start: int, count: int) -> list[str]:
        return [self.text(i) for i in range(start, start + count)]

    def query(self, i: int) -> str:
        """A search query in the style of the memories, not equal to any of them."""
        rnd = random.Random(self.seed * 7_000_001 + i + 17)
        kind = rnd.randrange(3)
        if kind == 0:
            return f"{rnd.choice(FIRST)} {rnd.choice(LAST)} {rnd.choice(TOPICS)}"
        if kind == 1:
            return f"what did {rnd.choice(ORGS)} say about {rnd.choice(TOPICS)}"
        return self._fill(rnd, rnd.choice(TEMPLATES))
