"""The operations kit under deploy/: Prometheus' scrape config and alert rules, Grafana's
dashboard, and the compose profile that runs them, checked against the metrics the code defines.

- Every expression (alert rule, dashboard query) names only metrics ``app.metrics`` defines
  (or Prometheus' own ``up``), with label matchers those metrics carry.
- The rules are well formed (PyYAML: groups, names, durations, severities) and cover what an
  operator must hear of; with ``promtool`` on PATH (or $PROMTOOL) it checks them too and runs
  their unit tests (deploy/prometheus/alerts.test.yml: each alert fires when it should).
- The scrape config reaches every process where docker-compose.yml makes it listen, and the
  observability profile adds Prometheus and Grafana only when asked, Grafana on loopback only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from app import metrics
from devtools import compose
from tests.deploy.conftest import COMPOSE_FILE
from tests.deploy.test_compose import example_env

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "deploy" / "prometheus"
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "memctl.json"
DURATION = re.compile(r"^\d+[smhdw]$")
SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")


def defined() -> dict[str, set[str]]:
    """Every series name the processes expose, with the labels it carries."""
    series: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        name, labels = value._name, set(value._labelnames)
        if isinstance(value, Counter):
            names = [f"{name}_total", f"{name}_created"]
        elif isinstance(value, Histogram):
            names = [f"{name}_bucket", f"{name}_count", f"{name}_sum", f"{name}_created"]
            labels |= {"le"}
        else:
            assert isinstance(value, Gauge)
            names = [name]
        for n in names:
            series[n] = set(labels)
    state = metrics.State(outbox={"pending": 1}, lag_seconds=1.0, expired_leases=0,
                          dead_letters={"open": 1}, breakers_open={"graph": False},
                          last_check_timestamp=1.0, open_findings={"orphan_entity": 1})
    for family in metrics.StateCollector(lambda: state).collect():
        for sample in family.samples:
            series[sample.name] = set(sample.labels)
    series["up"] = {"job", "instance"}  # Prometheus' own, per target
    return series


SERIES = defined()


def problems(expr: str) -> list[str]:
    """What is wrong with a PromQL expression's metric names and label matchers."""
    found = []
    bare = re.sub(r'"[^"]*"', '""', expr)  # label values are not names
    names = set(re.findall(r"\bmemctl_[a-z0-9_]+\b", bare))
    if not names and "up{" not in bare:
        found.append(f"{expr!r} names no memctl metric")
    found += [f"{expr!r}: {n} is not defined in app/metrics.py" for n in names
              if n not in SERIES]
    for name, matchers in SELECTOR.findall(expr):
        for label in MATCHER.findall(matchers):
            if name in SERIES and label not in SERIES[name]:
                found.append(f"{expr!r}: {name} has no label {label!r}")
    return found


def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    assert isinstance(data, dict) and isinstance(data.get("groups"), list) and data["groups"]
    found = []
    for group in data["groups"]:
        assert isinstance(group.get("name"), str) and group["name"]
        assert isinstance(group.get("rules"), list) and group["rules"], group["name"]
        found += group["rules"]
    return found


def test_the_metric_names_follow_prometheus_conventions() -> None:
    for name in SERIES:
        if name == "up":
            continue
        assert re.fullmatch(r"memctl_[a-z0-9_]+", name), name
        assert not name.endswith("_total_total"), name
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            assert not {"user_id", "memory_id", "path"} & set(value._labelnames), value._name
            if "duration" in value._name:
                assert value._name.endswith("_seconds"), value._name


def test_each_alert_rule_is_well_formed_and_names_defined_metrics() -> None:
    names = []
    for rule in rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert re.fullmatch(r"Memctl[A-Za-z0-9]+", rule["alert"]), rule
        names.append(rule["alert"])
        assert problems(rule["expr"]) == []
        if "for" in rule:
            assert DURATION.match(rule["for"]), rule
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule
    assert len(names) == len(set(names)), "an alert name is used twice"
    # What an operator must hear of (issue 17): lag, dead letters, a process down, findings
    # of a check, Neo4j out.
    exprs = " ".join(r["expr"] for r in rules())
    for needed in ("memctl_outbox_lag_seconds", "memctl_dead_letters_written_total",
                   "up{", "memctl_check_open_findings", 'memctl_breaker_open{breaker="graph"}'):
        assert needed in exprs, f"no alert on {needed}"


def test_every_dashboard_panel_queries_defined_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["panels"]
    datasource = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    ids, titles = set(), []
    for panel in dashboard["panels"]:
        assert panel["id"] not in ids, panel["title"]
        ids.add(panel["id"])
        titles.append(panel["title"].lower())
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"] and problems(target["expr"]) == [], panel["title"]
    for topic in ("throughput", "lag", "batch size", "errors", "dead letters"):
        assert any(topic in t for t in titles), f"no panel on {topic}"


def test_the_scrape_config_reaches_every_process_where_compose_makes_it_listen() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    targets = {job["job_name"]: job["static_configs"][0]["targets"]
               for job in config["scrape_configs"]}
    proj = compose.project(COMPOSE_FILE, example_env(), profiles=("observability",))
    env = proj.services["relay"].environment
    assert targets == {
        "memctl-web": [f"web:{env['API_PORT']}"],
        "memctl-relay": [f"relay:{env['METRICS_PORT_RELAY']}"],
        "memctl-worker": [f"worker:{env['METRICS_PORT_WORKER']}"],
        "memctl-scheduler": [f"scheduler:{env['METRICS_PORT_SCHEDULER']}"],
    }
    assert env["METRICS_HOST"] == "0.0.0.0"  # noqa: S104 (the compose network; never published)
    # The ProcessDown alert matches these job names.
    assert all(re.fullmatch(r"memctl-.*", job) for job in targets)


def test_the_observability_profile_adds_prometheus_and_grafana_only_when_asked() -> None:
    plain = compose.project(COMPOSE_FILE, example_env())
    assert not {"prometheus", "grafana"} & set(plain.services)
    proj = compose.project(COMPOSE_FILE, example_env(), profiles=("observability",))
    prometheus, grafana = proj.services["prometheus"], proj.services["grafana"]
    assert prometheus.ports == [], "Prometheus is not published"
    assert [(p.host_ip, p.target) for p in grafana.ports] == [("127.0.0.1", 3000)]
    mounts = [str(v).split(":")[0] for s in (prometheus, grafana) for v in s.raw["volumes"]]
    for mount in mounts:
        if mount.startswith("./"):
            assert (REPO / mount).is_dir(), mount
    assert prometheus.healthcheck is not None and grafana.healthcheck is not None


def promtool() -> str | None:
    return os.environ.get("PROMTOOL") or shutil.which("promtool")


@pytest.mark.skipif(promtool() is None, reason="promtool is not installed (the YAML checks "
                    "above still run)")
def test_promtool_accepts_the_rules_and_the_config_and_their_unit_tests_pass() -> None:
    tool = promtool()
    assert tool is not None
    done = subprocess.run([tool, "check", "rules", str(PROMETHEUS / "alerts.yml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    done = subprocess.run([tool, "check", "config", "--syntax-only",
                           str(PROMETHEUS / "prometheus.yml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    # The rules' unit tests: each alert fires (or stays quiet) when it should.
    done = subprocess.run([tool, "test", "rules", "alerts.test.yml"], cwd=PROMETHEUS,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
