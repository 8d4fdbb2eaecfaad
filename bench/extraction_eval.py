"""Extractors compared on the labelled set (bench/data/retrieval_eval.json), no servers needed.

    python -m bench.extraction_eval            rules and nlp (needs the ``nlp`` extra)

Per extractor: entity precision and recall against the set's hand-labelled entities (matched by
type and normalised name, and by name alone), the "related" cases whose memory shares an entity
key with an expected memory (what the graph can find at all), texts per second on one thread (wall
clock, and per CPU second: the figure that holds on a busy machine),
and the resident memory the extractor added to this process.
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path
from typing import Any

from app.domain import normalise_name
from app.extraction import Extractor, NlpExtractor, RuleExtractor

DATA = Path(__file__).resolve().parent / "data" / "retrieval_eval.json"


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def evaluate(extractor: Extractor, data: dict[str, Any]) -> dict[str, Any]:
    memories = data["memories"]
    began, cpu = time.perf_counter(), time.process_time()
    found = {m["id"]: extractor.extract(m["content"]) for m in memories}
    seconds, cpu_seconds = time.perf_counter() - began, time.process_time() - cpu
    tp = fp = fn = tp_name = 0
    for m in memories:
        gold = {(e["type"], normalise_name(e["name"])) for e in m["entities"]}
        got = {(e.type, normalise_name(e.name)) for e in found[m["id"]].entities}
        tp, fp, fn = tp + len(gold & got), fp + len(got - gold), fn + len(gold - got)
        tp_name += len({n for _, n in gold} & {n for _, n in got})
    gold_total = sum(len(m["entities"]) for m in memories)
    got_total = sum(len(x.entities) for x in found.values())
    keys = {i: {(e.type, normalise_name(e.name)) for e in x.entities} for i, x in found.items()}
    linked = sum(1 for c in data["related"] if any(keys[c["memory"]] & keys[r]
                                                   for r in c["related"]))
    return {
        "extractor": extractor.identity,
        "precision": round(tp / max(tp + fp, 1), 3), "recall": round(tp / max(tp + fn, 1), 3),
        "name_recall": round(tp_name / max(gold_total, 1), 3),
        "name_precision": round(tp_name / max(got_total, 1), 3),
        "related_linked": f"{linked}/{len(data['related'])}",
        "texts_per_s": round(len(memories) / seconds, 1),
        "texts_per_cpu_s": round(len(memories) / cpu_seconds, 1),
    }


def main() -> None:
    data = json.loads(DATA.read_text())
    for extractor in (RuleExtractor(), NlpExtractor()):
        gc.collect()
        before = rss_mb()
        if isinstance(extractor, NlpExtractor):
            extractor.load()
        extractor.extract("warm-up: Alice works at Siemens.")
        result = evaluate(extractor, data)
        result["rss_added_mb"] = round(rss_mb() - before, 1)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
