"""schemathesis against the live OpenAPI document: no input may produce a 5xx or an answer the
document does not describe, with a service key and with an admin key.

The number of examples per operation is bounded (FUZZ_EXAMPLES, default 50) to keep CI short;
raise it to hunt for bugs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.settings import Settings
from devtools.harness import ManagedProcess, child_env
from devtools.localservers import free_port
from tests.conftest import wait_for

CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_schema_conformance")
EXAMPLES = os.environ.get("FUZZ_EXAMPLES", "50")


@pytest.fixture
def api(settings: Settings, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = ManagedProcess("web", [sys.executable, "-m", "app.cli", "web"],
                          child_env(settings, API_PORT=str(port), LOG_LEVEL="WARNING"),
                          tmp_path / "web.log")
    base = f"http://127.0.0.1:{port}"

    def live() -> bool:
        try:
            return httpx.get(f"{base}/api/health/live", timeout=1).is_success
        except httpx.TransportError:
            return False

    try:
        wait_for(live, 60, "the web process to answer")
        yield base
    finally:
        proc.stop(grace=10)
        errors = [line for line in proc.log(None).splitlines() if "api.unhandled" in line]
        assert not errors, errors


@pytest.mark.slow
@pytest.mark.parametrize("scope", ["service", "admin"])
def test_no_input_breaks_the_documented_contract(api: str, settings: Settings, scope: str,
                                                 tmp_path: Path) -> None:
    key = (settings.api_service_keys if scope == "service" else settings.api_admin_keys)[0]
    report = tmp_path / "junit.xml"
    done = subprocess.run([
        sys.executable, "-m", "schemathesis.cli", "run", f"{api}/openapi.json",
        "--header", f"Authorization: Bearer {key.get_secret_value()}",
        "--checks", CHECKS, "--max-examples", EXAMPLES, "--seed", "20261129",
        "--phases", "examples,coverage,fuzzing,stateful", "--workers", "2",
        "--generation-database", "none", "--request-timeout", "30", "--no-color",
        "--report", "junit", "--report-junit-path", str(report), "--suppress-health-check",
        "all"], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
