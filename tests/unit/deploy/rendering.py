"""Render the kustomize tree with `kubectl kustomize` and look at the objects it produces.

The tests check what Kubernetes would receive, not the files: patches, generators, components
and the namespace transformer have all been applied. kubectl is a required tool (`make tools`
installs Debian's kubernetes-client); without it these tests fail, they never skip."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from regio_common.settings import PROJECT_ROOT

K8S = PROJECT_ROOT / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAYS = K8S / "overlays"
COMPONENTS = K8S / "components"
OBSERVABILITY = PROJECT_ROOT / "deploy" / "observability"

Object = dict[str, Any]

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail(
            "kubectl is missing: run `make tools` (apt-get install -y kubernetes-client); the "
            "deploy tests render the overlays with `kubectl kustomize`"
        )
    return found


def render(folder: Path) -> list[Object]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {folder} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_with_components(tmp: Path, overlay: Path, components: list[Path]) -> list[Object]:
    """An overlay with extra components, added the way an operator adds them: a copy of the
    overlay whose kustomization lists them under `components:` (so its namespace and labels
    apply to what they add). kustomize wants relative paths, so they are rewritten for the
    copy's folder."""
    copy = tmp / overlay.name
    shutil.copytree(overlay, copy)
    kustomization = (overlay / "kustomization.yaml").read_text()
    base = os.path.relpath(BASE, copy)
    assert "\n  - ../../base\n" in kustomization
    kustomization = kustomization.replace("\n  - ../../base\n", f"\n  - {base}\n")
    assert "\ncomponents:" not in kustomization
    listed = "".join(f"  - {os.path.relpath(c, copy)}\n" for c in components)
    (copy / "kustomization.yaml").write_text(f"{kustomization}components:\n{listed}")
    return render(copy)


@dataclass(frozen=True)
class Container:
    workload: Object
    spec: Object
    init: bool

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def label(self) -> str:
        return f"{self.workload['kind']}/{self.workload['metadata']['name']}/{self.name}"

    def env_value(self, name: str) -> Object | None:
        for entry in self.spec.get("env", []):
            if entry["name"] == name:
                return dict(entry)
        return None

    def port(self, name: str) -> int | None:
        for port in self.spec.get("ports", []):
            if port.get("name") == name:
                return int(port["containerPort"])
        return None


@dataclass(frozen=True)
class Rendered:
    """The objects of one rendered kustomization."""

    objects: list[Object]

    def of_kind(self, kind: str) -> list[Object]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> Object:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: {len(found)} objects rendered"
        return found[0]

    def has(self, kind: str, name: str) -> bool:
        return any(o["metadata"]["name"] == name for o in self.of_kind(kind))

    def workloads(self) -> list[Object]:
        return [o for o in self.objects if o["kind"] in WORKLOAD_KINDS]

    def long_running(self) -> list[Object]:
        return [o for o in self.objects if o["kind"] in ("Deployment", "StatefulSet")]

    def containers(self, workloads: list[Object] | None = None) -> Iterator[Container]:
        for workload in self.workloads() if workloads is None else workloads:
            pod = pod_spec(workload)
            for spec in pod.get("initContainers", []):
                yield Container(workload, spec, init=True)
            for spec in pod["containers"]:
                yield Container(workload, spec, init=False)

    def config_map_data(self, name: str) -> dict[str, str]:
        """Data of a generated ConfigMap, found by its name before the hash suffix."""
        found = [
            o
            for o in self.of_kind("ConfigMap")
            if o["metadata"]["name"].rpartition("-")[0] == name or o["metadata"]["name"] == name
        ]
        assert len(found) == 1, f"ConfigMap {name}: {len(found)} rendered"
        return dict(found[0].get("data", {}))

    def environment(self, container: Container) -> dict[str, Object]:
        """Every variable the container gets: envFrom ConfigMaps' keys, then its own env."""
        result: dict[str, Object] = {}
        for source in container.spec.get("envFrom", []):
            ref = source.get("configMapRef")
            assert ref is not None, f"{container.label}: envFrom only from ConfigMaps"
            data = self.config_map_by_exact_name(ref["name"])
            for key, value in data.items():
                result[key] = {"name": key, "value": value, "from": ref["name"]}
        for entry in container.spec.get("env", []):
            result[entry["name"]] = dict(entry)
        return result

    def config_map_by_exact_name(self, name: str) -> dict[str, str]:
        return dict(self.get("ConfigMap", name).get("data", {}))


def pod_spec(workload: Object) -> Object:
    spec: Object = workload["spec"]["template"]["spec"]
    return spec


def pod_metadata(workload: Object) -> Object:
    metadata: Object = workload["spec"]["template"].get("metadata", {})
    return metadata
