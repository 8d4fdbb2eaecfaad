"""Quiet logs (issue 17 item 7): what is expected on a fresh system is not logged as a warning.

- Neo4j answers a query naming a label or property no node has yet (all of them, on an empty
  graph) with an UNRECOGNIZED notification, which the driver logs as a WARNING of several
  kilobytes. The graph store's driver asks the server not to send those.
- The readiness probe reads the migration scripts; Alembic logs its plugin set-up at INFO then,
  which the processes' logging keeps out.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from neo4j import Driver, GraphDatabase

from app.settings import Settings
from app.wiring import build_services
from devtools.harness import child_env

NEVER_SEEN = "MATCH (n:NeverSeenLabelQ17) WHERE n.never_seen_property_q17 = 1 RETURN n"


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()[:200]}" for r in caplog.records
            if r.levelno >= logging.WARNING]


def test_a_fresh_check_on_an_empty_graph_logs_no_warnings(
        settings: Settings, neo4j_driver: Driver, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with build_services(settings) as parts:  # the graph store with its own driver
        parts.graph.ensure_schema()
        report = parts.consistency.check()
        assert report.consistent and report.checked == 0
        parts.graph.driver.execute_query(NEVER_SEEN)
    assert warnings_of(caplog) == []


def test_without_that_setting_the_driver_would_warn(
        settings: Settings, neo4j_driver: Driver, caplog: pytest.LogCaptureFixture) -> None:
    """The control: the same query on a plain driver logs the warning the store avoids."""
    caplog.set_level(logging.INFO)
    with GraphDatabase.driver(settings.neo4j_uri, auth=(
            settings.neo4j_user, settings.neo4j_password.get_secret_value())) as driver:
        driver.execute_query(NEVER_SEEN)
    assert any("NeverSeenLabelQ17" in w for w in warnings_of(caplog))


def test_the_readiness_probe_logs_no_alembic_set_up(settings: Settings) -> None:
    script = ("from app.logs import configure_logging\n"
              "from app.settings import load_settings\n"
              "from app.wiring import build_services\n"
              "settings = load_settings()\n"
              "configure_logging(settings)\n"
              "with build_services(settings) as parts:\n"
              "    for _ in range(3):\n"
              "        assert parts.admin.readiness().ok\n"
              "import logging; logging.getLogger('probe').info('asked three times')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=child_env(settings, LOG_LEVEL="INFO"), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "asked three times" in done.stderr  # INFO lines do show
    assert "alembic" not in done.stderr, done.stderr
