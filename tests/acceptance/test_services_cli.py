"""``memctl services up|status|down`` as an operator runs it: a separate set of servers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from devtools.localservers import free_port

MEMCTL = [sys.executable, "-m", "app.cli"]


@pytest.mark.slow
@pytest.mark.servers
def test_up_status_down_from_nothing(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": f"postgresql://memory:pw-accept@127.0.0.1:{free_port()}/memory",
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "NEO4J_URI": f"bolt://127.0.0.1:{free_port()}",
        "NEO4J_PASSWORD": "accept-neo4j-pw",
        "LOCAL_DIR": str(tmp_path / "state"),
    }

    def memctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*MEMCTL, *args], env=env, capture_output=True, text=True,
                              timeout=300, cwd=tmp_path)

    try:
        up = memctl("services", "up")
        assert up.returncode == 0, up.stderr
        status = memctl("services", "status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.count("running") == 3
        pids = [int(tok) for line in status.stdout.splitlines()
                for tok in line.replace("│", " ").split() if tok.isdigit() and int(tok) > 1000
                and psutil.pid_exists(int(tok))]
        assert len(pids) >= 3

        again = memctl("services", "up")  # idempotent: nothing new is started
        assert again.returncode == 0, again.stderr
        assert memctl("services", "status").stdout == status.stdout
    finally:
        down = memctl("services", "down")
    assert down.returncode == 0, down.stderr
    after = memctl("services", "status")
    assert after.returncode == 1
    assert after.stdout.count("stopped") == 3
    state = str(tmp_path / "state")
    leftovers = [p.info for p in psutil.process_iter(["pid", "cmdline", "status"])
                 if p.info["status"] != psutil.STATUS_ZOMBIE
                 and any(state in part for part in (p.info["cmdline"] or []))]
    assert leftovers == []


def test_status_names_external_servers(tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": "postgresql://u:p@db.example.internal:5432/m",
           "LOCAL_DIR": str(tmp_path)}
    done = subprocess.run([*MEMCTL, "services", "status"], env=env, capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert "external" in done.stdout


def test_bad_setting_stops_with_one_clear_line(tmp_path: Path) -> None:
    env = {**os.environ, "API_PORT": "not-a-port", "LOCAL_DIR": str(tmp_path)}
    done = subprocess.run([*MEMCTL, "services", "status"], env=env, capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2
    assert "API_PORT" in done.stderr
