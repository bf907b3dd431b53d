"""deploy/observability: the Grafana dashboard and the Prometheus alerts ask for series the
services really export (README, "Deployment": OBS01-OBS04). A renamed metric fails here, not
silently as an empty panel or an alert that can never fire."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from regio_billing.metrics import BillingMetrics
from regio_dashboard.metrics import DashboardMetrics
from regio_gateway.metrics import GatewayMetrics
from regio_worker.metrics import WorkerMetrics
from tests.unit.deploy.rendering import OBSERVABILITY, OVERLAYS, Rendered, render_with_components

DASHBOARD = json.loads((OBSERVABILITY / "grafana-dashboard.json").read_text())
RULES = yaml.safe_load((OBSERVABILITY / "prometheus-rules.yaml").read_text())
METRIC_NAME = re.compile(r"\bregio_[a-z0-9_]+\b")
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count", ""),
    "gauge": ("",),
    "info": ("_info",),
}


def series_names(registry: CollectorRegistry) -> set[str]:
    """Every series name a registry can expose (families with no sample yet included)."""
    names: set[str] = set()
    for family in registry.collect():
        suffixes = SUFFIXES.get(family.type, ("",))
        names.update(family.name + suffix for suffix in suffixes)
    return names


def exported_series() -> set[str]:
    registries = [
        GatewayMetrics().registry,
        WorkerMetrics("liv").registry,
        BillingMetrics().registry,
        DashboardMetrics().registry,
    ]
    return set().union(*(series_names(r) for r in registries))


def dashboard_expressions() -> list[str]:
    return [t["expr"] for panel in DASHBOARD["panels"] for t in panel.get("targets", [])]


def rules() -> list[dict[str, Any]]:
    return [rule for group in RULES["spec"]["groups"] for rule in group["rules"]]


def referenced(expressions: list[str]) -> set[str]:
    return {name for expr in expressions for name in METRIC_NAME.findall(expr)}


def test_obs01_series_names_follow_prometheus_client() -> None:
    registry = CollectorRegistry()
    from prometheus_client import Counter, Histogram

    Counter("regio_x", "x", registry=registry)
    Histogram("regio_y_seconds", "y", registry=registry)
    assert series_names(registry) == {
        "regio_x_total",
        "regio_y_seconds_bucket",
        "regio_y_seconds_sum",
        "regio_y_seconds_count",
    }


@pytest.mark.parametrize(
    "source", ["dashboard", "rules"], ids=["grafana-dashboard", "prometheus-rules"]
)
def test_obs01_every_referenced_metric_is_exported(source: str) -> None:
    expressions = dashboard_expressions() if source == "dashboard" else [r["expr"] for r in rules()]
    names = referenced(expressions)
    assert names, "no Regio metric referenced"
    assert sorted(names - exported_series()) == []


def test_obs02_dashboard_has_the_operators_panels() -> None:
    assert DASHBOARD["uid"] and DASHBOARD["title"]
    names = referenced(dashboard_expressions())
    for needed in (
        "regio_gateway_requests_total",  # request rate by region/status
        "regio_gateway_request_duration_seconds_bucket",  # latency
        "regio_gateway_time_to_first_token_seconds_bucket",
        "regio_gateway_tokens_total",  # tokens/s
        "regio_worker_queue_length",
        "regio_worker_free_slots",
        "regio_billing_rpc_duration_seconds_bucket",  # reserve latency
        "regio_billing_settlements_total",
        "regio_billing_settlement_lag_seconds_bucket",
        "regio_gateway_refusals_total",
        "regio_billing_holds_open",
        "regio_gateway_dependency_errors_total",
    ):
        assert needed in names, f"no panel shows {needed}"
    reserve = [e for e in dashboard_expressions() if "regio_billing_rpc_duration" in e]
    assert any('method=~"Reserve|ReserveMany"' in e for e in reserve)  # alone, or shared
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    variables = {v["name"] for v in DASHBOARD["templating"]["list"]}
    for expression in dashboard_expressions():
        for variable in re.findall(r"\$(\w+)", expression):
            assert variable in variables | {"__rate_interval"}, variable


def balanced(expression: str) -> bool:
    depth = 0
    for char in expression:
        depth += {"(": 1, ")": -1, "{": 1, "}": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0


def test_obs03_rules_cover_the_operators_alerts() -> None:
    assert RULES["apiVersion"] == "monitoring.coreos.com/v1"
    assert RULES["kind"] == "PrometheusRule"
    assert RULES["metadata"]["name"]
    by_name = {rule["alert"]: rule for rule in rules()}
    for rule in by_name.values():
        assert set(rule) >= {"alert", "expr", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert rule["annotations"]["summary"]
        assert balanced(rule["expr"]), rule["alert"]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"])
    # worker down in a region, holds stuck, settlement lag, error rate
    assert "regio_worker_free_slots" in by_name["RegioWorkerRouteDown"]["expr"]
    assert "namespace" in by_name["RegioWorkerRouteDown"]["expr"]
    assert "regio_billing_holds_open" in by_name["RegioHoldsStuck"]["expr"]
    assert "regio_billing_settlement_lag_seconds" in by_name["RegioSettlementLag"]["expr"]
    error_rate = by_name["RegioGatewayErrorRate"]["expr"]
    assert 'status=~"5.."' in error_rate and "regio_gateway_requests_total" in error_rate


def test_obs04_observability_component_renders_into_an_overlay(tmp_path: Path) -> None:
    rendered = Rendered(render_with_components(tmp_path, OVERLAYS / "nl", [OBSERVABILITY]))
    rule = rendered.get("PrometheusRule", "regio")
    assert rule["metadata"]["namespace"] == "regio-nl"
    assert rule["spec"] == RULES["spec"]
    config_map = rendered.get("ConfigMap", "regio-grafana-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["grafana-dashboard.json"]) == DASHBOARD
