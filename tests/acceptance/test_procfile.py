"""The Procfile's processes, started by honcho as `make run` does, against the test servers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from neo4j import Driver

from app.settings import Settings
from devtools.localservers import free_port
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def stack(settings: Settings, neo4j_driver: Driver, redis_client: object,
          tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "NEO4J_URI": settings.neo4j_uri,
        "NEO4J_USER": settings.neo4j_user,
        "NEO4J_PASSWORD": settings.neo4j_password.get_secret_value(),
        "API_PORT": str(port),
        "API_SERVICE_KEYS": "svc-accept",
        "API_ADMIN_KEYS": "adm-accept",
        "RELAY_POLL_SECONDS": "0.2",
    }
    log = (tmp_path / "honcho.log").open("wb")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "honcho"), "start", "-f",
                             str(ROOT / "Procfile"), "-d", str(ROOT)],
                            env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGTERM)  # honcho forwards it to every process
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        alive = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        for c in alive:
            c.kill()
        assert alive == [], (tmp_path / "honcho.log").read_text()[-3000:]


@pytest.mark.slow
def test_a_memory_stored_over_http_appears_in_neo4j(stack: str, neo4j_driver: Driver) -> None:
    def live() -> bool:
        try:
            return httpx.get(f"{stack}/api/health/live", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(live, 60, "the web process")
    response = httpx.post(f"{stack}/api/memories", headers={"Authorization": "Bearer svc-accept"},
                          json={"user_id": "alice", "content": "Meeting with John about Q4"},
                          timeout=10)
    assert response.status_code == 201, response.text
    memory_id = response.json()["id"]

    def projected() -> list[str]:
        records, _, _ = neo4j_driver.execute_query(
            "MATCH (:Memory {id: $id})-[:MENTIONS]->(e:Entity) RETURN e.name AS n",
            id=memory_id)
        return sorted(r["n"] for r in records)

    assert wait_for(projected, 60, "the worker to project the memory") == ["John", "Q4"]
