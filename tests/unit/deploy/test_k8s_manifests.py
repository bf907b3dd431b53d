"""Static rules of the kustomize tree in deploy/k8s (README, "Deployment": K8S01-K8S09).

No YAML library is installed, so the manifests are read as text: split into documents at `---`,
and the block of each Deployment's container is the lines indented under its `- name:` item of
`containers:`. The manifests keep to that plain layout (one container list per Deployment, flow
mappings only on a single line), which these tests also enforce by failing on anything else."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from regio_common.settings import PROJECT_ROOT

K8S = PROJECT_ROOT / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAYS = K8S / "overlays"
CATALOGUE = tomllib.loads((BASE / "catalogue.production.toml").read_text())
REGIONS: dict[str, list[str]] = CATALOGUE["regions"]
SENSITIVE = re.compile(r"TOKEN|PASSWORD|SECRET|DATABASE_URL|_KEY\b|CREDENTIAL", re.IGNORECASE)


@dataclass(frozen=True)
class Document:
    path: Path
    text: str

    @property
    def kind(self) -> str:
        match = re.search(r"^kind: (\w+)$", self.text, re.MULTILINE)
        return match.group(1) if match else ""

    @property
    def name(self) -> str:
        match = re.search(r"^metadata:\n(?:  .*\n)*?  name: ([\w.-]+)$", self.text, re.MULTILINE)
        assert match, f"{self.path}: a document without metadata.name"
        return match.group(1)


def manifest_files() -> list[Path]:
    return sorted(K8S.rglob("*.yaml"))


def documents(paths: list[Path]) -> list[Document]:
    found: list[Document] = []
    for path in paths:
        for chunk in re.split(r"^---\s*$", path.read_text(), flags=re.MULTILINE):
            if re.search(r"^kind: ", chunk, re.MULTILINE):
                found.append(Document(path, chunk))
    return found


def base_documents() -> list[Document]:
    return documents([p for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml"])


def deployments() -> list[Document]:
    return [d for d in base_documents() if d.kind == "Deployment"]


def indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def block_under(text: str, key: str) -> str:
    """The lines indented under the first `key:` line (the key's value, as text)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == f"{key}:":
            body = []
            for following in lines[i + 1 :]:
                if following.strip() and indent(following) <= indent(line):
                    break
                body.append(following)
            return "\n".join(body)
    return ""


def containers(deployment: Document) -> dict[str, str]:
    """Container name → its block of text."""
    body = block_under(deployment.text, "containers")
    first = re.match(r"( *)- name: ", body)
    assert first, f"{deployment.name}: containers must start with `- name:`"
    # split at the list's own items only, not at `- name:` items of env lists inside them
    items = re.split(rf"^{first.group(1)}- name: ", body, flags=re.MULTILINE)
    assert items[0].strip() == "", f"{deployment.name}: containers must start with `- name:`"
    result: dict[str, str] = {}
    for item in items[1:]:
        name, _, rest = item.partition("\n")
        result[name.strip()] = rest
    assert result, f"{deployment.name} has no container"
    return result


def kustomization(folder: Path) -> str:
    return (folder / "kustomization.yaml").read_text()


def listed_resources(folder: Path) -> list[str]:
    return re.findall(r"^  - (\S+)$", block_under(kustomization(folder), "resources"), re.M)


def overlay_text(region: str) -> str:
    folder = OVERLAYS / region
    return "\n".join(p.read_text() for p in sorted(folder.glob("*.yaml")))


def test_helpers_read_the_plain_layout() -> None:
    text = (
        "kind: Deployment\nmetadata:\n  name: x\nspec:\n  containers:\n    - name: a\n"
        "      image: i\n      env:\n        - name: E\n          value: v\n"
        "    - name: b\n      ports: []\n  other: 1\n"
    )
    doc = Document(Path("x.yaml"), text)
    assert (doc.kind, doc.name) == ("Deployment", "x")
    found = containers(doc)
    assert sorted(found) == ["a", "b"]
    assert "- name: E" in found["a"]
    assert "other" not in found["b"]


def test_k8s01_kustomizations_list_existing_files() -> None:
    for folder in [BASE, *sorted(OVERLAYS.iterdir())]:
        for resource in listed_resources(folder):
            assert (folder / resource).exists(), f"{folder}: {resource} does not exist"
    assert {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"} == set(
        listed_resources(BASE)
    ), "every base manifest is listed in the base kustomization"


@pytest.mark.parametrize("deployment", deployments(), ids=lambda d: d.name)
def test_k8s02_containers_have_resources_and_probes(deployment: Document) -> None:
    for name, block in containers(deployment).items():
        limits = block_under(block, "resources")
        assert re.search(r"requests: \{[^}]*cpu: [^}]*memory: ", limits), f"{name}: requests"
        assert re.search(r"limits: \{[^}]*cpu: [^}]*memory: ", limits), f"{name}: limits"
        if "containerPort" in block:
            # Serves a port: Kubernetes must know when it is ready and when it is dead.
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                assert f"{probe}:" in block, f"{deployment.name}/{name} has no {probe}"
        else:
            # The NATS-only worker serves no port; its heartbeat is its liveness (documented).
            assert deployment.name.startswith("worker-")
            assert "No probes" in deployment.text


def test_k8s02_http_services_probe_health_and_billing_its_grpc_port() -> None:
    by_name = {d.name: d for d in deployments()}
    for name in ("gateway", "dashboard-api"):
        block = containers(by_name[name])[name]
        assert "httpGet: {path: /health, port: http}" in block_under(block, "readinessProbe")
        # liveness must not depend on NATS: a NATS outage would restart every pod at once
        assert "tcpSocket: {port: http}" in block_under(block, "livenessProbe")
    billing = containers(by_name["billing"])["billing"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert re.search(r"tcpSocket: \{port: grpc\}|grpc: \{", block_under(billing, probe))


@pytest.mark.parametrize("deployment", deployments(), ids=lambda d: d.name)
def test_k8s03_pods_are_locked_down(deployment: Document) -> None:
    pod = block_under(deployment.text, "template")
    assert "automountServiceAccountToken: false" in pod
    pod_security = block_under(pod, "securityContext")
    assert "runAsNonRoot: true" in pod_security
    assert "seccompProfile: {type: RuntimeDefault}" in pod_security
    assert re.search(r"runAsUser: [1-9]\d*", pod_security)
    for name, block in containers(deployment).items():
        security = block_under(block, "securityContext")
        assert "allowPrivilegeEscalation: false" in security, name
        assert "readOnlyRootFilesystem: true" in security, name
        assert "capabilities: {drop: [ALL]}" in security, name
        assert "privileged: true" not in block


def test_k8s04_gateway_has_a_disruption_budget_and_an_autoscaler() -> None:
    docs = {(d.kind, d.name): d for d in base_documents()}
    pdb = docs[("PodDisruptionBudget", "gateway")]
    assert "matchLabels: {app: regio-gateway}" in pdb.text
    hpa = docs[("HorizontalPodAutoscaler", "gateway")].text
    assert "scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: gateway}" in hpa
    min_replicas = re.search(r"minReplicas: (\d+)", hpa)
    assert min_replicas and int(min_replicas.group(1)) >= 2, "one gateway is no HA"


def test_k8s05_workers_run_on_gpu_nodes() -> None:
    workers = [d for d in deployments() if d.name.startswith("worker-")]
    assert workers
    for worker in workers:
        (block,) = containers(worker).values()
        assert "image: regio/worker-cuda" in block
        resources = block_under(block, "resources")
        assert re.search(r"limits: \{[^}]*nvidia\.com/gpu: 1", resources)
        assert '{name: REGIO_WORKER_N_GPU_LAYERS, value: "-1"}' in block
        assert "{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}" in worker.text
        node_selector = block_under(worker.text, "nodeSelector")
        assert "regio/country: " in node_selector
        assert "{name: models, mountPath: /models, readOnly: true}" in block


def test_k8s06_images_are_built_here_and_pinned() -> None:
    dockerfiles = {p.name.removesuffix(".Dockerfile") for p in K8S.parent.glob("docker/*")}
    for deployment in deployments():
        for block in containers(deployment).values():
            image = re.search(r"image: (\S+)", block)
            assert image, f"{deployment.name} has no image"
            repository, _, tag = image.group(1).partition(":")
            assert repository.startswith("regio/")
            assert repository.removeprefix("regio/") in dockerfiles
            assert not tag, "tags are pinned in one place: the base kustomization's images"
            assert f"{{name: {repository}, newTag: " in kustomization(BASE)
    for tag in re.findall(r"newTag: (\S+)\}", kustomization(BASE)):
        assert tag != "latest"
    for path in manifest_files():
        assert ":latest" not in path.read_text(), f"{path} uses a latest tag"


def test_k8s07_no_secret_values_in_manifests() -> None:
    for path in manifest_files():
        text = path.read_text()
        assert not re.search(r"^kind: Secret$", text, re.M), f"{path} defines a Secret"
        assert "secretGenerator" not in text, f"{path} generates a Secret from values"
        assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text), f"{path}: credentials in a URL"
        assert not re.search(r"\b(rg|rgm)-[A-Za-z0-9_-]{16,}", text), f"{path}: a Regio key"
        # env entries with a sensitive name take their value from a Secret
        for name in re.findall(r"\{name: (\w+), value:", text):
            assert not SENSITIVE.search(name), f"{path}: {name} has a literal value"
        for match in re.finditer(r"- name: (\w+)\n(\s*)(\w+):", text):
            if SENSITIVE.search(match.group(1)):
                assert match.group(3) == "valueFrom", f"{path}: {match.group(1)} is a literal"
        for literal in re.findall(r"^\s*- (\w+)=", text, re.M):
            assert not SENSITIVE.search(literal), f"{path}: {literal} in a ConfigMap"


def test_k8s07_secrets_are_referenced() -> None:
    text = "\n".join(p.read_text() for p in BASE.glob("*.yaml"))
    for env, secret in (
        ("REGIO_DATABASE_URL", "{name: regio-database, key: url}"),
        ("REGIO_ADMIN_TOKEN", "{name: regio-admin, key: token}"),
    ):
        assert f"- name: {env}\n" in text
        for match in re.finditer(rf"- name: {env}\n\s*valueFrom:\n\s*(\S.*)", text):
            assert match.group(1) == f"secretKeyRef: {secret}"


def test_k8s08_an_overlay_per_catalogue_region() -> None:
    assert sorted(p.name for p in OVERLAYS.iterdir()) == sorted(REGIONS)


@pytest.mark.parametrize("region", sorted(REGIONS))
def test_k8s08_overlay_names_its_region(region: str) -> None:
    folder = OVERLAYS / region
    text = overlay_text(region)
    assert f"namespace: regio-{region}\n" in kustomization(folder)
    assert "../../base" in listed_resources(folder)
    assert f"{{name: REGIO_DEFAULT_REGION, value: {region}}}" in text
    assert f"name: regio-{region}\n" in (folder / "namespace.yaml").read_text()
    assert "pod-security.kubernetes.io/enforce: restricted" in text
    hosts = re.findall(r"host: (\S+)", text) + re.findall(r"hosts: \[(\S+)\]", text)
    assert hosts, f"overlay {region} has no Ingress host"
    for host in hosts:
        assert host.startswith(f"{region}."), f"{host}: the gateway reads the region from it"
    # every region's workers run in one of the region's countries, scheduled on that country
    countries = re.findall(r"\{name: REGIO_WORKER_COUNTRY, value: (\w+)\}", text)
    selected = re.findall(r"regio/country: (\w+)", text)
    assert countries and countries == selected
    assert set(countries) <= set(REGIONS[region])


@pytest.mark.parametrize("region", sorted(REGIONS))
def test_k8s09_ingress_routes_to_the_gateway_with_tls_and_no_buffering(region: str) -> None:
    (ingress,) = [d for d in documents([OVERLAYS / region / "ingress.yaml"])]
    assert ingress.kind == "Ingress"
    assert "name: gateway" in block_under(ingress.text, "service")
    assert "secretName: " in ingress.text
    assert 'proxy-buffering: "off"' in ingress.text, "SSE must not be buffered"
