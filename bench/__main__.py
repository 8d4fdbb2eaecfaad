"""``python -m bench``: run the benchmark suite on servers it starts and stops itself.

  python -m bench                 full sizes (about 15-20 minutes on 2 cores)
  python -m bench --quick         small sizes (about 2 minutes), to try it out
  python -m bench --only search   one section (repeat --only for several)

Results: bench/results/latest.json, latest.md and latest.png. Servers and every subprocess
are stopped on the way out, also on Ctrl-C or SIGTERM (then no results are written).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from bench import dataset, report
from bench.context import Context, Sizes
from bench.harness import BenchEnv, MachineLoad, machine, say
from bench.sections import SECTIONS
from bench.stats import STOP


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="memory-persistence benchmarks (not tests)",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, about 2 minutes")
    parser.add_argument("--only", action="append", choices=list(SECTIONS), metavar="NAME",
                        help=f"run only this section ({', '.join(SECTIONS)}); repeatable")
    parser.add_argument("--out", type=Path, default=report.RESULTS,
                        help="results folder (default bench/results)")
    parser.add_argument("--keep-state", action="store_true",
                        help="keep the servers' temporary folder (logs) for inspection")
    return parser.parse_args(argv)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(argv: list[str]) -> int:
    """Run the chosen sections and write the results; the exit status is 1 if one failed."""
    args = _parse(argv)
    sizes = Sizes.quick() if args.quick else Sizes.full()
    names = [n for n in SECTIONS if n in args.only] if args.only else list(SECTIONS)
    # Ctrl-C and SIGTERM both end the run cleanly (SIGINT explicitly: a shell starts
    # background jobs with it ignored, and Python would keep ignoring it).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_sigterm)
    began = time.monotonic()
    started_at = datetime.now(UTC)
    sections: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    load: dict[str, dict[str, float]] = {}
    say(f"bench: {'quick' if args.quick else 'full'} run of {', '.join(names)}")
    try:
        with BenchEnv.started(keep_state=args.keep_state) as env:
            ctx = Context(env, sizes, args.quick)
            versions = env.versions()
            try:
                for name in names:
                    say(f"== {name} ==")
                    t0 = time.monotonic()
                    meter = MachineLoad(list(env.server_pids().values()))
                    meter.start()
                    try:
                        sections[name] = SECTIONS[name](ctx)
                    except Exception as exc:
                        traceback.print_exc()
                        sections[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
                        env.processes.stop_all()  # whatever the failed section left running
                    seconds[name] = round(time.monotonic() - t0, 1)
                    load[name] = meter.stop()
                    say(f"== {name} done in {seconds[name]:.0f}s; other processes on this "
                        f"machine used {load[name]['others_share'] * 100:.0f}% of its CPU ==")
            finally:
                dataset.close(ctx)
    except KeyboardInterrupt:
        STOP.set()
        say("interrupted: subprocesses and servers stopped; no results written")
        return 130
    failed = [n for n, s in sections.items() if "error" in s]
    results: dict[str, Any] = {
        "meta": {
            "date": started_at.isoformat(timespec="seconds"),
            "command": " ".join(["python -m bench", *argv]).strip(),
            "mode": "quick" if args.quick else "full",
            "only": bool(args.only), "sections": names,
            "total_seconds": round(time.monotonic() - began, 1),
            "section_seconds": seconds,
            "other_load": load,
            "outcome": f"failed: {', '.join(failed)}" if failed else "all sections ran",
            "sizes": sizes.as_dict(),
        },
        "machine": machine(),
        "versions": versions,
        "goals": report.goals(sections),
        "sections": sections,
    }
    paths = report.write(results, ctx.samples, args.out)
    print()
    print(report.table(["goal", "target", "measured", "status"],
                       [[g["goal"], g["target"], g["measured"], g["status"]]
                        for g in results["goals"]]))
    print()
    for path in paths:
        say(f"wrote {path}")
    say(f"total {results['meta']['total_seconds'] / 60:.1f} min")
    return 1 if failed else 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
