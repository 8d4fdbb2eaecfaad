"""The Docker image, built without an engine: the Dockerfile read and its steps reproduced.

Development tooling for the deployment tests. ``build_image`` reads the Dockerfile and does what
``docker build`` would do on a machine that has no Docker engine: the files each ``COPY`` names
(less what ``.dockerignore`` excludes) are copied into a folder standing in for ``WORKDIR``, the
``RUN pip install`` runs there into a fresh virtual environment of the base image's Python
version, and ``USER`` is the uid:gid the processes run as (when the tests run as root). An
instruction it cannot reproduce is an error, so the Dockerfile cannot drift away from what the
tests prove.

Two differences, on purpose: pip may use its cache (``--no-cache-dir`` is dropped: it changes
how long the install takes, not what is installed), and the accounts ``useradd``/``groupadd``
create are not added to this machine (a process runs under the numeric uid:gid all the same).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

KNOWN = {"FROM", "WORKDIR", "COPY", "RUN", "USER", "EXPOSE", "CMD", "ENV", "LABEL"}


class ImageError(RuntimeError):
    """The Dockerfile asks for something this emulation cannot reproduce, or a step failed."""


@dataclass
class Dockerfile:
    """The instructions of a single-stage Dockerfile, continuation lines joined."""

    path: Path
    instructions: list[tuple[str, str]]

    @classmethod
    def read(cls, path: Path) -> Dockerfile:
        instructions: list[tuple[str, str]] = []
        pending = ""
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not pending and (not line or line.startswith("#")):
                continue
            if line.startswith("#"):
                continue  # a comment inside a continued instruction
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            whole = (pending + line).strip()
            pending = ""
            if whole:
                keyword, _, args = whole.partition(" ")
                instructions.append((keyword.upper(), args.strip()))
        unknown = {k for k, _ in instructions} - KNOWN
        if unknown:
            raise ImageError(f"{path}: cannot reproduce {', '.join(sorted(unknown))}")
        if sum(1 for k, _ in instructions if k == "FROM") != 1:
            raise ImageError(f"{path}: exactly one FROM is supported")
        return cls(path, instructions)

    def values(self, keyword: str) -> list[str]:
        return [args for k, args in self.instructions if k == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.values(keyword)
        return found[-1] if found else None

    @property
    def base(self) -> str:
        return self.values("FROM")[0]

    @property
    def python_version(self) -> str:
        """The Python version of an official ``python:X.Y[-variant]`` base image."""
        match = re.fullmatch(r"python:(\d+\.\d+)(?:[.\d]*)(?:-\S+)?", self.base)
        if match is None:
            raise ImageError(f"base image {self.base!r} is not an official python:X.Y image")
        return match[1]

    @property
    def cmd(self) -> list[str] | None:
        return _exec_form(self.last("CMD"))

    @property
    def user(self) -> str | None:
        return self.last("USER")

    @property
    def exposed(self) -> list[int]:
        return [int(p.split("/")[0]) for spec in self.values("EXPOSE") for p in spec.split()]

    @property
    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for spec in self.values("ENV"):
            for item in shlex.split(spec):
                name, sep, value = item.partition("=")
                if not sep:
                    raise ImageError(f"ENV {spec!r}: only the NAME=value form is supported")
                out[name] = value
        return out


def _exec_form(args: str | None) -> list[str] | None:
    if args is None:
        return None
    try:
        parsed = json.loads(args)
    except json.JSONDecodeError:
        return ["/bin/sh", "-c", args]
    return [str(a) for a in parsed]


# -- .dockerignore ----------------------------------------------------------------------------


def _pattern(text: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go's filepath.Match plus ``**``) as a regular expression."""
    out, i = "", 0
    while i < len(text):
        if text.startswith("**/", i):
            out += "(?:.*/)?"  # any number of folders, none included
            i += 3
        elif text.startswith("**", i):
            out += ".*"
            i += 2
        elif text[i] == "*":
            out += "[^/]*"
            i += 1
        elif text[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(text[i])
            i += 1
    return re.compile(out)


@dataclass
class DockerIgnore:
    rules: list[tuple[bool, re.Pattern[str]]] = field(default_factory=list)

    @classmethod
    def read(cls, context: Path) -> DockerIgnore:
        path = context / ".dockerignore"
        rules = []
        if path.exists():
            for raw in path.read_text().splitlines():
                line = raw.strip()
                if not line or line.startswith("#"):
                    continue
                keep = line.startswith("!")
                text = str(PurePosixPath(line.lstrip("!").strip().lstrip("/")))
                rules.append((keep, _pattern(text.removeprefix("./"))))
        return cls(rules)

    def excluded(self, relative: str) -> bool:
        """Whether the context path (or a folder above it) is excluded; the last rule wins."""
        parts = PurePosixPath(relative).parts
        candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        verdict = False
        for keep, pattern in self.rules:
            if any(pattern.fullmatch(c) for c in candidates):
                verdict = not keep
        return verdict


# -- the build ----------------------------------------------------------------------------------


@dataclass
class Image:
    """The built image: its working directory, its Python environment, user and command."""

    root: Path
    workdir: Path
    venv: Path
    dockerfile: Dockerfile
    uid_gid: tuple[int, int] | None

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def env(self, extra: dict[str, str]) -> dict[str, str]:
        """A container's environment: the base image's, the Dockerfile's ENV, then ``extra``.

        Nothing of this machine's environment leaks in (no PYTHONPATH, no developer settings).
        """
        base = {"PATH": f"{self.bin}:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
                "HOME": "/nonexistent"}
        return {**base, **self.dockerfile.env, **extra}


def _copy(context: Path, ignore: DockerIgnore, source: str, target: Path) -> None:
    src = context / source
    if not src.exists() and not src.is_symlink():
        raise ImageError(f"COPY {source}: not in the build context")
    relative = src.relative_to(context).as_posix()
    if ignore.excluded(relative):
        raise ImageError(f"COPY {source}: excluded by .dockerignore")
    if src.is_dir() and not src.is_symlink():
        target.mkdir(parents=True, exist_ok=True)
        for child in sorted(src.iterdir()):
            child_rel = child.relative_to(context).as_posix()
            if not ignore.excluded(child_rel):
                _copy(context, ignore, child_rel, target / child.name)
    elif src.is_symlink():  # COPY keeps links as links
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(os.readlink(src))
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


def _run(command: str, image: Image, log: Path) -> None:
    for step in (s.strip() for s in command.split("&&")):
        argv = shlex.split(step)
        if argv[:2] == ["pip", "install"]:
            args = [a for a in argv[2:] if a != "--no-cache-dir"]
            with log.open("ab") as out:
                done = subprocess.run([str(image.bin / "pip"), "install",
                                       "--disable-pip-version-check", *args],
                                      cwd=image.workdir, stdout=out, stderr=subprocess.STDOUT,
                                      timeout=900)
            if done.returncode != 0:
                raise ImageError(f"RUN {step}: exit {done.returncode}; see {log}")
        elif argv and argv[0] in ("useradd", "groupadd"):
            continue  # the account is not created here; USER's numeric ids are used directly
        else:
            raise ImageError(f"RUN {step!r}: this emulation only runs pip install, useradd "
                             "and groupadd")


def _numeric_user(spec: str | None) -> tuple[int, int] | None:
    if spec is None:
        return None
    user, _, group = spec.partition(":")
    if not user.isdigit() or (group and not group.isdigit()):
        raise ImageError(f"USER {spec}: give numeric ids (uid:gid), so Kubernetes' "
                         "runAsNonRoot can verify the user")
    return int(user), int(group or user)


def _reachable_by_others(path: Path) -> bool:
    return all(folder.stat().st_mode & stat.S_IXOTH for folder in path.parents)


def _python(version: str, shared: bool) -> str:
    """A ``pythonX.Y`` on PATH; with ``shared``, one whose files every user can read.

    The image's Python lives in /usr/local, readable by its unprivileged user; an interpreter
    under a private home (pyenv in /root) is not, so it is passed over then.
    """
    seen: set[Path] = set()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(folder) / f"python{version}"
        if not os.access(candidate, os.X_OK):
            continue
        real = candidate.resolve()
        if real in seen:
            continue
        seen.add(real)
        if not shared:
            return str(candidate)
        done = subprocess.run([str(candidate), "-c", "import sys; print(sys.base_prefix)"],
                              capture_output=True, text=True, timeout=60)
        prefix = Path(done.stdout.strip()) if done.returncode == 0 else None
        if prefix is not None and _reachable_by_others(real) and \
                _reachable_by_others(prefix / "lib"):
            return str(real)
    raise ImageError(f"no Python {version} on PATH" + (" that other users can read (the "
                     "image runs as an unprivileged user)" if shared else ""))


def make_traversable(path: Path) -> None:
    """Let other users reach ``path`` (o+x on it and every folder above it)."""
    for folder in [path, *path.parents]:
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            folder.chmod(mode | stat.S_IXOTH | stat.S_IROTH)


def build_image(dockerfile_path: Path, root: Path, log: Path) -> Image:
    """Reproduce ``docker build`` of ``dockerfile_path`` (its folder is the context) in ``root``."""
    dockerfile = Dockerfile.read(dockerfile_path)
    context = dockerfile_path.parent
    ignore = DockerIgnore.read(context)
    uid_gid = _numeric_user(dockerfile.user) if os.geteuid() == 0 else None
    python = _python(dockerfile.python_version, shared=uid_gid is not None)
    root.mkdir(parents=True, exist_ok=True)
    venv = root / "python"
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=300)
    workdir = root / "fs"
    image = Image(root, workdir, venv, dockerfile, None)
    workdir.mkdir(parents=True, exist_ok=True)
    for keyword, args in dockerfile.instructions:
        if keyword == "WORKDIR":
            image.workdir = root / "fs" / args.lstrip("/")
            image.workdir.mkdir(parents=True, exist_ok=True)
        elif keyword == "COPY":
            parts = _exec_form(args) if args.startswith("[") else shlex.split(args)
            assert parts is not None
            if any(p.startswith("--") for p in parts):
                raise ImageError(f"COPY {args}: options are not supported")
            *sources, dest = parts
            base = image.workdir if not dest.startswith("/") else root / "fs"
            target = base / dest.lstrip("/")
            for source in sources:
                into_folder = dest.endswith("/") or len(sources) > 1
                _copy(context, ignore, source, target / Path(source).name if into_folder
                      else target)
        elif keyword == "RUN":
            _run(args, image, log)
    image.uid_gid = uid_gid
    make_traversable(image.workdir)
    make_traversable(image.bin)
    return image
