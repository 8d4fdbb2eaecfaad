"""The readers tests/deploy relies on: Compose interpolation, .dockerignore, the Dockerfile."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools import compose
from devtools.image import Dockerfile, DockerIgnore, ImageError

ENV = {"SET": "value", "EMPTY": ""}


@pytest.mark.parametrize(("text", "expected"), [
    ("$SET and ${SET}", "value and value"),
    ("${UNSET:-fallback} ${EMPTY:-fallback} ${EMPTY-fallback}", "fallback fallback "),
    ("${SET:+alt} ${EMPTY:+alt} ${EMPTY+alt} ${UNSET+alt}", "alt  alt "),
    ("${SET:?missing}", "value"),
    ("$${SHELL_VAR} $$HOME", "${SHELL_VAR} $HOME"),  # left for the container's shell
    ("${UNSET:-${SET}}", "value"),
    ("no variables", "no variables"),
])
def test_interpolation_follows_the_compose_specification(text: str, expected: str) -> None:
    assert compose.interpolate(text, ENV) == expected


@pytest.mark.parametrize("text", ["${UNSET:?set it}", "${EMPTY:?set it}", "${UNSET?set it}"])
def test_a_required_variable_without_a_value_is_an_error(text: str) -> None:
    with pytest.raises(compose.ComposeError, match="required variable"):
        compose.interpolate(text, ENV)


def test_references_required_and_shell_references() -> None:
    text = "${A:?x} ${B:-${C}} $D $${E}"
    assert compose.references(text) == {"A", "B", "C", "D"}
    assert compose.required(text) == {"A"}
    assert compose.shell_references("X=\"${AUTH#*/}\" run '$NOT' $HOME") == {"AUTH", "HOME"}


@pytest.mark.parametrize(("spec", "target", "published", "host_ip"), [
    ("8000", 8000, None, None),
    ("8000:8000", 8000, "8000", None),
    ("127.0.0.1:8080:8000", 8000, "8080", "127.0.0.1"),
    ({"target": 8000, "published": 80, "host_ip": "::1"}, 8000, "80", "::1"),
])
def test_ports(spec: object, target: int, published: str | None, host_ip: str | None) -> None:
    port = compose.Port.parse(spec)
    assert (port.target, port.published, port.host_ip) == (target, published, host_ip)


def test_dockerignore_patterns(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_text(".env\n**/__pycache__\nbuild\n*.log\n!keep.log\n")
    ignore = DockerIgnore.read(tmp_path)
    assert ignore.excluded(".env") and not ignore.excluded("app/.env")
    assert ignore.excluded("__pycache__/x.pyc") and ignore.excluded("app/db/__pycache__/y.pyc")
    assert ignore.excluded("build/lib/app.py") and not ignore.excluded("app/build.py")
    assert ignore.excluded("x.log") and not ignore.excluded("keep.log")


def test_the_dockerfile_reader_refuses_what_it_cannot_reproduce(tmp_path: Path) -> None:
    path = tmp_path / "Dockerfile"
    path.write_text("FROM python:3.11-slim\nRUN pip install . \\\n && echo done\nUSER 1:2\n")
    dockerfile = Dockerfile.read(path)
    assert dockerfile.python_version == "3.11" and dockerfile.user == "1:2"
    assert dockerfile.values("RUN") == ["pip install .  && echo done"]
    path.write_text("FROM python:3.11-slim\nENTRYPOINT [\"x\"]\n")
    with pytest.raises(ImageError, match="ENTRYPOINT"):
        Dockerfile.read(path)
