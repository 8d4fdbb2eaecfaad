"""The installed package, as the Docker image has it: non-editable, outside the checkout.

``memctl migrate`` must find its migration scripts inside the installed package and bring an
empty database to this code's head from any working directory, as the image's unprivileged
user; ``memctl ready`` tells an unmigrated database from a migrated one; the development
commands (``services``, ``run``) are not part of the installed copy; the console's templates
and assets are.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg
import pytest

from app.db.migrations import code_heads
from devtools.harness import REPO
from devtools.image import Image
from tests.conftest import TestServers
from tests.deploy.conftest import outside, run_as


@pytest.mark.slow
def test_the_installed_package_migrates_an_empty_database_from_anywhere(
        image: Image, test_servers: TestServers, tmp_path: Path) -> None:
    dbname = "install_check"
    test_servers.drop_database(dbname)
    test_servers.postgres.ensure_role_and_database(dbname)  # empty, as `memctl services` makes
    elsewhere = outside(tmp_path)
    env = image.env(test_servers.settings(dbname).process_env())

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, cwd=elsewhere, env=env, capture_output=True, text=True,
                              timeout=120, **run_as(image))  # type: ignore[call-overload]

    try:
        where = run(str(image.bin / "python"), "-c", "import app; print(app.__file__)")
        assert where.returncode == 0, where.stderr
        assert where.stdout.startswith(str(image.venv)), where.stdout
        before = run(str(image.bin / "memctl"), "ready")
        assert before.returncode == 1, before.stderr
        assert "not migrated" in before.stderr
        done = run(str(image.bin / "memctl"), "migrate")
        assert done.returncode == 0, done.stderr
        with psycopg.connect(test_servers.admin_dsn(dbname)) as conn:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        assert row is not None and row[0] in code_heads()
        after = run(str(image.bin / "memctl"), "ready")
        assert after.returncode == 0, after.stderr
        listed = run(str(image.bin / "memctl"), "--help")
        assert listed.returncode == 0 and "migrate" in listed.stdout
        assert "services" not in listed.stdout  # development tooling is not shipped
        # The console's templates and assets are package data: every template compiles.
        console = run(str(image.bin / "python"), "-c",
                      "from app.console.web import HERE, environment\n"
                      "env = environment()\n"
                      "names = env.list_templates()\n"
                      "for name in names: env.get_template(name)\n"
                      "print(len(names), *sorted(p.name for p in (HERE / 'static').iterdir()))")
        assert console.returncode == 0, console.stderr
        templates = len(list((REPO / "app" / "console" / "templates").glob("*.html")))
        assert console.stdout.split() == [str(templates), "console.css", "console.js"]
    finally:
        test_servers.drop_database(dbname)
