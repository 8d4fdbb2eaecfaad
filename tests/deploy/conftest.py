"""The image the Dockerfile describes, built once for every deployment test that runs it.

``devtools.image.build_image`` reproduces ``docker build`` without an engine: the Dockerfile's
COPY into a folder standing in for WORKDIR, its ``pip install .`` into a fresh virtual
environment of the base image's Python, outside the checkout; its USER's uid:gid for the
processes when the tests run as root.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from devtools import compose
from devtools.harness import REPO
from devtools.image import Image, build_image
from tests.conftest import TestServers

COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
KUBERNETES = REPO / "deploy" / "kubernetes"


@pytest.fixture(scope="package")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    root = tmp_path_factory.mktemp("image")
    return build_image(REPO / "Dockerfile", root, root / "build.log")


def run_as(image: Image) -> dict[str, object]:
    """subprocess keyword arguments that run a child as the image's user (when we are root)."""
    if image.uid_gid is None:
        return {}
    return {"user": image.uid_gid[0], "group": image.uid_gid[1], "extra_groups": []}


def outside(tmp_path: Path) -> Path:
    """A folder the image's user can enter but not write to: nowhere near the checkout."""
    from devtools.image import make_traversable

    folder = tmp_path / "elsewhere"
    folder.mkdir()
    make_traversable(folder)
    return folder


def write_env_file(path: Path, test_servers: TestServers) -> Path:
    """The stand-in for ``.env``: the test servers' passwords, a fresh value for every other
    variable the compose file requires; the rest keep the compose file's defaults."""
    raw = compose.load_yaml(COMPOSE_FILE)
    given = {"POSTGRES_PASSWORD": test_servers.pg_password,
             "REDIS_PASSWORD": urlsplit(test_servers.urls.redis_url).password or "",
             "NEO4J_PASSWORD": test_servers.urls.neo4j_password}
    needed = set().union(*(compose.required(s) for s in compose.strings(raw)))
    values = {name: given.get(name, f"{name.lower()}-{secrets.token_hex(8)}")
              for name in sorted(needed)}
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    path.chmod(0o600)
    return path


def manifests() -> dict[str, list[dict[str, Any]]]:
    """Every YAML document under deploy/kubernetes, by file name."""
    return {path.name: [d for d in yaml.safe_load_all(path.read_text()) if d]
            for path in sorted(KUBERNETES.glob("*.yaml"))}


def workloads() -> list[dict[str, Any]]:
    """The Deployments and Jobs of the manifests."""
    return [d for docs in manifests().values() for d in docs
            if d["kind"] in ("Deployment", "Job")]


def workload_running(command: list[str]) -> dict[str, Any] | None:
    """The Deployment or Job whose main container runs exactly ``command``."""
    for doc in workloads():
        if doc["spec"]["template"]["spec"]["containers"][0]["command"] == command:
            return doc
    return None


def quantity(text: str | int) -> float:
    """A Kubernetes quantity (``384Mi``, ``500m``, ``2``) as a number (bytes, cores)."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 1e3, "M": 1e6, "G": 1e9, "m": 1e-3}
    value = str(text)
    for suffix, factor in units.items():
        if value.endswith(suffix):
            return float(value[:-len(suffix)]) * factor
    return float(value)
