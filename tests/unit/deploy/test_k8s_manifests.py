"""Rules of the rendered Kubernetes manifests (README, "Deployment": K8S01-K8S16).

Every overlay is rendered with `kubectl kustomize` (once per session, conftest.py) and the
objects it produces are checked: what the cluster would receive after patches, generators and
the namespace transformer, not the files as written."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
from pydantic_settings import BaseSettings

from regio_billing.settings import BillingSettings
from regio_dashboard.settings import DashboardSettings
from regio_gateway.settings import GatewaySettings
from regio_worker.settings import WorkerSettings
from tests.unit.deploy.conftest import catalogue_regions
from tests.unit.deploy.rendering import (
    BASE,
    COMPONENTS,
    K8S,
    OVERLAYS,
    Container,
    Object,
    Rendered,
    pod_metadata,
    pod_spec,
    render_with_components,
)

REGIONS = catalogue_regions()
CATALOGUE = tomllib.loads((BASE / "catalogue.production.toml").read_text())
KUBERNETES_VERSION = "1.32"  # the oldest API the manifests must pass (Debian's kubectl 1.32)
# Variables whose value is a credential (or a URL carrying one).
SENSITIVE = re.compile(
    r"(_TOKENS?|PASSWORD|SECRET|DATABASE_URL|NATS_URL|_KEY|_PEPPER|CREDENTIALS?)$", re.I
)
CREDENTIALS_IN_URL = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
CRD_KINDS = {"Cluster", "PrometheusRule"}

# The Regio service of each long-running workload, and the settings class that service reads.
SETTINGS: dict[str, type[BaseSettings]] = {
    "gateway": GatewaySettings,
    "billing": BillingSettings,
    "dashboard-api": DashboardSettings,
    "worker": WorkerSettings,
}
OPS_PORT_SETTING = {
    "gateway": "REGIO_GATEWAY_METRICS_PORT",
    "billing": "REGIO_BILLING_METRICS_PORT",
    "dashboard-api": "REGIO_DASHBOARD_METRICS_PORT",
    "worker": "REGIO_WORKER_METRICS_PORT",
}
# Settings deliberately left unset in production, with the reason. A setting a service reads must
# be set in the manifests or listed here, so a new one cannot be forgotten silently.
DEFAULT_IS_RIGHT_IN_PRODUCTION: dict[str, dict[str, str]] = {
    "gateway": {
        "REGIO_MEDIA_FETCH_CA_FILE": "image URLs are public https servers: the system's CAs",
    },
    "billing": {},
    "dashboard-api": {
        "REGIO_ADMIN_LABEL": "the actor name `admin` in the audit log is what operators expect",
    },
    "worker": {
        "REGIO_WORKER_N_CTX": "the route's context_length from the catalogue is the window",
        "REGIO_WORKER_SPLIT_MODE": "one GPU per pod: nothing to split",
        "REGIO_WORKER_MAIN_GPU": "one GPU per pod: the one the device plugin gives, index 0",
        "REGIO_WORKER_TENSOR_SPLIT": "one GPU per pod",
        "REGIO_READER_CHECK_INTERVAL_SECONDS": "1 s: a gone gateway costs at most ~1 s of tokens",
        "REGIO_USAGE_PUBLISH_LINGER_SECONDS": "20 ms: fewer JetStream messages, no one waits",
        "REGIO_READER_CHECK_TIMEOUT_SECONDS": "a slow gateway's answer proves nothing anyway",
        "REGIO_UPSTREAM_BASE_URL": "openai_proxy engine only; these workers run llama_cpp",
        "REGIO_UPSTREAM_API_KEY": "openai_proxy engine only",
        "REGIO_UPSTREAM_MODEL": "openai_proxy engine only",
        "REGIO_UPSTREAM_MAX_CONCURRENCY": "openai_proxy engine only",
        "REGIO_UPSTREAM_TIMEOUT_SECONDS": "openai_proxy engine only",
        "REGIO_UPSTREAM_ANSWER_TIMEOUT_SECONDS": "openai_proxy engine only",
    },
}
NATS_USERS = {"gateway": "gateway", "billing": "billing", "dashboard-api": "dashboard"}
# Credentials other than NATS's and PostgreSQL's: service → variable → (Secret, key).
SERVICE_SECRETS: dict[str, dict[str, tuple[str, str]]] = {
    "gateway": {
        "REGIO_API_KEY_PEPPER": ("regio-api-keys", "pepper"),
        "REGIO_BILLING_TOKEN": ("regio-billing-auth", "gateway-token"),
    },
    "dashboard-api": {
        "REGIO_ADMIN_TOKEN": ("regio-admin", "token"),
        "REGIO_API_KEY_PEPPER": ("regio-api-keys", "pepper"),
        "REGIO_BILLING_TOKEN": ("regio-billing-auth", "dashboard-token"),
    },
    "billing": {"REGIO_BILLING_CLIENT_TOKENS": ("regio-billing-auth", "client-tokens")},
    "worker": {},
}


def service_of(workload: Object) -> str | None:
    """The Regio service a Deployment runs (None for NATS, PostgreSQL, the Job)."""
    name = str(workload["metadata"]["name"])
    if workload["kind"] != "Deployment":
        return None
    return "worker" if name.startswith("worker-") else name


def regio_containers(rendered: Rendered) -> Iterator[tuple[str, Object, Container]]:
    """(service, workload, its one container) of every Regio service's Deployment."""
    for workload in rendered.long_running():
        service = service_of(workload)
        if service is not None:
            (container,) = rendered.containers([workload])
            yield service, workload, container


def settings_env_names(settings_class: type[BaseSettings]) -> set[str]:
    prefix = str(settings_class.model_config.get("env_prefix", ""))
    return {f"{prefix}{name}".upper() for name in settings_class.model_fields}


def routes_of_region(region: str) -> list[str]:
    return sorted(n for n, r in CATALOGUE["routes"].items() if region in r["regions"])


def regions() -> list[str]:
    return sorted(REGIONS)


# --- K8S01: the tree renders ------------------------------------------------------------------


def test_k8s01_an_overlay_per_catalogue_region() -> None:
    assert sorted(p.name for p in OVERLAYS.iterdir()) == sorted(REGIONS)


def test_k8s01_every_base_manifest_is_a_resource() -> None:
    kustomization = (BASE / "kustomization.yaml").read_text()
    listed = set(re.findall(r"^  - ([\w.-]+\.yaml)$", kustomization, re.M))
    assert {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"} == listed


@pytest.mark.parametrize("region", regions())
def test_k8s01_overlay_renders_the_whole_region(overlays: dict[str, Rendered], region: str) -> None:
    rendered = overlays[region]
    for kind, name in [
        ("Namespace", f"regio-{region}"),
        ("Deployment", "gateway"),
        ("Deployment", "billing"),
        ("Deployment", "dashboard-api"),
        ("StatefulSet", "nats"),
        ("Service", "nats"),
        ("Service", "nats-headless"),
        ("Cluster", "regio-postgres"),
        ("Job", "regio-migrate"),
        ("Ingress", "gateway"),
        ("Ingress", "dashboard-api"),
        ("HorizontalPodAutoscaler", "gateway"),
    ]:
        assert rendered.has(kind, name), f"{kind}/{name} missing in {region}"
    for route in routes_of_region(region):
        assert rendered.has("Deployment", f"worker-{route}"), f"no worker for route {route}"


# --- K8S02: schema-valid ----------------------------------------------------------------------


@pytest.mark.parametrize("region", regions())
def test_k8s02_built_in_objects_are_schema_valid(
    overlays: dict[str, Rendered], region: str
) -> None:
    errors = []
    for obj in overlays[region].objects:
        if obj["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = "/".join(str(p) for p in error.path)
            errors.append(f"{obj['kind']}/{obj['metadata']['name']} {path}: {error.message}")
    assert errors == []


def test_k8s02_the_validator_refuses_a_broken_object() -> None:
    broken = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {"replicas": "two", "selector": {}, "template": {}},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("region", regions())
def test_k8s02_cloudnativepg_cluster_has_what_the_services_need(
    overlays: dict[str, Rendered], region: str
) -> None:
    cluster = overlays[region].get("Cluster", "regio-postgres")
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1"
    spec = cluster["spec"]
    assert spec["instances"] == 3
    assert re.fullmatch(r"\d+Gi", spec["storage"]["size"])
    assert spec["bootstrap"]["initdb"] == {"database": "regio", "owner": "regio"}
    image = spec["imageName"]
    assert re.fullmatch(r"ghcr\.io/cloudnative-pg/postgresql:\d+\.\d+", image), image
    assert spec["affinity"]["enablePodAntiAffinity"] is True
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(spec["resources"][kind])


# --- K8S03: probes on the ops listener --------------------------------------------------------


@pytest.mark.parametrize("region", regions())
def test_k8s03_every_long_running_container_has_probes(
    overlays: dict[str, Rendered], region: str
) -> None:
    rendered = overlays[region]
    for container in rendered.containers(rendered.long_running()):
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert probe in container.spec, f"{container.label} has no {probe}"


@pytest.mark.parametrize("region", regions())
def test_k8s03_regio_services_are_probed_on_their_ops_listener(
    overlays: dict[str, Rendered], region: str
) -> None:
    rendered = overlays[region]
    for service, workload, container in regio_containers(rendered):
        ops = container.port("ops")
        assert ops is not None, f"{container.label} exposes no port named ops"
        spec = container.spec
        # Liveness only needs the event loop: a NATS or database outage must not restart every
        # pod at once. Readiness checks the dependencies.
        assert spec["livenessProbe"]["httpGet"] == {"path": "/health", "port": "ops"}
        assert spec["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "ops"}
        assert spec["startupProbe"]["httpGet"] == {"path": "/health", "port": "ops"}
        # The listener really is on that port: the service's own setting says so.
        env = rendered.environment(container)
        assert env[OPS_PORT_SETTING[service]]["value"] == str(ops)
        annotations = pod_metadata(workload).get("annotations", {})
        assert annotations.get("prometheus.io/scrape") == "true"
        assert annotations.get("prometheus.io/port") == str(ops)
        assert annotations.get("prometheus.io/path") == "/metrics"
        # never the public port
        assert all(p["containerPort"] != ops for p in spec["ports"] if p["name"] != "ops")


@pytest.mark.parametrize("region", regions())
def test_k8s03_nats_is_probed_on_its_monitoring_port(
    overlays: dict[str, Rendered], region: str
) -> None:
    (container,) = overlays[region].containers([overlays[region].get("StatefulSet", "nats")])
    assert container.port("monitor") == 8222
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container.spec[probe]["httpGet"]
        assert get["port"] == "monitor"
        assert get["path"].startswith("/healthz")


# --- K8S04: resources -------------------------------------------------------------------------


def quantity(value: str | int) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    text = str(value)
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text.removesuffix(suffix)) * factor
    return float(text)


@pytest.mark.parametrize("region", regions())
def test_k8s04_every_container_has_requests_and_limits(
    overlays: dict[str, Rendered], region: str
) -> None:
    for container in overlays[region].containers():
        resources = container.spec.get("resources", {})
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources.get(kind, {})), f"{container.label} {kind}"
        for resource in ("cpu", "memory"):
            request = quantity(resources["requests"][resource])
            assert request <= quantity(resources["limits"][resource]), container.label


# --- K8S05: locked-down pods ------------------------------------------------------------------


@pytest.mark.parametrize("region", regions())
def test_k8s05_pods_and_containers_are_locked_down(
    overlays: dict[str, Rendered], region: str
) -> None:
    rendered = overlays[region]
    for workload in rendered.workloads():
        pod = pod_spec(workload)
        name = workload["metadata"]["name"]
        assert pod.get("automountServiceAccountToken") is False, name
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True, name
        assert security["runAsUser"] > 0, name
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert not pod.get("hostNetwork") and not pod.get("hostPID"), name
    for container in rendered.containers():
        security = container.spec["securityContext"]
        assert security["allowPrivilegeEscalation"] is False, container.label
        assert security["readOnlyRootFilesystem"] is True, container.label
        assert security["capabilities"] == {"drop": ["ALL"]}, container.label
        assert not security.get("privileged"), container.label


@pytest.mark.parametrize("region", regions())
def test_k8s05_namespace_enforces_the_restricted_pod_security_standard(
    overlays: dict[str, Rendered], region: str
) -> None:
    labels = overlays[region].get("Namespace", f"regio-{region}")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


# --- K8S06: images ----------------------------------------------------------------------------


@pytest.mark.parametrize("region", regions())
def test_k8s06_images_are_pinned_and_built_here_or_official(
    overlays: dict[str, Rendered], region: str
) -> None:
    dockerfiles = {p.name.removesuffix(".Dockerfile") for p in K8S.parent.glob("docker/*")}
    for container in overlays[region].containers():
        image = container.spec["image"]
        repository, _, tag = image.partition(":")
        assert tag and tag != "latest" and "@" not in repository, f"{container.label}: {image}"
        if repository.startswith("regio/"):
            assert repository.removeprefix("regio/") in dockerfiles, image
        else:
            # NATS: the official image, JetStream sync_interval needs 2.10 or newer.
            assert repository == "nats", image
            major, minor = (int(x) for x in tag.split("-")[0].split(".")[:2])
            assert (major, minor) >= (2, 10), image
    assert ":latest" not in "\n".join(p.read_text() for p in K8S.rglob("*.yaml"))


# --- K8S07: secrets referenced, never stored --------------------------------------------------


@pytest.mark.parametrize("region", regions())
def test_k8s07_no_secret_values_in_the_rendered_objects(
    overlays: dict[str, Rendered], region: str
) -> None:
    rendered = overlays[region]
    assert rendered.of_kind("Secret") == []
    for config_map in rendered.of_kind("ConfigMap"):
        for key, value in config_map.get("data", {}).items():
            assert not SENSITIVE.search(key), f"{key} in ConfigMap {config_map['metadata']}"
            assert not CREDENTIALS_IN_URL.search(value), f"credentials in ConfigMap {key}"
            assert not re.search(r"\b(rg|rgm)-[A-Za-z0-9_-]{16,}", value), "a Regio key"
    for container in rendered.containers():
        for entry in container.spec.get("env", []):
            if SENSITIVE.search(entry["name"]):
                assert "secretKeyRef" in entry.get("valueFrom", {}), (
                    f"{container.label}: {entry['name']} is not from a Secret"
                )


def test_k8s07_every_secret_setting_is_recognised_as_sensitive() -> None:
    for settings_class in SETTINGS.values():
        prefix = str(settings_class.model_config.get("env_prefix", ""))
        for name, field in settings_class.model_fields.items():
            if "SecretStr" in str(field.annotation):
                assert SENSITIVE.search(f"{prefix}{name}".upper()), name


@pytest.mark.parametrize("region", regions())
def test_k8s07_credentials_come_from_the_documented_secrets(
    overlays: dict[str, Rendered], region: str
) -> None:
    rendered = overlays[region]
    for container in rendered.containers():
        service = service_of(container.workload)
        env = {e["name"]: e for e in container.spec.get("env", [])}
        if service is not None:
            user = NATS_USERS.get(service, service)
            assert env["REGIO_NATS_URL"]["valueFrom"]["secretKeyRef"] == {
                "name": "regio-nats",
                "key": f"{user}-url",
            }, container.label
        if "REGIO_DATABASE_URL" in env:
            # CloudNativePG writes `<cluster>-app` with the URL of the read-write service.
            assert env["REGIO_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
                "name": "regio-postgres-app",
                "key": "uri",
            }, container.label
    for service, _, container in regio_containers(rendered):
        expected = SERVICE_SECRETS[service]
        for name, (secret, key) in expected.items():
            assert container.env_value(name) == {
                "name": name,
                "valueFrom": {"secretKeyRef": {"name": secret, "key": key}},
            }, container.label
        # and no other service holds them
        others = {n for s, names in SERVICE_SECRETS.items() if s != service for n in names}
        for name in others - set(expected):
            assert container.env_value(name) is None, f"{container.label}: {name}"
    (nats,) = rendered.containers([rendered.get("StatefulSet", "nats")])
    for user in ("gateway", "worker", "billing", "dashboard"):
        variable = nats.env_value(f"NATS_{user.upper()}_PASSWORD")
        assert variable is not None
        assert variable["valueFrom"]["secretKeyRef"] == {
            "name": "regio-nats",
            "key": f"{user}-password",
        }


# --- K8S08: region consistency ----------------------------------------------------------------


@pytest.mark.parametrize("region", regions())
def test_k8s08_every_object_carries_its_region(overlays: dict[str, Rendered], region: str) -> None:
    for obj in overlays[region].objects:
        label = f"{obj['kind']}/{obj['metadata']['name']}"
        assert obj["metadata"]["labels"]["regio/region"] == region, label
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == f"regio-{region}", label
    for workload in overlays[region].workloads():
        # Pods carry it too: metrics and logs can be told apart by region.
        assert pod_metadata(workload)["labels"]["regio/region"] == region


@pytest.mark.parametrize("region", regions())
def test_k8s08_gateway_answers_for_the_region_and_its_hosts_name_it(
    overlays: dict[str, Rendered], region: str
) -> None:
    rendered = overlays[region]
    (gateway,) = rendered.containers([rendered.get("Deployment", "gateway")])
    assert rendered.environment(gateway)["REGIO_DEFAULT_REGION"]["value"] == region
    ingress = rendered.get("Ingress", "gateway")
    hosts = [rule["host"] for rule in ingress["spec"]["rules"]]
    hosts += [host for tls in ingress["spec"]["tls"] for host in tls["hosts"]]
    assert hosts
    for host in hosts:
        # the gateway reads the region from the first label of the Host
        assert host.split(".")[0] == region, host


@pytest.mark.parametrize("region", regions())
def test_k8s08_workers_serve_each_route_in_a_country_of_the_region(
    overlays: dict[str, Rendered], region: str
) -> None:
    rendered = overlays[region]
    workers = [w for w in rendered.of_kind("Deployment") if service_of(w) == "worker"]
    served = []
    for workload in workers:
        (container,) = rendered.containers([workload])
        env = rendered.environment(container)
        country = env["REGIO_WORKER_COUNTRY"]["value"]
        assert country in REGIONS[region], f"{container.label}: {country} not in {region}"
        assert pod_spec(workload)["nodeSelector"]["regio/country"] == country
        route = env["REGIO_WORKER_ROUTE"]["value"]
        assert workload["metadata"]["name"] == f"worker-{route}"
        assert pod_metadata(workload)["labels"]["route"] == route
        served.append(route)
    assert sorted(served) == routes_of_region(region)


# --- K8S09: workers on GPU nodes --------------------------------------------------------------


@pytest.mark.parametrize("region", regions())
def test_k8s09_workers_run_on_gpu_nodes_with_models_read_only(
    overlays: dict[str, Rendered], region: str
) -> None:
    rendered = overlays[region]
    workers = [w for w in rendered.of_kind("Deployment") if service_of(w) == "worker"]
    assert workers
    for workload in workers:
        pod = pod_spec(workload)
        (container,) = rendered.containers([workload])
        assert container.spec["image"].startswith("regio/worker-cuda:")
        assert container.spec["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert pod["nodeSelector"]["nvidia.com/gpu.present"] == "true"
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
            "tolerations"
        ]
        env = rendered.environment(container)
        assert env["REGIO_WORKER_N_GPU_LAYERS"]["value"] == "-1"
        assert env["REGIO_WORKER_ENGINE"]["value"] == "llama_cpp"
        assert env["REGIO_MODELS_DIR"]["value"] == "/models"
        mount = next(m for m in container.spec["volumeMounts"] if m["name"] == "models")
        assert mount == {"name": "models", "mountPath": "/models", "readOnly": True}
        # the GGUF paths of the catalogue are below the mount
        route = env["REGIO_WORKER_ROUTE"]["value"]
        assert CATALOGUE["routes"][route]["source"]["gguf_path"].startswith("/models/")
        # a rollout never waits for a second GPU
        assert workload["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0


# --- K8S10: settings --------------------------------------------------------------------------


@pytest.mark.parametrize("region", regions())
def test_k8s10_every_setting_is_set_or_known_to_default_right(
    overlays: dict[str, Rendered], region: str
) -> None:
    rendered = overlays[region]
    for service, _, container in regio_containers(rendered):
        reads = settings_env_names(SETTINGS[service])
        provided = {n for n in rendered.environment(container) if n.startswith("REGIO_")}
        defaulted = set(DEFAULT_IS_RIGHT_IN_PRODUCTION[service])
        assert sorted(reads - provided - defaulted) == [], f"{container.label}: not set"
        assert sorted(provided - reads) == [], f"{container.label}: set but never read"
        assert sorted(defaulted & provided) == [], f"{container.label}: listed as default"
        assert sorted(defaulted - reads) == [], f"{service}: listed but not a setting"


@pytest.mark.parametrize("region", regions())
def test_k8s10_listeners_bind_every_interface_on_the_ports_they_declare(
    overlays: dict[str, Rendered], region: str
) -> None:
    rendered = overlays[region]
    expected = {
        "gateway": ("REGIO_GATEWAY_HOST", "REGIO_GATEWAY_PORT"),
        "dashboard-api": ("REGIO_DASHBOARD_HOST", "REGIO_DASHBOARD_PORT"),
    }
    for name, (host, port) in expected.items():
        (container,) = rendered.containers([rendered.get("Deployment", name)])
        env = rendered.environment(container)
        assert env[host]["value"] == "0.0.0.0"
        assert int(env[port]["value"]) == container.port("http")
    (billing,) = rendered.containers([rendered.get("Deployment", "billing")])
    address = rendered.environment(billing)["REGIO_BILLING_LISTEN_ADDRESS"]["value"]
    assert address == f"0.0.0.0:{billing.port('grpc')}"
    service_port = rendered.get("Service", "billing")["spec"]["ports"][0]["port"]
    for name in ("gateway", "dashboard-api"):
        (container,) = rendered.containers([rendered.get("Deployment", name)])
        assert rendered.environment(container)["REGIO_BILLING_ADDRESS"]["value"] == (
            f"billing:{service_port}"
        )


# --- K8S11: the Ingress matches the gateway ---------------------------------------------------


@pytest.mark.parametrize("region", regions())
def test_k8s11_ingress_streams_and_outwaits_the_gateway(
    overlays: dict[str, Rendered], region: str
) -> None:
    rendered = overlays[region]
    ingress = rendered.get("Ingress", "gateway")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off", "SSE"
    assert ingress["spec"]["tls"][0]["secretName"]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "gateway", "port": {"name": "http"}}
    (gateway,) = rendered.containers([rendered.get("Deployment", "gateway")])
    env = rendered.environment(gateway)
    # the gateway gives up (and answers the client) before the proxy cuts the stream
    read_timeout = float(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"])
    assert float(env["REGIO_FIRST_TOKEN_TIMEOUT_SECONDS"]["value"]) < read_timeout
    assert float(env["REGIO_INTER_CHUNK_TIMEOUT_SECONDS"]["value"]) < read_timeout
    body = annotations["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert int(env["REGIO_MAX_BODY_BYTES"]["value"]) == quantity(body.replace("m", "Mi"))
    # Behind exactly one proxy (the Ingress, which appends the peer to X-Forwarded-For): with 0
    # every client would be the Ingress, and one key guesser would throttle them all; with 2 a
    # client could name any address it likes.
    assert env["REGIO_TRUSTED_PROXY_HOPS"]["value"] == "1"
    # An idle upstream connection is closed by the Ingress (ingress-nginx: after 60 s) before
    # the gateway closes it, so the Ingress never sends a request on a closing connection.
    assert float(env["REGIO_KEEPALIVE_TIMEOUT_SECONDS"]["value"]) > 60


# --- K8S12: high availability -----------------------------------------------------------------


@pytest.mark.parametrize("region", regions())
def test_k8s12_gateway_scales_and_keeps_a_disruption_budget(
    overlays: dict[str, Rendered], region: str
) -> None:
    rendered = overlays[region]
    hpa = rendered.get("HorizontalPodAutoscaler", "gateway")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "gateway",
    }
    assert hpa["minReplicas"] >= 2, "one gateway is no HA"
    for name in ("gateway", "billing", "dashboard-api", "nats"):
        pdb = rendered.get("PodDisruptionBudget", name)["spec"]
        workload_kind = "StatefulSet" if name == "nats" else "Deployment"
        selector = rendered.get(workload_kind, name)["spec"]["selector"]
        assert pdb["selector"] == selector, name


@pytest.mark.parametrize("region", regions())
def test_k8s12_nats_is_a_three_node_jetstream_cluster(
    overlays: dict[str, Rendered], region: str
) -> None:
    rendered = overlays[region]
    nats = rendered.get("StatefulSet", "nats")
    spec = nats["spec"]
    assert spec["replicas"] == 3
    assert spec["serviceName"] == "nats-headless"
    headless = rendered.get("Service", "nats-headless")["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    assert rendered.get("Service", "nats")["spec"]["ports"] == [
        {"name": "client", "port": 4222, "targetPort": "client"}
    ]
    anti = pod_spec(nats)["affinity"]["podAntiAffinity"]
    (term,) = anti["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert rendered.get("PodDisruptionBudget", "nats")["spec"]["maxUnavailable"] == 1
    (claim,) = spec["volumeClaimTemplates"]
    (container,) = rendered.containers([nats])
    mounts = {m["name"]: m["mountPath"] for m in container.spec["volumeMounts"]}
    config = nats_config(rendered)
    # JetStream stores on the claimed volume, synced on every write
    assert re.search(r"^\s*sync_interval: always$", config, re.M)
    store = re.search(r"^\s*store_dir: (\S+)$", config, re.M)
    assert store and store.group(1).startswith(mounts[claim["metadata"]["name"]])
    assert re.search(r"^\s*max_file_store: \d+G$", config, re.M)
    assert f"http_port: {container.port('monitor')}" in config
    # a route to each peer by its stable name
    routes = re.findall(r"nats://(nats-\d)\.nats-headless:(\d+)", config)
    assert sorted(routes) == [(f"nats-{i}", str(container.port("cluster"))) for i in range(3)]
    assert "server_name: $POD_NAME" in config
    assert container.env_value("POD_NAME") == {
        "name": "POD_NAME",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
    }
    mounted_config = next(v for v in pod_spec(nats)["volumes"] if v["name"] == "config")
    assert mounted_config["configMap"]["name"].startswith("nats-config-")
    assert container.spec["args"] == ["--config", f"{mounts['config']}/nats.conf"]


def nats_config(rendered: Rendered) -> str:
    return rendered.config_map_data("nats-config")["nats.conf"]


def nats_user_permissions(config: str) -> dict[str, tuple[list[str], list[str]]]:
    """user → (publish allow, subscribe allow), read from the users of nats.conf."""
    users: dict[str, tuple[list[str], list[str]]] = {}
    for block in re.split(r"^\s*user: ", config, flags=re.M)[1:]:
        name = block.split()[0]
        publish = re.search(r"publish: \{\s*allow: \[(.*?)\]", block, re.S)
        subscribe = re.search(r"subscribe: \{\s*allow: \[(.*?)\]", block, re.S)
        assert publish and subscribe, f"user {name} has no publish/subscribe allow list"
        users[name] = (
            re.findall(r'"([^"]+)"', publish.group(1)),
            re.findall(r'"([^"]+)"', subscribe.group(1)),
        )
    return users


@pytest.mark.parametrize("region", regions())
def test_k8s12_nats_users_may_do_only_their_service_s_job(
    overlays: dict[str, Rendered], region: str
) -> None:
    rendered = overlays[region]
    config = nats_config(rendered)
    users = nats_user_permissions(config)
    assert sorted(users) == ["billing", "dashboard", "gateway", "worker"]
    publishers = {
        subject: sorted(u for u, (publish, _) in users.items() if subject in publish)
        for subject in (
            "regio.usage.>",
            "regio.infer.>",
            "regio.heartbeat.>",
            "$KV.regio_config.>",
            "$JS.ACK.REGIO_USAGE.billing-settle.>",
            "$JS.API.CONSUMER.MSG.NEXT.REGIO_USAGE.billing-settle",
        )
    }
    assert publishers == {
        "regio.usage.>": ["worker"],  # only workers publish usage
        "regio.infer.>": ["gateway"],
        "regio.heartbeat.>": ["worker"],
        "$KV.regio_config.>": ["dashboard"],  # only the dashboard writes keys and activations
        "$JS.ACK.REGIO_USAGE.billing-settle.>": ["billing"],  # only billing consumes usage
        "$JS.API.CONSUMER.MSG.NEXT.REGIO_USAGE.billing-settle": ["billing"],
    }
    for user, (publish, subscribe) in users.items():
        # no wildcard that would reach another service's JetStream objects
        assert ">" not in publish and "$JS.API.>" not in publish, user
        assert ">" not in subscribe, user
        if user != "billing":
            assert not any("CONSUMER" in s and "REGIO_USAGE" in s for s in publish), user
    # each password is the environment variable the StatefulSet fills from the Secret
    (container,) = rendered.containers([rendered.get("StatefulSet", "nats")])
    for user in users:
        variable = f"NATS_{user.upper()}_PASSWORD"
        assert f"password: ${variable}" in config
        assert container.env_value(variable) is not None


# --- K8S13: migrations Job --------------------------------------------------------------------


@pytest.mark.parametrize("region", regions())
def test_k8s13_migrations_job_runs_both_schemas_migrations(
    overlays: dict[str, Rendered], region: str
) -> None:
    rendered = overlays[region]
    job = rendered.get("Job", "regio-migrate")
    assert pod_spec(job)["restartPolicy"] in ("OnFailure", "Never")
    assert job["spec"]["backoffLimit"] > 0
    commands = {}
    for container in rendered.containers([job]):
        command = container.spec["command"]
        assert command[:2] == ["python", "-m"]
        module = command[2]
        assert importlib.util.find_spec(module) is not None, f"{module} does not exist"
        commands[module] = container.spec["image"].partition(":")[0]
        env = {e["name"]: e for e in container.spec["env"]}
        assert "secretKeyRef" in env["REGIO_DATABASE_URL"]["valueFrom"]
    assert commands == {
        "regio_billing.migrate": "regio/billing",
        "regio_dashboard.migrate": "regio/dashboard-api",
    }


# --- K8S14: NetworkPolicies -------------------------------------------------------------------


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        outcome = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not outcome:
            return False
    return True


class Pod:
    def __init__(self, namespace: str, labels: dict[str, str], ports: dict[str, int]) -> None:
        self.namespace = namespace
        self.labels = labels
        self.ports = ports


def ingress_allowed(policies: list[Object], source: Pod, target: Pod, port: int) -> bool:
    """Whether Kubernetes lets `source` open `port` on `target` (ingress rules only)."""
    selecting = [
        p
        for p in policies
        if p["metadata"]["namespace"] == target.namespace
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        and selector_matches(p["spec"]["podSelector"], target.labels)
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            ports = rule.get("ports")
            if ports and not any(
                (target.ports.get(p["port"]) if isinstance(p["port"], str) else p["port"]) == port
                for p in ports
            ):
                continue
            peers = rule.get("from")
            if peers is None:
                return True
            for peer in peers:
                assert "ipBlock" not in peer, "ipBlock peers are not modelled here"
                namespaces = peer.get("namespaceSelector")
                if namespaces is None:
                    namespace_ok = source.namespace == target.namespace
                else:
                    namespace_ok = selector_matches(
                        namespaces, {"kubernetes.io/metadata.name": source.namespace}
                    )
                pods = peer.get("podSelector")
                if namespace_ok and (pods is None or selector_matches(pods, source.labels)):
                    return True
    return False


def region_pods(rendered: Rendered, namespace: str) -> dict[str, Pod]:
    pods: dict[str, Pod] = {}
    for workload in rendered.workloads():
        labels = dict(pod_metadata(workload)["labels"])
        ports = {
            p["name"]: p["containerPort"]
            for c in rendered.containers([workload])
            for p in c.spec.get("ports", [])
        }
        pods[labels["app"].removeprefix("regio-")] = Pod(namespace, labels, ports)
    # The CloudNativePG instances (made by the operator from the Cluster).
    pods["postgres"] = Pod(namespace, {"cnpg.io/cluster": "regio-postgres"}, {})
    return pods


EXPECTED_REACH: dict[tuple[str, int], set[str]] = {
    ("gateway", 8080): {"ingress-controller"},
    ("dashboard-api", 8081): {"ingress-controller"},
    ("billing", 50051): {"gateway", "dashboard-api"},
    ("postgres", 5432): {"billing", "dashboard-api", "migrate", "postgres", "cnpg-operator"},
    ("postgres", 8000): {"postgres", "cnpg-operator"},
    ("postgres", 9187): {"prometheus"},
    ("nats", 4222): {"gateway", "worker", "billing", "dashboard-api"},
    ("nats", 6222): {"nats"},
    ("nats", 8222): {"prometheus"},
    ("gateway", 9464): {"prometheus"},
    ("worker", 9465): {"prometheus"},
    ("billing", 9466): {"prometheus"},
    ("dashboard-api", 9467): {"prometheus"},
}


@pytest.mark.parametrize("region", regions())
def test_k8s14_network_policies_allow_exactly_the_intended_paths(
    overlays: dict[str, Rendered], region: str
) -> None:
    rendered = overlays[region]
    namespace = f"regio-{region}"
    policies = rendered.of_kind("NetworkPolicy")
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")]
    assert deny and deny[0]["spec"]["policyTypes"] == ["Ingress"], "no default-deny ingress"
    pods = region_pods(rendered, namespace)
    sources = {
        **pods,
        "ingress-controller": Pod("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"}, {}),
        "prometheus": Pod("monitoring", {"app.kubernetes.io/name": "prometheus"}, {}),
        "cnpg-operator": Pod("cnpg-system", {"app.kubernetes.io/name": "cloudnative-pg"}, {}),
        # Regio's own labels in another namespace (another region) reach nothing here.
        "other-region-gateway": Pod("regio-xx", {"app": "regio-gateway"}, {}),
    }
    for (target, port), expected in EXPECTED_REACH.items():
        allowed = {
            name
            for name, source in sources.items()
            if ingress_allowed(policies, source, pods[target], port)
        }
        assert allowed == expected, f"{target}:{port}"
    # The ports checked are the ones the pods really listen on.
    for (target, port), _ in EXPECTED_REACH.items():
        if target != "postgres":
            assert port in pods[target].ports.values(), f"{target} does not listen on {port}"


def test_k8s14_the_policy_model_refuses_what_a_default_deny_refuses() -> None:
    deny = {
        "metadata": {"namespace": "n"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }
    target = Pod("n", {"app": "a"}, {"http": 80})
    assert ingress_allowed([], Pod("n", {}, {}), target, 80)
    assert not ingress_allowed([deny], Pod("n", {}, {}), target, 80)


# --- K8S15: external PostgreSQL component -----------------------------------------------------


def test_k8s15_external_postgres_component_replaces_the_cluster(tmp_path: Path) -> None:
    rendered = Rendered(
        render_with_components(tmp_path, OVERLAYS / "de", [COMPONENTS / "external-postgres"])
    )
    assert rendered.of_kind("Cluster") == []
    assert not rendered.has("NetworkPolicy", "postgres-from-billing-and-dashboard")
    users = [c for c in rendered.containers() if c.env_value("REGIO_DATABASE_URL")]
    assert sorted(c.label for c in users) == [
        "Deployment/billing/billing",
        "Deployment/dashboard-api/dashboard-api",
        "Job/regio-migrate/billing",
        "Job/regio-migrate/dashboard",
    ]
    for container in users:
        assert container.env_value("REGIO_DATABASE_URL") == {
            "name": "REGIO_DATABASE_URL",
            "valueFrom": {"secretKeyRef": {"name": "regio-database", "key": "url"}},
        }
    # everything else of the region is still there
    assert rendered.has("StatefulSet", "nats") and rendered.has("Deployment", "gateway")
