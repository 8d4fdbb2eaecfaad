"""deploy/kubernetes checked offline: every manifest against the Kubernetes API's JSON schemas
(kubernetes-validate's bundled copies, strict: unknown fields fail), and the deployment rules:
the processes docker-compose.yml runs, with the same commands; probes on the health routes the
app serves; requests and limits above the RSS the bench measured; the migration Job before the
app; secrets from Secret objects only; the image's non-root user; disruption budgets; a grace
period that lets a worker finish its batch.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import kubernetes_validate
import pytest

from app.api.routes.health import router as health_router
from app.settings import Settings
from devtools import compose
from devtools.harness import REPO
from devtools.image import Dockerfile
from tests.deploy.conftest import COMPOSE_FILE, KUBERNETES, manifests, quantity, workloads

# The oldest Kubernetes the manifests claim (docs/operations.md) and the newest bundled.
VERSIONS = ("1.29", "1.37")
SETTINGS = {name.upper(): info for name, info in Settings.model_fields.items()}
BENCH = REPO / "bench" / "results" / "latest.md"


def documents() -> list[tuple[str, dict[str, Any]]]:
    return [(name, doc) for name, docs in manifests().items() for doc in docs]


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in documents() if doc["kind"] == kind]


def pod(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def compose_project() -> compose.Project:
    raw = compose.load_yaml(COMPOSE_FILE)
    needed = set().union(*(compose.required(s) for s in compose.strings(raw)))
    return compose.project(COMPOSE_FILE, {name: "example" for name in needed})


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid_for_the_kubernetes_api(version: str) -> None:
    checked = 0
    for name, doc in documents():
        if doc["kind"] == "Kustomization":
            continue  # kustomize's own file: checked below
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']}: "
                        f"{'.'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(f"{name}: {exc.message}")
        checked += 1
    assert checked >= 10
    # Strict: a misspelt field fails (the validator is not passing everything).
    broken = copy.deepcopy(of_kind("Deployment")[0])
    pod(broken)["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def test_the_kustomization_applies_every_manifest_but_the_examples() -> None:
    (kustomization,) = of_kind("Kustomization")
    files = {p.name for p in KUBERNETES.glob("*.yaml")}
    expected = files - {"kustomization.yaml"} - {f for f in files if f.endswith(".example.yaml")}
    assert set(kustomization["resources"]) == expected
    images = {c["image"] for doc in workloads()
              for c in pod(doc)["containers"] + pod(doc).get("initContainers", [])}
    assert images == {image["name"] for image in kustomization["images"]}


def test_kubernetes_runs_each_compose_app_service_with_its_command() -> None:
    proj = compose_project()
    one_shots = {name for s in proj.services.values()
                 for name, condition in s.depends_on.items()
                 if condition == "service_completed_successfully"}
    commands = {tuple(pod(d)["containers"][0]["command"]): d["kind"] for d in workloads()}
    for service in proj.app_services:
        assert service.command is not None
        kind = commands.get(tuple(service.command))
        assert kind == ("Job" if service.name in one_shots else "Deployment"), \
            f"{service.name}: {service.command} runs as {kind}"
    assert len(of_kind("Deployment")) == len(proj.app_services) - len(one_shots)


def test_probes_use_the_health_routes_the_app_serves() -> None:
    (configmap,) = of_kind("ConfigMap")
    routes = {getattr(route, "path", None) for route in health_router.routes}
    for deployment in of_kind("Deployment"):
        main = pod(deployment)["containers"][0]
        ready = main["readinessProbe"]
        if main.get("ports"):  # the HTTP server: probes on its own routes
            (port,) = main["ports"]
            assert port["containerPort"] == int(configmap["data"]["API_PORT"])
            live_path = main["livenessProbe"]["httpGet"]["path"]
            ready_path = ready["httpGet"]["path"]
            assert {live_path, ready_path} <= routes
            assert live_path.endswith("/live") and ready_path.endswith("/ready")
            assert main["livenessProbe"]["httpGet"]["port"] == port["name"]
        else:  # no HTTP server: the same readiness check, as a command
            assert ready["exec"]["command"] == ["memctl", "ready"]


def bench_rss() -> dict[str, float]:
    """Peak RSS in MiB from the bench: web, and the whole dramatiq tree per process count."""
    text = BENCH.read_text()
    web = re.search(r"^\| web \| (\d+) \|", text, re.MULTILINE)
    assert web is not None, f"{BENCH}: no web row in the memory table"
    found = {"web": float(web[1])}
    for count, tree in re.findall(r"^\| worker \((\d+) process(?:es)?\) \| \d+ \| [^|]*?"
                                  r"whole dramatiq tree (\d+) MiB", text, re.MULTILINE):
        found[f"worker-{count}"] = float(tree)
    return found


def test_requests_and_limits_cover_what_the_bench_measured() -> None:
    for doc in workloads():
        for container in pod(doc)["containers"] + pod(doc).get("initContainers", []):
            resources = container["resources"]
            for what in ("cpu", "memory"):
                request = quantity(resources["requests"][what])
                assert 0 < request <= quantity(resources["limits"][what]), \
                    (doc["metadata"]["name"], container["name"], what)
    measured = bench_rss()
    for doc in of_kind("Deployment"):
        main = pod(doc)["containers"][0]
        command = main["command"]
        if command == ["memctl", "web"]:
            peak = measured["web"]
        elif command[0] == "dramatiq":
            peak = measured[f"worker-{command[command.index('--processes') + 1]}"]
        else:
            continue  # relay, scheduler: not in the bench (tests/deploy/test_image.py)
        request = quantity(main["resources"]["requests"]["memory"]) / 2**20
        assert request >= peak * 1.15, f"{doc['metadata']['name']}: {request} MiB for a " \
                                       f"measured peak of {peak} MiB"


def test_the_app_starts_only_after_the_migration_job() -> None:
    (job,) = of_kind("Job")
    assert pod(job)["containers"][0]["command"] == ["memctl", "migrate"]
    assert job["spec"].get("parallelism", 1) == 1 and job["spec"].get("completions", 1) == 1
    for deployment in of_kind("Deployment"):
        (init,) = pod(deployment)["initContainers"]
        assert init["command"][:3] == ["memctl", "ready", "--wait"], deployment["metadata"]
        assert init["image"] == pod(deployment)["containers"][0]["image"]


# Settings that are URLs with a password in them when the server asks for one.
CARRY_CREDENTIALS = {"DATABASE_URL", "REDIS_URL"}


def secret_setting(name: str) -> bool:
    """A setting that is, or carries, a secret."""
    return "SecretStr" in str(SETTINGS[name].annotation) or name in CARRY_CREDENTIALS


def test_secrets_come_from_secret_objects_and_every_name_is_a_setting() -> None:
    (configmap,) = of_kind("ConfigMap")
    (secret,) = of_kind("Secret")
    config_keys, secret_keys = set(configmap["data"]), set(secret["stringData"])
    assert (config_keys | secret_keys) - set(SETTINGS) == set()
    assert {k for k in config_keys if secret_setting(k)} == set()
    # Everything the compose file gives its app services is given here too.
    compose_keys = set().union(*(s.environment for s in compose_project().app_services))
    assert compose_keys - (config_keys | secret_keys) == set()
    for doc in workloads():
        for container in pod(doc)["containers"] + pod(doc).get("initContainers", []):
            sources = container["envFrom"]
            assert {"secretRef": {"name": secret["metadata"]["name"]}} in sources
            assert {"configMapRef": {"name": configmap["metadata"]["name"]}} in sources
            assert "env" not in container  # no literal value beside them


def test_pods_run_as_the_images_non_root_user_on_a_read_only_root() -> None:
    user = Dockerfile.read(REPO / "Dockerfile").user
    assert user is not None
    uid, _, gid = user.partition(":")
    for doc in workloads():
        spec = pod(doc)
        context = spec["securityContext"]
        assert context["runAsNonRoot"] is True
        assert (context["runAsUser"], context["runAsGroup"]) == (int(uid), int(gid or uid))
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"] + spec.get("initContainers", []):
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
        mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
        assert "/tmp" in mounts  # the one writable place


def test_disruption_budgets_and_a_grace_period_that_lets_a_worker_finish() -> None:
    budgets = of_kind("PodDisruptionBudget")
    for deployment in of_kind("Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        if deployment["spec"]["replicas"] > 1:
            assert any(budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
                       for budget in budgets), deployment["metadata"]["name"]
    (configmap,) = of_kind("ConfigMap")
    lease = float(configmap["data"].get("LEASE_SECONDS", Settings.model_fields[
        "lease_seconds"].default))
    services = {tuple(s.command or []): s for s in compose_project().app_services}
    for deployment in of_kind("Deployment"):
        spec = pod(deployment)
        command = tuple(spec["containers"][0]["command"])
        grace = spec["terminationGracePeriodSeconds"]
        stop = services[command].stop_grace_period
        assert grace >= compose.duration_seconds(stop, 10), deployment["metadata"]["name"]
        if command[0] == "dramatiq":  # a batch runs at most the actor's time limit
            assert grace > 2 * lease
