"""The installed package, as the Docker image has it: a wheel, non-editable, outside the checkout.

``memctl migrate`` must find its migration scripts inside the installed package and bring an
empty database to this code's head from any working directory; the development commands
(``services``, ``run``) are not part of the installed copy.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from app.db.migrations import code_heads
from devtools.harness import REPO, child_env
from tests.conftest import TestServers


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv outside the checkout with the project's wheel installed; its bin folder."""
    root = tmp_path_factory.mktemp("install")
    wheels = root / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--disable-pip-version-check", "-w", str(wheels), str(REPO)],
                   check=True, cwd=root, timeout=300)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    wheel = next(wheels.glob("memory_persistence-*.whl"))
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet",
                    "--disable-pip-version-check", str(wheel)],
                   check=True, cwd=root, timeout=600)
    return venv / "bin"


@pytest.mark.slow
def test_the_installed_wheel_migrates_an_empty_database_from_anywhere(
        installed: Path, test_servers: TestServers, tmp_path: Path) -> None:
    dbname = "install_check"
    test_servers.drop_database(dbname)
    test_servers.postgres.ensure_role_and_database(dbname)  # empty, as `memctl services` makes
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = child_env(test_servers.settings(dbname))
    env.pop("PYTHONPATH", None)
    try:
        where = subprocess.run(
            [str(installed / "python"), "-c", "import app; print(app.__file__)"],
            cwd=elsewhere, env=env, capture_output=True, text=True, check=True, timeout=60)
        assert where.stdout.startswith(str(installed.parent)), where.stdout
        done = subprocess.run([str(installed / "memctl"), "migrate"], cwd=elsewhere, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        with psycopg.connect(test_servers.admin_dsn(dbname)) as conn:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        assert row is not None and row[0] in code_heads()
        listed = subprocess.run([str(installed / "memctl"), "--help"], cwd=elsewhere, env=env,
                                capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0 and "migrate" in listed.stdout
        assert "services" not in listed.stdout  # development tooling is not shipped
        # The console's templates and assets are package data: every template compiles.
        console = subprocess.run(
            [str(installed / "python"), "-c",
             "from app.console.web import HERE, environment\n"
             "env = environment()\n"
             "names = env.list_templates()\n"
             "for name in names: env.get_template(name)\n"
             "print(len(names), *sorted(p.name for p in (HERE / 'static').iterdir()))"],
            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60)
        assert console.returncode == 0, console.stderr
        templates = len(list((REPO / "app" / "console" / "templates").glob("*.html")))
        assert console.stdout.split() == [str(templates), "console.css", "console.js"]
    finally:
        test_servers.drop_database(dbname)
