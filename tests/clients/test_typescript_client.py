"""The TypeScript client (clients/typescript): its own suite under Node (``npm test``: tsc, then
node's test runner) against a live web process on the test's fresh database, including the
check that src/schema.ts is what the live /openapi.json generates."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.clients.conftest import Web

pytestmark = [pytest.mark.servers, pytest.mark.slow]

PACKAGE = Path(__file__).resolve().parents[2] / "clients" / "typescript"


def test_the_typescript_suite_passes_against_the_live_api(web: Web, service_key: str) -> None:
    npm = shutil.which("npm")
    assert npm is not None, "npm (Node 18+) is needed for the TypeScript client's tests"
    assert (PACKAGE / "node_modules" / ".package-lock.json").is_file(), (
        "clients/typescript has no node_modules: `make test` runs `npm ci` there first")
    env = {**os.environ, "MEMORY_API_URL": web.url, "MEMORY_API_KEY": service_key,
           "NO_COLOR": "1"}
    done = subprocess.run([npm, "test"], cwd=PACKAGE, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    output = done.stdout[-8000:] + done.stderr[-3000:]
    assert done.returncode == 0, output
    # The live tests skip themselves without the API: make sure they ran, and all of them.
    assert "# SKIP" not in done.stdout and "# TODO" not in done.stdout, output
    summary = dict(re.findall(r"^# (tests|pass|fail|skipped|cancelled|todo) (\d+)$",
                              done.stdout, re.MULTILINE))
    assert summary.get("fail") == "0" and summary.get("skipped") == "0", output
    assert summary.get("cancelled") == "0" and int(summary.get("pass", 0)) >= 50, output
