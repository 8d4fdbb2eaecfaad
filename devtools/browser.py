"""Chromium for the browser tests: Debian's package, installed with apt-get when it is missing.

The tests drive it with Playwright's Python package (its node driver only; Playwright never
downloads a browser here: it is given ``executable_path``). Like ``redis-server`` in
``devtools.localservers``, the browser is installed by the project's own code on a machine that
lacks it, when run as root; otherwise the error says which command to run.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

from app.errors import ServiceError

PACKAGE = "chromium"
# Headless without the services that call home: on a closed network Chromium's background
# connections are refused, and with them some builds stall.
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
_LOCK = Path("/var/lock/memctl-chromium-install.lock")  # only root installs


def chromium() -> str | None:
    """The installed Chromium's path, if there is one."""
    return shutil.which("chromium")


def ensure_chromium() -> str:
    """Chromium's path; installs Debian's ``chromium`` with apt-get first when it is missing.

    Several test runs may call this at once: one installs, the others wait for it (a file lock).
    """
    found = chromium()
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ServiceError("chromium is not installed: install Debian's package with "
                           "'sudo apt-get install chromium' and run again")
    with _LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = chromium()  # installed by another run while this one waited
        if found:
            return found
        print("chromium missing: installing it with apt-get", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (["apt-get", "update"],
                     ["apt-get", "install", "-y", "--no-install-recommends", PACKAGE]):
            done = subprocess.run(argv, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise ServiceError(f"'{' '.join(argv)}' failed: {done.stderr.strip()[-500:]}")
    found = chromium()
    if not found:
        raise ServiceError("apt-get installed chromium but it is not on PATH")
    return found
