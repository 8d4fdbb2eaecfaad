"""docker-compose.yml read as Compose reads it: YAML with merge keys, then ``${VAR}`` interpolation.

Development tooling for the deployment tests, which check the compose file and run its app
services on local servers without a Docker engine. Interpolation follows the Compose
Specification: ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
``${VAR:?error}``, ``${VAR?error}``, ``${VAR:+alternative}``, ``${VAR+alternative}`` and ``$$``
for a literal ``$`` (left for the container's shell).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_NAMED = re.compile(_NAME)
_BRACED = re.compile(rf"^(?P<name>{_NAME})(?:(?P<op>:?[-?+])(?P<arg>.*))?$", re.DOTALL)
# A shell's reference to a variable: $NAME or ${NAME...}, as a CMD-SHELL healthcheck holds it.
_SHELL_REFERENCE = re.compile(rf"\$(?:\{{(?P<braced>{_NAME})|(?P<named>{_NAME}))")


class ComposeError(ValueError):
    """The compose file (or an interpolation in it) is not what Compose would accept."""


@dataclass(frozen=True)
class _Token:
    kind: str  # text | escaped | named | braced
    value: str  # the text, the name, or what is between the braces


def _tokens(text: str) -> Iterator[_Token]:
    """``text`` split into literal text and ``$`` expressions (braces balanced, so
    ``${A:-${B}}`` is one expression)."""
    i, start = 0, 0
    while i < len(text):
        if text[i] != "$":
            i += 1
            continue
        if start < i:
            yield _Token("text", text[start:i])
        nxt = text[i + 1:i + 2]
        if nxt == "$":
            yield _Token("escaped", "$")
            i += 2
        elif nxt == "{":
            depth, j = 1, i + 2
            while j < len(text) and depth:
                if text.startswith("${", j):
                    depth, j = depth + 1, j + 2
                    continue
                if text[j] == "}":
                    depth -= 1
                j += 1
            if depth:
                raise ComposeError(f"unclosed interpolation: {text[i:]}")
            yield _Token("braced", text[i + 2:j - 1])
            i = j
        elif (named := _NAMED.match(text, i + 1)) is not None:
            yield _Token("named", named.group())
            i = named.end()
        else:
            yield _Token("text", "$")
            i += 1
        start = i
    if start < len(text):
        yield _Token("text", text[start:])


def _braced(content: str) -> re.Match[str]:
    parsed = _BRACED.match(content)
    if parsed is None:
        raise ComposeError(f"invalid interpolation: ${{{content}}}")
    return parsed


def references(text: str) -> set[str]:
    """Every variable ``text`` interpolates (``$$`` escapes excluded), defaults' included."""
    found: set[str] = set()
    for token in _tokens(text):
        if token.kind == "named":
            found.add(token.value)
        elif token.kind == "braced":
            parsed = _braced(token.value)
            found.add(parsed["name"])
            found |= references(parsed["arg"] or "")
    return found


def required(text: str) -> set[str]:
    """The variables ``text`` requires a value for (``${VAR?error}``, ``${VAR:?error}``)."""
    found: set[str] = set()
    for token in _tokens(text):
        if token.kind == "braced":
            parsed = _braced(token.value)
            if parsed["op"] in ("?", ":?"):
                found.add(parsed["name"])
            found |= required(parsed["arg"] or "")
    return found


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """``text`` with its variables substituted from ``env`` as Compose does it."""
    out = []
    for token in _tokens(text):
        if token.kind in ("text", "escaped"):
            out.append(token.value)
        elif token.kind == "named":
            out.append(env.get(token.value, ""))
        else:
            out.append(_substitute(_braced(token.value), env))
    return "".join(out)


def _substitute(parsed: re.Match[str], env: Mapping[str, str]) -> str:
    name, op, arg = parsed["name"], parsed["op"], parsed["arg"] or ""
    value = env.get(name)
    unset_or_empty = value is None or (op is not None and op.startswith(":") and not value)
    if op in ("-", ":-"):
        return interpolate(arg, env) if unset_or_empty else str(value)
    if op in ("?", ":?"):
        if unset_or_empty:
            raise ComposeError(f"required variable {name} is missing a value: {arg}")
        return str(value)
    if op in ("+", ":+"):
        return "" if unset_or_empty else interpolate(arg, env)
    return value or ""


def interpolate_tree(value: Any, env: Mapping[str, str]) -> Any:
    """Every string in a parsed YAML tree interpolated (keys stay as written)."""
    if isinstance(value, str):
        return interpolate(value, env)
    if isinstance(value, dict):
        return {k: interpolate_tree(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate_tree(v, env) for v in value]
    return value


def strings(value: Any) -> list[str]:
    """Every string in a parsed YAML tree."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines as Compose reads an ``.env`` file (comments and blanks skipped)."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not re.fullmatch(_NAME, name.strip()):
            raise ComposeError(f"{path}:{number}: not NAME=value")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name.strip()] = value
    return values


def documented_names(path: Path) -> set[str]:
    """Names an env example documents: ``NAME=...`` lines, commented out or not."""
    pattern = re.compile(rf"^#?\s*({_NAME})=", re.MULTILINE)
    return set(pattern.findall(path.read_text()))


def shell_references(command: str) -> set[str]:
    """Variables a POSIX shell command expands (single-quoted text expands nothing)."""
    unquoted = re.sub(r"'[^']*'", "''", command)
    return {m["braced"] or m["named"] for m in _SHELL_REFERENCE.finditer(unquoted)}


# -- the model ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Port:
    """One published port: ``[host_ip:][published:]target[/protocol]`` or the long syntax."""

    target: int
    published: str | None
    host_ip: str | None
    protocol: str = "tcp"

    @classmethod
    def parse(cls, spec: object) -> Port:
        if isinstance(spec, dict):
            published = spec.get("published")
            return cls(int(spec["target"]), None if published is None else str(published),
                       spec.get("host_ip"), spec.get("protocol", "tcp"))
        text = str(spec)
        text, _, protocol = text.partition("/")
        parts = text.rsplit(":", 2)
        target = int(parts[-1])
        published = parts[-2] if len(parts) >= 2 else None
        host_ip = parts[0] if len(parts) == 3 else None
        return cls(target, published, host_ip.strip("[]") if host_ip else None,
                   protocol or "tcp")


@dataclass(frozen=True)
class Healthcheck:
    """A service's healthcheck: ``kind`` is CMD, CMD-SHELL or NONE."""

    kind: str
    command: list[str]

    @classmethod
    def parse(cls, spec: dict[str, Any]) -> Healthcheck:
        test = spec.get("test")
        if isinstance(test, str):
            return cls("CMD-SHELL", [test])
        if not isinstance(test, list) or not test:
            raise ComposeError(f"healthcheck test must be a string or a list: {test!r}")
        return cls(str(test[0]), [str(t) for t in test[1:]])

    def shell_references(self) -> set[str]:
        """The container's variables the check expands (a CMD list expands none)."""
        if self.kind != "CMD-SHELL":
            return set()
        return shell_references(" ".join(self.command))


@dataclass(frozen=True)
class Service:
    name: str
    raw: dict[str, Any]
    image: str | None
    build: object | None
    command: list[str] | None
    environment: dict[str, str]
    depends_on: dict[str, str]
    ports: list[Port]
    healthcheck: Healthcheck | None
    stop_grace_period: str | None = None

    @property
    def built(self) -> bool:
        """Whether the service runs the project's own image (``build:``)."""
        return self.build is not None


@dataclass
class Project:
    """The compose file after merge keys and interpolation."""

    path: Path
    raw: dict[str, Any]
    resolved: dict[str, Any]
    services: dict[str, Service] = field(default_factory=dict)

    @property
    def app_services(self) -> list[Service]:
        return [s for s in self.services.values() if s.built]

    @property
    def backing_services(self) -> list[Service]:
        return [s for s in self.services.values() if not s.built]


def load_yaml(path: Path) -> dict[str, Any]:
    """The compose file's YAML, merge keys (``<<: *anchor``) applied."""
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ComposeError(f"{path}: not a mapping")
    return data


def _environment(spec: object) -> dict[str, str]:
    if spec is None:
        return {}
    if isinstance(spec, list):
        out = {}
        for item in spec:
            name, _, value = str(item).partition("=")
            out[name] = value
        return out
    if isinstance(spec, dict):
        return {str(k): "" if v is None else _scalar(v) for k, v in spec.items()}
    raise ComposeError(f"environment must be a mapping or a list: {spec!r}")


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _depends_on(spec: object) -> dict[str, str]:
    if spec is None:
        return {}
    if isinstance(spec, list):
        return {str(name): "service_started" for name in spec}
    if isinstance(spec, dict):
        return {str(name): (v or {}).get("condition", "service_started")
                for name, v in spec.items()}
    raise ComposeError(f"depends_on must be a mapping or a list: {spec!r}")


def _command(spec: object) -> list[str] | None:
    if spec is None:
        return None
    if isinstance(spec, str):
        return shlex.split(spec)
    return [str(part) for part in spec]  # type: ignore[attr-defined]


def project(path: Path, env: Mapping[str, str], profiles: Iterable[str] = ()) -> Project:
    """Read ``path`` and interpolate it from ``env`` (what ``.env`` and the shell give).

    As ``docker compose`` does, a service with ``profiles`` is part of the project only when
    one of them is among ``profiles`` (``--profile``).
    """
    raw = load_yaml(path)
    resolved = interpolate_tree(raw, env)
    proj = Project(path, raw, resolved)
    active = set(profiles)
    for name, spec in (resolved.get("services") or {}).items():
        if spec.get("profiles") and not active & set(spec["profiles"]):
            continue
        health = spec.get("healthcheck")
        proj.services[name] = Service(
            name=name, raw=spec, image=spec.get("image"), build=spec.get("build"),
            command=_command(spec.get("command")),
            environment=_environment(spec.get("environment")),
            depends_on=_depends_on(spec.get("depends_on")),
            ports=[Port.parse(p) for p in spec.get("ports") or []],
            healthcheck=Healthcheck.parse(health) if health else None,
            stop_grace_period=spec.get("stop_grace_period"),
        )
    return proj


def start_order(proj: Project) -> list[Service]:
    """The services in an order that honours ``depends_on`` (Compose's start order)."""
    ordered: list[Service] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if any(s.name == name for s in ordered):
            return
        if name in visiting:
            raise ComposeError(f"depends_on cycle through {name}")
        if name not in proj.services:
            raise ComposeError(f"depends_on names an unknown service: {name}")
        visiting.add(name)
        for dependency in proj.services[name].depends_on:
            visit(dependency)
        visiting.discard(name)
        ordered.append(proj.services[name])

    for name in proj.services:
        visit(name)
    return ordered


def duration_seconds(text: str | None, default: float) -> float:
    """A Compose duration (``1m30s``, ``10s``, ``500ms``) in seconds."""
    if text is None:
        return default
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    total, rest = 0.0, str(text).strip()
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", rest):
        total += float(amount) * units[unit]
    if not re.fullmatch(r"(?:\d+(?:\.\d+)?(?:ms|us|h|m|s))+", rest):
        raise ComposeError(f"not a duration: {text!r}")
    return total
