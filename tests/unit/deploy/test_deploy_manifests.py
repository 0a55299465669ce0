"""deploy/k8s: every document is valid Kubernetes (offline, against the schemas that
kubernetes-validate bundles) and agrees with the code it deploys: probe paths are routes of the
app, commands and options are the CLI's, environment names are settings, selectors and targets
match, and the shutdown and liveness timings fit what the processes do.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as kubernetes_validate
from pydantic import ValidationError

from app.cli import GRACEFUL_SHUTDOWN_SECONDS
from app.settings import Settings
from tests.fixtures.codebase import app_paths, cli_options, setting_env_names
from workers.settings import CALLING_OUT_TIMEOUT_SECONDS

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "deploy" / "k8s"
# The oldest Kubernetes release the manifests are meant for, and the newest bundled schemas.
KUBERNETES_VERSIONS = ("1.31", "1.37")
IMAGE = "carebook"
IMAGE_UID = 10001  # the Dockerfile's `carebook` user
PREFIX = "CAREBOOK_"
TMP = "/tmp"  # noqa: S108 - the path the pods mount an emptyDir on, not a file opened here

Doc = dict[str, Any]


def _documents(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


MANIFESTS = [(path, doc) for path in _manifest_files() for doc in _documents(path)]


def _one(kind: str, name: str) -> Doc:
    found = [doc for _, doc in MANIFESTS if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} documents"
    return found[0]


def _pod_specs() -> Iterator[tuple[str, Doc]]:
    for _, doc in MANIFESTS:
        if doc["kind"] in {"Deployment", "Job"}:
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def _containers() -> Iterator[tuple[str, Doc]]:
    for name, pod in _pod_specs():
        for container in pod["containers"]:
            yield f"{name}/{container['name']}", container


def test_the_expected_objects_exist() -> None:
    kinds = sorted(f"{doc['kind']}/{doc['metadata']['name']}" for _, doc in MANIFESTS)
    assert kinds == [
        "ConfigMap/carebook-config",
        "Deployment/carebook-api",
        "Deployment/carebook-worker",
        "HorizontalPodAutoscaler/carebook-api",
        "Job/carebook-migrate",
        "PodDisruptionBudget/carebook-api",
        "PodDisruptionBudget/carebook-worker",
        "Secret/carebook-secrets",
        "Service/carebook-api",
    ]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(
    ("path", "doc"),
    MANIFESTS,
    ids=[f"{p.relative_to(K8S)}:{d['kind']}" for p, d in MANIFESTS],
)
def test_every_document_is_valid_kubernetes(path: Path, doc: Doc, version: str) -> None:
    # Strict: an unknown or misspelt field is an error, not silently dropped by the API server.
    kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_rejects_a_misspelt_field() -> None:
    """Guards the test above: validation really runs and really is strict."""
    broken = yaml.safe_load((K8S / "api-deployment.yaml").read_text())
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_no_document_names_a_namespace() -> None:
    assert [d["metadata"]["name"] for _, d in MANIFESTS if "namespace" in d["metadata"]] == []


def test_kustomizations_list_their_folders_manifests() -> None:
    app = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    expected = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    # The Secret is a template of placeholders: applying it would overwrite the real one.
    expected.remove("secret.template.yaml")
    assert sorted(app["resources"]) == expected
    migrate = yaml.safe_load((K8S / "migrate" / "kustomization.yaml").read_text())
    assert migrate["resources"] == ["job.yaml"]
    for kustomization in (app, migrate):
        assert kustomization["images"] == [{"name": IMAGE, "newTag": "0.1.0"}]


# --- the code behind the manifests -------------------------------------------------------------


def test_containers_run_real_cli_commands_with_real_options() -> None:
    commands = cli_options()
    runs: list[list[str]] = []
    for _, container in _containers():
        runs.append(container["command"])
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            if "exec" in container.get(probe, {}):
                runs.append(container[probe]["exec"]["command"])
    for run in runs:
        assert run[0] == "carebook", run
        options = commands[run[1]]
        assert [arg for arg in run[2:] if arg.startswith("--")] == [
            arg for arg in run[2:] if arg in options
        ], run
    assert {run[1] for run in runs} == {"serve", "worker", "migrate"}


def test_the_api_probes_and_scrape_path_are_routes_of_the_app() -> None:
    paths = app_paths()
    assert {"/v1/appointments", "/health/live"} <= paths  # the walk finds included routes
    api = _one("Deployment", "carebook-api")
    container = api["spec"]["template"]["spec"]["containers"][0]
    port_names = {port["name"]: port["containerPort"] for port in container["ports"]}
    probes = {
        probe: container[probe]["httpGet"]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert {name: get["path"] for name, get in probes.items()} == {
        "startupProbe": "/health/live",
        "livenessProbe": "/health/live",
        "readinessProbe": "/health/ready",
    }
    for get in probes.values():
        assert get["path"] in paths
        assert get["port"] in port_names
    annotations = api["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] in paths
    assert int(annotations["prometheus.io/port"]) == port_names["http"]
    serve = container["command"]
    assert int(serve[serve.index("--port") + 1]) == port_names["http"]


def _env_sources(container: Doc) -> set[tuple[str, str]]:
    return {
        (kind, ref[kind]["name"])
        for ref in container["envFrom"]
        for kind in ("configMapRef", "secretRef")
        if kind in ref
    }


def test_every_container_reads_the_configmap_and_the_secret_and_nothing_else() -> None:
    config = ("configMapRef", _one("ConfigMap", "carebook-config")["metadata"]["name"])
    secret = ("secretRef", _one("Secret", "carebook-secrets")["metadata"]["name"])
    for name, container in _containers():
        assert _env_sources(container) == {config, secret}, name
        assert all(item["name"].startswith(PREFIX) for item in container.get("env", [])), name


def test_configmap_and_secret_keys_are_real_settings() -> None:
    names = setting_env_names()
    config = _one("ConfigMap", "carebook-config")["data"]
    secret = _one("Secret", "carebook-secrets")["stringData"]
    # The commented-out examples must be real names too, for the day they are uncommented.
    commented = re.findall(
        r"^\s*#\s*(CAREBOOK_[A-Z0-9_]+):", (K8S / "configmap.yaml").read_text(), re.M
    )
    unknown = sorted((set(config) | set(secret) | set(commented)) - names)
    assert unknown == []
    assert set(config).isdisjoint(secret)
    assert all(isinstance(value, str) for value in {**config, **secret}.values())


def test_the_secret_template_holds_placeholders_only() -> None:
    secret = _one("Secret", "carebook-secrets")
    assert "data" not in secret  # base64 would hide what is in it
    assert all("REPLACE-ME" in value for value in secret["stringData"].values())
    expected = {
        "CAREBOOK_JWT_SECRET",
        "CAREBOOK_DATABASE_URL",
        "CAREBOOK_DATABASE_REPLICA_URL",
        "CAREBOOK_REDIS_URL",
        "CAREBOOK_S3_ACCESS_KEY_ID",
        "CAREBOOK_S3_SECRET_ACCESS_KEY",
        "CAREBOOK_VIDEOSDK_TOKEN",
        "CAREBOOK_FCM_ACCESS_TOKEN",
    }
    assert set(secret["stringData"]) == expected


def _environment_from_manifests(monkeypatch: pytest.MonkeyPatch, **overrides: str) -> Settings:
    for name in [n for n in os.environ if n.startswith(PREFIX)]:
        monkeypatch.delenv(name)
    values = {
        **_one("ConfigMap", "carebook-config")["data"],
        **_one("Secret", "carebook-secrets")["stringData"],
        **overrides,
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_the_template_as_is_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="CAREBOOK_JWT_SECRET must be at least 32"):
        _environment_from_manifests(monkeypatch)


def test_the_configmap_and_a_filled_secret_make_valid_production_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _environment_from_manifests(monkeypatch, CAREBOOK_JWT_SECRET="s" * 48)
    assert settings.environment == "production"
    assert not settings.embedded
    assert settings.redis_url is not None
    assert settings.database_replica_url is not None
    assert settings.storage_backend == "s3"
    assert settings.s3_bucket
    assert settings.run_worker_in_process is False
    # Disabled until configured: an empty base URL would count as configured.
    assert settings.videosdk_base_url is None
    assert settings.fcm_base_url is None


# --- wiring between the objects ---------------------------------------------------------------


def _pod_labels(deployment: Doc) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_service_selects_the_api_pods_on_their_http_port() -> None:
    service = _one("Service", "carebook-api")
    api = _one("Deployment", "carebook-api")
    worker = _one("Deployment", "carebook-worker")
    assert _selects(service["spec"]["selector"], _pod_labels(api))
    assert not _selects(service["spec"]["selector"], _pod_labels(worker))
    ports = api["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [p["name"] for p in ports]


def test_deployment_selectors_match_their_own_pods_only() -> None:
    api = _one("Deployment", "carebook-api")
    worker = _one("Deployment", "carebook-worker")
    for own, other in ((api, worker), (worker, api)):
        selector = own["spec"]["selector"]["matchLabels"]
        assert _selects(selector, _pod_labels(own))
        assert not _selects(selector, _pod_labels(other))


def test_hpa_scales_the_api_deployment_on_cpu_and_owns_its_replica_count() -> None:
    hpa = _one("HorizontalPodAutoscaler", "carebook-api")
    api = _one("Deployment", "carebook-api")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": api["apiVersion"],
        "kind": "Deployment",
        "name": api["metadata"]["name"],
    }
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert hpa["spec"]["minReplicas"] >= 2
    # A `replicas` in the Deployment would reset the HPA's count on every apply.
    assert "replicas" not in api["spec"]
    # CPU utilisation is relative to the request: without one the HPA cannot compute it.
    assert api["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]


def test_each_pdb_covers_its_deployment_and_leaves_it_running() -> None:
    for name in ("carebook-api", "carebook-worker"):
        pdb = _one("PodDisruptionBudget", name)
        deployment = _one("Deployment", name)
        assert _selects(pdb["spec"]["selector"]["matchLabels"], _pod_labels(deployment))
        assert pdb["spec"]["maxUnavailable"] == 1
    assert _one("Deployment", "carebook-worker")["spec"]["replicas"] >= 2
    assert _one("HorizontalPodAutoscaler", "carebook-api")["spec"]["minReplicas"] >= 2


def test_topology_spread_selects_the_pods_it_spreads() -> None:
    for name in ("carebook-api", "carebook-worker"):
        deployment = _one("Deployment", name)
        spreads = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert {s["topologyKey"] for s in spreads} == {
            "topology.kubernetes.io/zone",
            "kubernetes.io/hostname",
        }
        for spread in spreads:
            assert _selects(spread["labelSelector"]["matchLabels"], _pod_labels(deployment))


# --- timings ----------------------------------------------------------------------------------


def test_api_shutdown_drains_before_sigterm_and_finishes_before_sigkill() -> None:
    pod = _one("Deployment", "carebook-api")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = int(pre_stop[1])
    assert drain >= 5  # endpoints removal reaches load balancers in a few seconds
    lifespan_shutdown = 5
    assert (
        pod["terminationGracePeriodSeconds"] > drain + GRACEFUL_SHUTDOWN_SECONDS + lifespan_shutdown
    )


def test_worker_liveness_tolerates_a_busy_worker_and_probes_fit_their_timeouts() -> None:
    container = _one("Deployment", "carebook-worker")["spec"]["template"]["spec"]["containers"][0]
    liveness = container["livenessProbe"]
    interval = int(
        _one("ConfigMap", "carebook-config")["data"][
            "CAREBOOK_WORKER_HEALTH_CHECK_INTERVAL_SECONDS"
        ]
    )
    patience = liveness["periodSeconds"] * liveness["failureThreshold"]
    # All job slots busy with calls out: no heartbeat until one frees (see the manifest).
    assert patience > CALLING_OUT_TIMEOUT_SECONDS + interval + 1
    # Each check lands inside one key lifetime at most one period late.
    assert liveness["periodSeconds"] > interval
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60
    # The check itself: one connection attempt of 2 s (workers/health.py), inside the timeout.
    assert liveness["timeoutSeconds"] >= 5


def test_the_migration_job_runs_once_and_gives_up_cleanly() -> None:
    job = _one("Job", "carebook-migrate")
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["carebook", "migrate"]
    assert job["spec"]["backoffLimit"] <= 3
    assert job["spec"]["activeDeadlineSeconds"] > 0
    assert job["spec"]["ttlSecondsAfterFinished"] > 0


# --- hardening --------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "pod"), list(_pod_specs()), ids=[n for n, _ in _pod_specs()])
def test_pods_run_as_the_image_user_without_privileges(name: str, pod: Doc) -> None:
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == IMAGE_UID
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    for container in pod["containers"]:
        assert container["image"].split(":")[0] == IMAGE
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
        # The root file system is read-only: /tmp is the one writable place, in memory or disk
        # of the node, bounded.
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        tmp = volumes[mounts[TMP]]
        assert tmp["emptyDir"]["sizeLimit"]
        resources = container["resources"]
        assert set(resources["requests"]) == {"cpu", "memory"}
        assert set(resources["limits"]) == {"cpu", "memory"}
