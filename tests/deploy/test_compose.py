"""docker-compose.yml checked without a Docker engine.

- Valid against the Compose Specification's JSON schema, as written and once merge keys and
  interpolation are applied (check-jsonschema's vendored ``compose-spec`` schema: no network).
- Every ``${VAR}`` it interpolates is documented in ``.env.example``.
- Every healthcheck expands only variables its own service defines, and each backing service's
  healthcheck passes when run as its container's shell would run it, against the test servers.
- Nothing but the API is published, and the API only on loopback (TLS terminates in front).
- The app services' environment names real settings, with the credentials the backing
  services are given.

The rules read the files, so a new setting or service needs documenting, not a new test.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from app.settings import Settings
from devtools import compose
from devtools.localservers import Postgres
from tests.conftest import TestServers
from tests.deploy.conftest import COMPOSE_FILE, ENV_EXAMPLE, write_env_file

CHECK_JSONSCHEMA = str(Path(sys.executable).parent / "check-jsonschema")
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
SETTINGS = {name.upper() for name in Settings.model_fields}


def example_env() -> dict[str, str]:
    """A value for every variable the compose file requires (what an operator's .env has)."""
    raw = compose.load_yaml(COMPOSE_FILE)
    needed = set().union(*(compose.required(s) for s in compose.strings(raw)))
    return {name: f"{name.lower()}-example" for name in needed}


@pytest.fixture(scope="module")
def project() -> compose.Project:
    return compose.project(COMPOSE_FILE, example_env())


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CHECK_JSONSCHEMA, "--builtin-schema", "vendor.compose-spec",
                           str(path)], capture_output=True, text=True, timeout=120)


def test_the_compose_file_follows_the_compose_specification(
        project: compose.Project, tmp_path: Path) -> None:
    as_written = validate(COMPOSE_FILE)
    assert as_written.returncode == 0, as_written.stdout + as_written.stderr
    resolved = tmp_path / "resolved.json"  # merge keys applied, variables interpolated
    resolved.write_text(json.dumps(project.resolved))
    done = validate(resolved)
    assert done.returncode == 0, done.stdout + done.stderr
    # The validator rejects what Compose rejects (it is not passing everything).
    broken = json.loads(json.dumps(project.resolved))
    broken["services"][next(iter(broken["services"]))]["restrat"] = "always"
    resolved.write_text(json.dumps(broken))
    rejected = validate(resolved)
    assert rejected.returncode == 1 and "restrat" in rejected.stdout, rejected.stdout


def test_every_variable_it_interpolates_is_documented_in_env_example() -> None:
    used = set().union(*(compose.references(s)
                         for s in compose.strings(compose.load_yaml(COMPOSE_FILE))))
    assert used, "the compose file interpolates no variable?"
    assert used - compose.documented_names(ENV_EXAMPLE) == set()


def test_healthchecks_expand_only_their_own_services_variables(
        project: compose.Project) -> None:
    checked = 0
    for service in project.services.values():
        if service.healthcheck is None:
            continue
        checked += 1
        undefined = service.healthcheck.shell_references() - set(service.environment)
        assert not undefined, f"{service.name}'s healthcheck expands {undefined}, which its " \
                              "container is not given"
    assert checked
    # The rule catches the check this file had: NEO4J_PASSWORD, with only NEO4J_AUTH given.
    old = "cypher-shell -u neo4j -p \"$NEO4J_PASSWORD\" 'RETURN 1' || exit 1"
    assert compose.shell_references(old) - {"NEO4J_AUTH"} == {"NEO4J_PASSWORD"}


def test_only_the_api_is_published_and_only_on_loopback(project: compose.Project) -> None:
    published = 0
    for service in project.services.values():
        for port in service.ports:
            published += 1
            api_port = service.environment.get("API_PORT")
            assert service.built and api_port is not None and port.target == int(api_port), \
                f"{service.name} publishes port {port.target}, which is not the API"
            assert port.host_ip in LOOPBACK, \
                f"{service.name} publishes the plain-HTTP API on {port.host_ip or 'every'} " \
                "interface: bind it to 127.0.0.1 behind a TLS terminator"
    assert published, "the API is not published at all"


def test_the_app_environment_names_settings_and_the_backing_services_credentials(
        project: compose.Project) -> None:
    backing = {s.name: s.environment for s in project.backing_services}
    for service in project.app_services:
        env = service.environment
        unknown = set(env) - SETTINGS
        assert not unknown, f"{service.name}: {unknown} are not settings (app/settings.py)"
        database = urlsplit(env["DATABASE_URL"])
        assert database.hostname is not None
        postgres = backing[database.hostname]
        assert (unquote(database.username or ""), unquote(database.password or ""),
                database.path.lstrip("/")) == (postgres["POSTGRES_USER"],
                                               postgres["POSTGRES_PASSWORD"],
                                               postgres["POSTGRES_DB"])
        neo4j = backing[urlsplit(env["NEO4J_URI"]).hostname or ""]
        assert f"{env['NEO4J_USER']}/{env['NEO4J_PASSWORD']}" == neo4j["NEO4J_AUTH"]
        assert urlsplit(env["REDIS_URL"]).hostname in backing


# -- the backing services' healthchecks, run -----------------------------------------------


def shims(folder: Path, test_servers: TestServers) -> Path:
    """Stand-ins for the containers' own tools, reaching the test servers instead of the
    container's localhost (pg_isready and redis-cli are the real programs)."""
    folder.mkdir()
    redis_cli = shutil.which("redis-cli")
    assert redis_cli is not None, "redis-cli (Debian's redis-tools) is not installed"
    redis_port = urlsplit(test_servers.urls.redis_url).port
    neo4j_port = urlsplit(test_servers.urls.neo4j_uri).port
    scripts = {
        "pg_isready": f'exec {Postgres.bin_dir() / "pg_isready"} -h 127.0.0.1 '
                      f'-p {test_servers.pg_port} "$@"',
        "redis-cli": f'exec {redis_cli} -p {redis_port} "$@"',
        # cypher-shell takes its credentials from -u/-p or NEO4J_USERNAME/NEO4J_PASSWORD.
        "cypher-shell": f'exec {sys.executable} -c "$CYPHER_SHELL" {neo4j_port} "$@"',
    }
    for name, body in scripts.items():
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)
    return folder


CYPHER_SHELL = """
import argparse, os, sys
from neo4j import GraphDatabase
parser = argparse.ArgumentParser()
parser.add_argument("port")
parser.add_argument("-u", "--username", default=os.environ.get("NEO4J_USERNAME", ""))
parser.add_argument("-p", "--password", default=os.environ.get("NEO4J_PASSWORD", ""))
parser.add_argument("query")
args = parser.parse_args()
try:
    with GraphDatabase.driver(f"bolt://127.0.0.1:{args.port}",
                              auth=(args.username, args.password)) as driver:
        driver.execute_query(args.query)
except Exception as exc:
    print(f"cypher-shell: {type(exc).__name__}: {exc}", file=sys.stderr)
    sys.exit(1)
"""


def run_healthcheck(check: compose.Healthcheck, env: dict[str, str],
                    bin_dir: Path) -> subprocess.CompletedProcess[str]:
    """The check as Docker runs it: CMD as an argv, CMD-SHELL under /bin/sh -c."""
    argv = check.command if check.kind == "CMD" else ["/bin/sh", "-c", check.command[0]]
    full_env = {**env, "PATH": f"{bin_dir}:/usr/bin:/bin", "CYPHER_SHELL": CYPHER_SHELL}
    return subprocess.run(argv, env=full_env, capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_each_backing_services_healthcheck_passes_against_a_real_server(
        test_servers: TestServers, tmp_path: Path) -> None:
    env = compose.read_env_file(write_env_file(tmp_path / "env", test_servers))
    proj = compose.project(COMPOSE_FILE, env)
    bin_dir = shims(tmp_path / "bin", test_servers)
    checked = []
    for service in proj.backing_services:
        assert service.healthcheck is not None, f"{service.name} has no healthcheck: the " \
            "app services' service_healthy condition would never hold"
        done = run_healthcheck(service.healthcheck, service.environment, bin_dir)
        assert done.returncode == 0, (service.name, done.stdout, done.stderr)
        checked.append(service.name)
    assert len(checked) == 3, checked
    # The neo4j check this file had fails the same way it failed in its container.
    neo4j = next(s for s in proj.backing_services if "NEO4J_AUTH" in s.environment)
    old = compose.Healthcheck(
        "CMD-SHELL", ["cypher-shell -u neo4j -p \"$NEO4J_PASSWORD\" 'RETURN 1' || exit 1"])
    assert run_healthcheck(old, neo4j.environment, bin_dir).returncode == 1
