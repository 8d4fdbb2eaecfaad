"""The client is its own distribution: it must work without the server's package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_the_client_never_imports_the_server_package(tmp_path: Path) -> None:
    probe = ("import sys, memory_persistence_client as m; m.MemoryClient('http://x', 'k');"
             "m.AsyncMemoryClient('http://x', 'k');"
             "print(sorted(n for n in sys.modules if n.split('.')[0] in {'app', 'pydantic'}))")
    # From an empty folder, so the checkout's own `app` is not on the path by accident.
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True, timeout=60, cwd=tmp_path)
    assert done.stdout.strip() == "[]", done.stdout
