"""Stop any server process a test run left behind under its temporary folder.

The session fixture stops its servers even when tests fail; this is the safety net for a run
that was itself killed (a timeout, Ctrl-C twice), so CI never leaves a server running.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import psutil


def leftovers(root: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.pid == os.getpid():
            continue
        cmdline = " ".join(proc.info["cmdline"] or [])
        cwd = proc.info["cwd"] or ""
        if str(root) in cmdline or cwd.startswith(str(root)):
            found.append(proc)
    return found


def main() -> int:
    root = Path(sys.argv[1]).resolve()
    procs = leftovers(root)
    for proc in procs:
        print(f"reap: stopping leftover pid {proc.pid}: {' '.join(proc.cmdline())[:120]}")
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(p.is_running() and
                                              p.status() != psutil.STATUS_ZOMBIE for p in procs):
        time.sleep(0.2)
    for proc in procs:
        if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
            proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
