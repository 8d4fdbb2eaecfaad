"""Results out: latest.json, latest.md (tables and the goals) and latest.png (latencies)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
SLOW_TOLERANCE = 1.25  # "unaffected": slow-Neo4j store p50 within 25% of the direct p50
NOT_MEASURED = "not measured"


# -- goals --------------------------------------------------------------------------------

def _goal(goal: str, target: str, measured: str, ok: bool | None) -> dict[str, Any]:
    status = NOT_MEASURED if ok is None else ("met" if ok else "not met")
    return {"goal": goal, "target": target, "measured": measured, "status": status}


def _config(configs: list[dict[str, Any]], path: str, pipeline: str, slow: bool,
            threads: int) -> dict[str, Any] | None:
    """The write configuration with this path, pipeline state, Neo4j distance and threads."""
    for c in configs:
        if (c["path"], c["pipeline"], c["threads"]) == (path, pipeline, threads) \
                and c["neo4j"].startswith("+") == slow:
            return c
    return None


def _threads(n: int) -> str:
    return f"{n} thread{'s' * (n > 1)}"


def _rows(stats: dict[str, Any]) -> str:
    mean = stats.get("mean_rows")
    return "-" if mean is None else f"{mean:.1f}"


def goals(sections: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal of issue 7 as met / not met / not measured, with the number behind it."""
    sections = {k: v for k, v in sections.items() if "error" not in v}  # failed: not measured
    out: list[dict[str, Any]] = []
    configs = sections["write"]["configs"] if "configs" in sections.get("write", {}) else []
    for threads in (1, 8):
        dual = _config(configs, "dual write", "paused", False, threads)
        for label, pipeline in (("request path alone", "paused"),
                                ("pipeline on the same cores", "running")):
            store = _config(configs, "store", pipeline, False, threads)
            goal = f"write p50 / dual-write p50, {_threads(threads)}, {label}"
            if store and dual:
                ratio = store["p50_ms"] / dual["p50_ms"]
                out.append(_goal(goal, "<= 0.33", f"{store['p50_ms']:.2f} / "
                                 f"{dual['p50_ms']:.2f} ms = {ratio:.2f}", ratio <= 1 / 3))
            else:
                out.append(_goal(goal, "<= 0.33", "-", None))
        store = _config(configs, "store", "running", False, threads)
        slow = _config(configs, "store", "running", True, threads)
        goal = f"write p50 unaffected by a slow Neo4j, {_threads(threads)}"
        target = f"p50 with Neo4j 20 ms away <= {SLOW_TOLERANCE:g} x p50 direct"
        if store and slow:
            ratio = slow["p50_ms"] / store["p50_ms"]
            out.append(_goal(goal, target, f"{slow['p50_ms']:.2f} vs {store['p50_ms']:.2f} ms"
                             f" = {ratio:.2f}x", ratio <= SLOW_TOLERANCE))
        else:
            out.append(_goal(goal, target, "-", None))
    store = _config(configs, "store", "paused", False, 1)
    cheap = _config(configs, "store, hashing embedder", "paused", False, 1)
    goal = "store p50 with the default model / with the hashing embedder, 1 thread"
    if store and cheap:
        ratio = store["p50_ms"] / cheap["p50_ms"]
        out.append(_goal(goal, "<= 2", f"{store['p50_ms']:.2f} / {cheap['p50_ms']:.2f} ms = "
                         f"{ratio:.2f}", ratio <= 2))
    else:
        out.append(_goal(goal, "<= 2", "-", None))
    proj = sections.get("projection")
    if proj:
        for run in proj["end_to_end"]:
            n = run["processes"]
            out.append(_goal(f"projection end to end, {n} worker process{'es' * (n > 1)}",
                             ">= 1,000 memories/s", f"{run['per_s']:.0f}/s",
                             run["per_s"] >= 1000))
        out.append(_goal("projection vs raw UNWIND limit (best e2e / best raw)", ">= 0.5",
                         f"{proj['best_end_to_end_per_s']:.0f} / {proj['raw_limit_per_s']:.0f}"
                         f" = {proj['ratio']:.2f}", proj["ratio"] >= 0.5))
    else:
        out.append(_goal("projection end to end", ">= 1,000 memories/s", "-", None))
        out.append(_goal("projection vs raw UNWIND limit", ">= 0.5", "-", None))
    lag = sections.get("lag")
    row = next((r for r in lag["rates"] if r["offered_per_s"] == 100), None) if lag else None
    out.append(_goal("convergence lag p99 at 100 writes/s", "< 1 s",
                     f"{row['p99_ms']:.0f} ms" if row else "-",
                     None if row is None else row["p99_ms"] < 1000))
    check = sections.get("check")
    sizes = check.get("sizes") if check else None
    if sizes:
        last = sizes[-1]
        rate = last["check"]["per_s"]
        out.append(_goal(f"check throughput ({last['memories']:,} memories)",
                         ">= 20,000 memories/s", f"{rate:,.0f}/s", rate >= 20000))
    else:
        reason = check["status"] if check else "section not run"
        out.append(_goal("check throughput", ">= 20,000 memories/s", reason, None))
    retrieval = sections.get("retrieval")
    default = retrieval["runs"][0] if retrieval else None
    hybrid = default["scores"]["paraphrase"]["hybrid"]["hit_at_5"] if default else None
    out.append(_goal("hit@5, default hybrid search, paraphrased questions", ">= 0.90",
                     "-" if hybrid is None else f"{hybrid:.3f}",
                     None if hybrid is None else hybrid >= 0.90))
    related = default["related"]["graph"]["hit_at_5"] if default else None
    out.append(_goal("hit@5, related-memory cases", ">= 0.90",
                     "-" if related is None else f"{related:.3f}",
                     None if related is None else related >= 0.90))
    search = sections.get("search")
    hybrid_lat = search["latency"].get("search hybrid (1 thr)") if search else None
    for pct, limit in (("p50", 15), ("p99", 40)):
        value = hybrid_lat[f"{pct}_ms"] if hybrid_lat else None
        size = f" ({search['memories']:,} memories)" if search else ""
        out.append(_goal(f"hybrid search {pct}, 1 client{size}", f"<= {limit} ms",
                         "-" if value is None else f"{value:.1f} ms",
                         None if value is None else value <= limit))
    for kind in ("topic", "near-duplicate"):
        recall = search["recall_at_10"][kind] if search and "recall_at_10" in search else None
        size = f" ({search['memories']:,} memories)" if search and "memories" in search else ""
        out.append(_goal(f"search recall@10, {kind} queries{size}", ">= 0.95",
                         "-" if recall is None else f"{recall:.3f}",
                         None if recall is None else recall >= 0.95))
    return out


# -- Markdown -----------------------------------------------------------------------------

def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _write_md(s: dict[str, Any]) -> list[str]:
    out = ["## 1. Write path", "",
           f"Embedder: `{s.get('embedder', '?')}`. Included in each timed call: "
           f"{s['included']}. Pipeline: {s['pipeline']}.", "",
           table(["path", "pipeline", "Neo4j", "threads", "ops", "p50 ms", "p95 ms", "p99 ms",
                  "ops/s", "errors", "Neo4j retries"],
                 [[c["path"], c["pipeline"], c["neo4j"], c["threads"], c["ops"], c["p50_ms"],
                   c["p95_ms"],
                   c["p99_ms"], c["throughput_per_s"], c["errors"], c.get("neo4j_retries")]
                  for c in s["configs"]]),
           "", "Delivery of the `store` writes by the pipeline (outbox created_at to done_at, "
           "Postgres clock), and how long after the last write the outbox was empty:", "",
           table(["worker's Neo4j", "client threads", "rows", "lag p50 ms", "lag p99 ms",
                  "drained after s"],
                 [[d["neo4j"], d["threads"], d["rows"], d["lag_p50_ms"], d["lag_p99_ms"],
                   d["drain_after_s"]] for d in s["delivery"]]),
           "", f"Dead outbox rows at the end: {s['dead_rows']}."]
    return out


def _cpu_cells(cpu: dict[str, Any]) -> list[Any]:
    used = cpu["cpu_s"]
    return [f"{cpu['utilisation'] * 100:.0f}%",
            " / ".join(f"{used.get(k, 0):.1f}" for k in ("neo4j", "postgres", "worker", "relay",
                                                         "redis", "bench"))]


CPU_HEADERS = ["CPU (share of all cores)",
               "CPU s: neo4j / postgres / worker / relay / redis / bench"]


def _projection_md(s: dict[str, Any]) -> list[str]:
    pre = s["preload"]
    runs = [*s["end_to_end"], s["replay"]]
    return [
        "## 2. Projection throughput", "",
        f"{s['memories']:,} memories over {s['users']} users, pre-loaded with the relay "
        f"stopped ({pre['method']}: {pre['per_s']:,.0f}/s). Timed from the relay's start "
        "until no outbox row is open; workers were started and ready before. The replay run "
        "is the same with every extraction already cached in Postgres.", "",
        table(["run", "worker processes", "seconds", "memories/s", "rows per graph batch",
               "Neo4j retries (deadlocks)", *CPU_HEADERS, "dead", "graph memories"],
              [[r["run"], r["processes"], r["seconds"], r["per_s"], _rows(r["batches"]),
                f"{r['batches']['neo4j_retries']} ({r['batches']['deadlocks']})",
                *_cpu_cells(r["cpu"]), r["dead_rows"], r["graph_memories"]] for r in runs]),
        "", "Raw limit: the same entity sets, `Neo4jGraph.project` straight into an empty "
        "graph (no Postgres, no Dramatiq):", "",
        table(["batch", "threads", "seconds", "memories/s", "Neo4j CPU s", "CPU (all cores)",
               "deadlock retries"],
              [[r["batch"], r["threads"], r["seconds"], r["per_s"],
                r["cpu"]["cpu_s"].get("neo4j"), f"{r['cpu']['utilisation'] * 100:.0f}%",
                r["neo4j_retries"]] for r in s["raw"]]),
        "", f"Best end to end / best raw = {s['best_end_to_end_per_s']:,.0f} / "
        f"{s['raw_limit_per_s']:,.0f} = **{s['ratio']:.2f}**; one worker process against raw "
        f"at the worker's own shape (batch 50, 4 threads) = "
        f"{_fmt(s['ratio_one_process_same_shape'])}."]


def _lag_md(s: dict[str, Any]) -> list[str]:
    return [
        "## 3. Convergence lag", "", f"Method: {s['method']}. Pipeline: {s['pipeline']}.", "",
        table(["offered /s", "achieved /s", "writes", "in graph", "p50 ms", "p95 ms", "p99 ms",
               "max ms", "rows per graph batch", "Neo4j retries", *CPU_HEADERS],
              [[r["offered_per_s"], r["achieved_per_s"], r["writes"], r["in_graph"],
                r["p50_ms"], r["p95_ms"], r["p99_ms"], r["max_ms"],
                _rows(r["batches"]), r["batches"]["neo4j_retries"],
                *_cpu_cells(r["cpu"])] for r in s["rates"]])]


def _check_md(s: dict[str, Any]) -> list[str]:
    if not s.get("sizes"):
        return ["## 4. Check and rebuild", "", s["status"] + "."]
    return [
        "## 4. Check and rebuild", "",
        "On a graph made consistent by the rebuilds; memories per second:", "",
        table(["memories", "rebuild, cold", "rebuild, cached", "check", "check seconds",
               "consistent"],
              [[r["memories"], r["rebuild_cold"]["per_s"] if r["rebuild_cold"] else "-",
                r["rebuild_cached"]["per_s"],
                r["check"]["per_s"], r["check"]["seconds"], r["consistent"]]
               for r in s["sizes"]])]


def _search_md(s: dict[str, Any]) -> list[str]:
    rows = []
    for name, lat in [*s["latency"].items(), ("exact scan (index unusable)", s["exact_scan"])]:
        rows.append([name, lat["ops"], lat["p50_ms"], lat["p95_ms"], lat["p99_ms"],
                     lat["throughput_per_s"]])
    loads = "; ".join(f"{x['from']:,}->{x['to']:,} at {x['per_s']:,.0f}/s without the HNSW "
                      f"index, then the index built in {x['index_build_s']:.0f}s"
                      for x in s["load"])
    svc = s["recall_at_10"]
    return [
        "## 5. Search", "",
        f"{s['memories']:,} memories over {s['users']} users, embedder `{s['embedder']}`; "
        f"{s['queries']} per-user queries through `Retrieval.search` (half topic questions, "
        f"half near-duplicates of a stored memory), top {s['top_k']}; the latency includes "
        f"embedding the query. Loaded with store_many: {loads or 'loaded earlier'}.", "",
        table(["", "queries", "p50 ms", "p95 ms", "p99 ms", "queries/s"], rows), "",
        f"recall@10 of vector search (hnsw.ef_search {s['service_ef_search']}, "
        "iterative scan strict_order) against the exact answer, tie-aware: topic queries "
        f"**{svc['topic']:.3f}**, near-duplicate queries **{svc['near-duplicate']:.3f}**, "
        f"all {svc['all']:.3f}. The same statement at other ef_search values (latency of the "
        "statement alone):", "",
        table(["hnsw.ef_search", "recall@10 topic", "recall@10 near-duplicate", "p50 ms",
               "p99 ms"],
              [[r["ef_search"], f"{r['topic']:.3f}", f"{r['near-duplicate']:.3f}",
                r["p50_ms"], r["p99_ms"]] for r in s["ef_sweep"]]), "",
        f"Plan, search: `{s['plans']['search']}`", "",
        f"Plan, exact: `{s['plans']['exact']}`"]


def _retrieval_md(s: dict[str, Any]) -> list[str]:
    rows = []
    for run in s["runs"]:
        for mode in run["latency"]:
            cells = []
            for kind in ("paraphrase", "keyword"):
                m = run["scores"][kind][mode]
                cells += [f"{m['hit_at_1']:.3f}", f"{m['hit_at_5']:.3f}", f"{m['mrr_at_10']:.3f}"]
            rows.append([run["embedder"], mode, *cells, run["latency"][mode]["p50_ms"]])
    related = [[run["extractor"], source, f"{r['hit_at_5']:.3f}", f"{r['recall_at_5']:.3f}",
                f"{r['mrr_at_10']:.3f}"]
               for run in s["runs"] if run.get("related_reported", True)
               for source, r in run["related"].items()]
    first = s["runs"][0]
    return [
        "## Retrieval quality (labelled set)", "",
        f"`bench/data/retrieval_eval.json`: {s['memories']} memories of {s['users']} users, "
        f"{s['queries']} paraphrased questions sharing no content word with their target "
        f"(P), {s['keyword_queries']} keyword queries of two rare words of their target (K), "
        f"{s['related_cases']} related cases answerable only through shared entities. Stored "
        "with store_many, projected into Neo4j by the projector, searched through "
        "`Retrieval.search` (top 10; hybrid+graph: top 5 with `expand=graph`, hit@5 = the "
        f"target anywhere in that answer, {first['graph_answer_mean_len']:.1f} memories on "
        "average). Latency here is on a tiny set: the search section measures 100k.", "",
        table(["embedder", "mode", "P hit@1", "P hit@5", "P MRR@10", "K hit@1", "K hit@5",
               "K MRR@10", "p50 ms"], rows), "",
        "Related memories (`Retrieval.related`, hit@5 = an expected memory in the first five; "
        "postgres = the fallback from stored extractions when Neo4j is down):", "",
        table(["extractor", "answered by", "hit@5", "recall@5", "MRR@10"], related)]


def _memory_md(s: dict[str, Any]) -> list[str]:
    web = s["web"]
    return [
        "## 6. Memory (peak RSS)", "",
        table(["process", "peak RSS MiB", "note"],
              [*[[f"worker ({w['processes']} process{'es' * (w['processes'] > 1)})",
                  w["peak_single_mib"],
                  f"largest single process; whole dramatiq tree {w['peak_tree_mib']:.0f} MiB"]
                 for w in s["worker"]],
               ["web", web["peak_mib"],
                f"idle {web['idle_mib']:.0f} MiB; {web['requests']} requests "
                f"({web['requests_per_s']:.0f}/s, {web['errors']} errors)"]]),
        "", table(["HTTP", "requests", "p50 ms", "p99 ms"],
                  [["POST /api/memories", web["store"]["ops"], web["store"]["p50_ms"],
                    web["store"]["p99_ms"]],
                   ["POST /api/memories/search", web["search"]["ops"],
                    web["search"]["p50_ms"], web["search"]["p99_ms"]]])]


def _http_md(s: dict[str, Any]) -> list[str]:
    return [
        "## 7. HTTP writes: one memory per request against batches", "",
        f"`memctl web` with the `{s['embedder']}` embedder; `POST /api/memories` against "
        f"`POST /api/memories/batch` with {s['batch_size']} memories per request (one "
        "transaction each). Throughput counts memories stored; latency is per request.", "",
        table(["route", "threads", "memories", "memories/s", "request p50 ms", "p99 ms",
               "errors"],
              [["batch" if r["kind"] == "batch" else "single", r["threads"], r["memories"],
                r["memories_per_s"], r["p50_ms"], r["p99_ms"], r["errors"]]
               for r in s["rows"]]), "",
        "Batch over single, memories/s: " + ", ".join(
            f"{t} thread(s) {x}x" for t, x in s["batch_speedup"].items()), ""]


def _load_md(load: dict[str, dict[str, float]]) -> list[str]:
    """The share of the machine's CPU that processes outside this run used, per section."""
    if not load:
        return []
    worst = max(v["others_share"] for v in load.values())
    note = ("The machine was quiet: numbers are this system's own."
            if worst < 0.05 else
            "**The machine was shared**: other processes used CPU during the run, so these "
            "numbers understate what the system does on a quiet machine.")
    shares = ", ".join(f"{k} {v['others_share'] * 100:.0f}%" for k, v in load.items())
    return ["CPU used by other processes on the machine while each section ran "
            f"(share of all cores): {shares}. {note}", ""]


SECTION_MD = {"write": _write_md, "projection": _projection_md, "lag": _lag_md,
              "check": _check_md, "retrieval": _retrieval_md, "search": _search_md,
              "memory": _memory_md, "http": _http_md}


def markdown(results: dict[str, Any], chart: str | None) -> str:
    meta, mach, ver = results["meta"], results["machine"], results["versions"]
    lines = [
        "# memory-persistence benchmarks", "",
        f"- Date: {meta['date']}", f"- Command: `{meta['command']}` ({meta['mode']} run"
        f"{', sections: ' + ', '.join(meta['sections']) if meta['only'] else ''})",
        f"- Total runtime: {meta['total_seconds'] / 60:.1f} min "
        f"({', '.join(f'{k} {v:.0f}s' for k, v in meta['section_seconds'].items())})",
        f"- Outcome: {meta['outcome']}", "",
        "## Machine", "",
        table(["", ""], [
            ["CPU", f"{mach['cpu_model']} ({mach['nproc']} cores, nproc)"],
            ["RAM", f"{mach['ram_gib']} GiB"], ["kernel", mach["kernel"]],
            ["Python", ver.get("python", mach["python"])],
            ["Postgres", f"{ver.get('postgres', '?')} (pgvector {ver.get('pgvector', '?')})"],
            ["Neo4j", ver.get("neo4j", "?")], ["Redis", ver.get("redis", "?")],
            ["drivers", ", ".join(f"{k} {ver[k]}" for k in
                                  ("neo4j-driver", "psycopg", "sqlalchemy", "dramatiq")
                                  if k in ver)],
        ]), "",
        "All servers, the relay, workers and web process run on this one machine, sharing "
        "its cores with the load generator.", "",
        *_load_md(meta.get("other_load", {})),
        "## Goals", "",
        table(["goal", "target", "measured", "status"],
              [[g["goal"], g["target"], g["measured"], f"**{g['status']}**"]
               for g in results["goals"]]), ""]
    for name, section in results["sections"].items():
        if "error" in section:
            lines += [f"## {name}", "", f"Failed: `{section['error']}`", ""]
            continue
        lines += [*SECTION_MD[name](section), ""]
    if chart:
        lines += ["## Latency distributions", "", f"![latency distributions]({chart})", ""]
    return "\n".join(lines)


# -- chart --------------------------------------------------------------------------------

def _style(key: str) -> dict[str, Any]:
    """One colour per path, dashed when Neo4j is 20 ms away."""
    colours = [("bare insert", "tab:blue"), ("store (pipeline paused", "tab:green"),
               ("store", "tab:orange"), ("dual write", "tab:red"), ("lag at 100", "tab:blue"),
               ("lag at 300", "tab:orange"), ("search hybrid (4", "tab:pink"),
               ("search hybrid", "tab:purple"), ("search vector", "tab:cyan"),
               ("search text", "tab:olive"), ("search", "tab:purple")]
    colour = next((c for prefix, c in colours if key.startswith(prefix)), None)
    return {"color": colour, "linestyle": "--" if "+" in key else "-"}


def chart(samples: dict[str, list[float]], path: Path) -> bool:
    """ECDFs (log time axis): write path at 1 and 8 threads, convergence lag, search."""
    writes = ("store", "bare insert", "dual write")
    panels = [
        ("Write path, 1 client thread",
         [k for k in samples if k.startswith(writes) and k.endswith(" 1 thr)")]),
        ("Write path, 8 client threads",
         [k for k in samples if k.startswith(writes) and k.endswith(" 8 thr)")]),
        ("Convergence lag (commit to graph)", [k for k in samples if k.startswith("lag")]),
        ("Search (per user, top 10)", [k for k in samples if k.startswith("search")]),
    ]
    panels = [(title, keys) for title, keys in panels if any(samples[k] for k in keys)]
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    cols = 2 if len(panels) > 1 else 1
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(7.5 * cols, 5.0 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax, (title, keys) in zip(flat, panels, strict=False):
        for key in keys:
            data = sorted(x * 1000 for x in samples[key] if x > 0)
            if not data:
                continue
            ys = [(i + 1) / len(data) for i in range(len(data))]
            ax.step(data, ys, where="post", label=f"{key}, n={len(data)}", **_style(key))
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("milliseconds (log scale)")
        ax.set_ylabel("fraction of operations <= x")
        ax.set_title(title, fontsize=11)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return True


# -- writing ------------------------------------------------------------------------------

def _atomic_write(path: Path, content: str | bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(content, bytes):
        tmp.write_bytes(content)
    else:
        tmp.write_text(content)
    os.replace(tmp, path)


def write(results: dict[str, Any], samples: dict[str, list[float]],
          out_dir: Path = RESULTS) -> list[Path]:
    """Write latest.json, latest.png and latest.md into ``out_dir``; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    png = out_dir / "latest.png"
    tmp_png = out_dir / "latest.png.tmp"
    has_chart = chart(samples, tmp_png)
    if has_chart:
        os.replace(tmp_png, png)
        paths.append(png)
    json_path = out_dir / "latest.json"
    _atomic_write(json_path, json.dumps(results, indent=2, default=str) + "\n")
    md_path = out_dir / "latest.md"
    _atomic_write(md_path, markdown(results, png.name if has_chart else None))
    return [json_path, md_path, *paths]
