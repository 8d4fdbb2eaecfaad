"""The image path end to end, without a Docker engine: docker-compose.yml's app services run on
the image the Dockerfile describes, against the test servers.

Read from the files, never restated here: the image's steps (``devtools.image`` reproduces the
Dockerfile: COPY, ``pip install .``, WORKDIR, USER), which services run that image
(``build:``), the order and conditions they start in (``depends_on``), each one's command and
environment (interpolated from an env file standing in for ``.env``), the published port and
the stop grace period.

Translated, because there are no containers: a backing service's host (recognised by the image
it runs: postgres/pgvector, redis, neo4j) becomes the test server's address, and the listen
address the web publishes becomes a free loopback port. What the backing containers would set
up from their environment (POSTGRES_USER/PASSWORD/DB, NEO4J_AUTH) is done on, or checked
against, the test servers.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psutil
import pytest
from neo4j import Driver

from devtools import compose
from devtools.harness import ManagedProcess
from devtools.image import Image
from devtools.localservers import free_port
from tests.conftest import TestServers, wait_for
from tests.deploy.conftest import (
    COMPOSE_FILE,
    quantity,
    run_as,
    workload_running,
    write_env_file,
)

# The backing server each official image stands for, and the port it listens on inside.
SERVER_OF_IMAGE = {"postgres": "postgres", "pgvector": "postgres", "redis": "redis",
                   "neo4j": "neo4j"}
CONTAINER_PORT = {"postgres": 5432, "redis": 6379, "neo4j": 7687}
DOCKER_STOP_GRACE = "10s"  # docker's default stop_grace_period


def server_of(service: compose.Service) -> str:
    repository = (service.image or "").split(":")[0].rsplit("/", 1)[-1]
    assert repository in SERVER_OF_IMAGE, f"{service.name}: unknown backing image {service.image}"
    return SERVER_OF_IMAGE[repository]


class ComposeRun:
    """The compose project, resolved and translated onto the test servers."""

    def __init__(self, proj: compose.Project, test_servers: TestServers) -> None:
        self.proj = proj
        self.test_servers = test_servers
        ports = {"postgres": test_servers.pg_port,
                 "redis": urlsplit(test_servers.urls.redis_url).port,
                 "neo4j": urlsplit(test_servers.urls.neo4j_uri).port}
        self.addresses = {s.name: (server_of(s), f"127.0.0.1:{ports[server_of(s)]}")
                          for s in proj.backing_services}
        self.api_port = free_port()

    def environment(self, service: compose.Service) -> dict[str, str]:
        """The service's environment with container addresses turned into test addresses."""
        env = {}
        for name, value in service.environment.items():
            parts = urlsplit(value)
            if parts.scheme and parts.hostname in self.addresses:
                server, address = self.addresses[parts.hostname]
                assert parts.port == CONTAINER_PORT[server], (
                    f"{service.name}: {name} names port {parts.port} of {parts.hostname}, "
                    f"which listens on {CONTAINER_PORT[server]}")
                userinfo = parts.netloc.rpartition("@")[0]
                value = urlunsplit(parts._replace(
                    netloc=f"{userinfo}@{address}" if userinfo else address))
            env[name] = value
        if "API_PORT" in env:
            # Published ports must be the one the API listens on; here it is a free port.
            for port in service.ports:
                assert port.target == int(env["API_PORT"]), (service.name, port)
            env["API_HOST"], env["API_PORT"] = "127.0.0.1", str(self.api_port)
        # The metrics ports are fixed in the compose network; here they would collide with
        # whatever else listens on this machine: off (tests/faults/test_metrics.py serves them).
        for name in [n for n in env if n.startswith("METRICS_PORT_")]:
            env[name] = "0"
        if "METRICS_HOST" in env:
            env["METRICS_HOST"] = "127.0.0.1"
        return env

    def set_up_backing_servers(self) -> str:
        """What the postgres and neo4j containers do with their environment, on the test
        servers; the database name the app services use."""
        dbname = ""
        for service in self.proj.backing_services:
            env = service.environment
            if server_of(service) == "postgres":
                assert env["POSTGRES_USER"] == self.test_servers.pg_user
                assert env["POSTGRES_PASSWORD"] == self.test_servers.pg_password
                dbname = env["POSTGRES_DB"]
                self.test_servers.drop_database(dbname)
                # The image's POSTGRES_USER is a superuser that owns POSTGRES_DB; the test
                # servers' app role is an ordinary one, so the database is made its own and
                # pgvector is created for it, as `memctl services up` does.
                self.test_servers.postgres.ensure_role_and_database(dbname)
            elif server_of(service) == "neo4j":
                urls = self.test_servers.urls
                assert env["NEO4J_AUTH"] == f"{urls.neo4j_user}/{urls.neo4j_password}"
        assert dbname, "no postgres service in the compose file"
        return dbname


@pytest.fixture
def compose_run(test_servers: TestServers, neo4j_driver: Driver, redis_client: object,
                tmp_path: Path) -> Iterator[ComposeRun]:
    env = compose.read_env_file(write_env_file(tmp_path / "env", test_servers))
    run = ComposeRun(compose.project(COMPOSE_FILE, env), test_servers)
    dbname = run.set_up_backing_servers()
    try:
        yield run
    finally:
        test_servers.drop_database(dbname)


@pytest.mark.slow
def test_every_app_service_of_the_compose_file_runs_on_the_image(
        image: Image, compose_run: ComposeRun, neo4j_driver: Driver, tmp_path: Path) -> None:
    proj = compose_run.proj
    app_services = [s for s in compose.start_order(proj) if s.built]
    assert app_services, "no service runs the project's image"
    one_shots = {name for s in proj.services.values()
                 for name, condition in s.depends_on.items()
                 if condition == "service_completed_successfully"}
    running: list[tuple[compose.Service, ManagedProcess]] = []
    try:
        for service in app_services:
            argv = service.command or image.dockerfile.cmd
            assert argv, f"{service.name}: no command and no CMD"
            proc = ManagedProcess(service.name, argv,
                                  image.env(compose_run.environment(service)),
                                  tmp_path / f"{service.name}.log", cwd=image.workdir,
                                  run_as=image.uid_gid)
            if service.name in one_shots:  # others wait for it to complete successfully
                assert workload_running(argv) is not None, f"Kubernetes does not run {argv}"
                code = proc.proc.wait(timeout=180)
                assert code == 0, f"{service.name} exited {code}:\n{proc.log()}"
            else:
                running.append((service, proc))
        assert running, "no long-running app service"

        # Health, as a supervisor probes it.
        base = f"http://127.0.0.1:{compose_run.api_port}"
        web_env = next(compose_run.environment(s) for s, _ in running if s.ports)

        def answers(path: str) -> bool:
            for _, proc in running:
                if proc.proc.poll() is not None:
                    pytest.fail(f"{proc.name} exited {proc.proc.returncode}:\n{proc.log()}")
            try:
                return httpx.get(base + path, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(lambda: answers("/api/health/live"), 90, "the web's liveness")
        wait_for(lambda: answers("/api/health/ready"), 30, "the web's readiness")

        # Stores...
        service_key = web_env["API_SERVICE_KEYS"].split(",")[0]
        admin_key = web_env["API_ADMIN_KEYS"].split(",")[0]
        stored = httpx.post(f"{base}/api/memories",
                            headers={"Authorization": f"Bearer {service_key}"},
                            json={"user_id": "alice", "content": "Meeting with John about Q4"},
                            timeout=10)
        assert stored.status_code == 201, stored.text
        memory_id = stored.json()["id"]

        # ...projects (relay and worker as the compose file runs them)...
        def projected() -> list[str]:
            records, _, _ = neo4j_driver.execute_query(
                "MATCH (:Memory {id: $id})-[:MENTIONS]->(e:Entity) RETURN e.name AS n",
                id=memory_id)
            return sorted(r["n"] for r in records)

        assert wait_for(projected, 90, "the worker to project the memory") == ["John", "Q4"]

        # ...and answers health: every server reachable from the web and from memctl.
        status = httpx.get(f"{base}/api/persistence/status",
                           headers={"Authorization": f"Bearer {admin_key}"}, timeout=10)
        assert status.status_code == 200, status.text
        assert status.json()["status"] == "ok", status.json()
        health = subprocess.run(["memctl", "health", "--json"], cwd=image.workdir,
                                env=image.env(compose_run.environment(app_services[0])),
                                capture_output=True, text=True, timeout=120,
                                **run_as(image))  # type: ignore[call-overload]
        assert health.returncode == 0, health.stdout + health.stderr

        # Kubernetes runs the same commands; each process's memory fits its request there.
        for service, proc in running:
            command = service.command or image.dockerfile.cmd
            assert command is not None
            workload = workload_running(command)
            assert workload is not None, f"no Kubernetes workload runs {command}"
            resources = workload["spec"]["template"]["spec"]["containers"][0]["resources"]
            rss = sum(p.memory_info().rss for p in proc.group())
            print(f"{service.name}: RSS {rss / 2**20:.0f} MiB, Kubernetes request "
                  f"{resources['requests']['memory']}, limit {resources['limits']['memory']}")
            assert rss < quantity(resources["requests"]["memory"]), (service.name, rss)

        # docker stop: SIGTERM to the container's first process, SIGKILL after the grace.
        for service, proc in reversed(running):
            grace = compose.duration_seconds(service.stop_grace_period or DOCKER_STOP_GRACE,
                                             10)
            proc.signal(signal.SIGTERM)
            try:
                code = proc.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{service.name} outlived its {grace:.0f}s stop grace period:\n"
                            f"{proc.log()}")
            # uvicorn re-raises SIGTERM once it has shut down cleanly (docker shows 143): then
            # the API's own stop line proves the shutdown ran.
            clean = code == 0 or (code == -signal.SIGTERM
                                  and "action=api.stop" in proc.log(None))
            assert clean, f"{service.name} exited {code} on SIGTERM:\n{proc.log()}"
            assert not [p for p in proc.group() if p.status() != psutil.STATUS_ZOMBIE]
    finally:
        for _, proc in running:
            proc.stop()
