"""The Grafana dashboard and the Prometheus alert rules name only metrics the code exports.

Every PromQL expression is parsed by a real PromQL parser (`promql-parser`); the metric
names it selects are compared with the sample names the ingress's and the worker's
Prometheus registries expose (a counter `x` is scraped as `x_total`, a histogram as
`x_bucket`, `x_sum`, `x_count`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client import CollectorRegistry

from ingress.metrics import IngressMetrics
from ingress.queued.requests import lost
from orchestrator.worker.metrics import WorkerMetrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "ptu-orchestrator.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
MONITORING = DEPLOY / "k8s" / "base" / "monitoring.yaml"
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
DURATION = re.compile(r"^\d+[smhdw]$")


def _names(registry: CollectorRegistry) -> set[str]:
    out = set()
    for family in registry.collect():
        out.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return out


def exported() -> set[str]:
    """Every sample name the ingress and the worker expose."""
    return _names(IngressMetrics(deployments=["d"]).registry) | _names(
        WorkerMetrics(deployments=["d"]).registry
    )


def selected(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (Grafana variables substituted)."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"selector without a metric name in {expr!r}"
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            match = re.fullmatch(r"label_values\((\w+), *(\w+)\)", var["query"]["query"])
            assert match, var["query"]
            exprs.append(match.group(1))
    return exprs


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_the_check_catches_a_name_the_code_does_not_export() -> None:
    names = selected('sum by (d) (rate(ptu_worker_results_total{status="failed"}[5m]))')
    assert names <= exported()
    assert not selected("rate(ptu_worker_made_up_total[5m])") <= exported()
    with pytest.raises(ValueError):
        selected("sum(rate(ptu_worker_results_total[5m])")  # unbalanced: not PromQL


def test_dashboard_names_only_exported_metrics() -> None:
    exprs = dashboard_exprs()
    assert len(exprs) > 20
    used = set().union(*(selected(e) for e in exprs))
    assert used - exported() == set()
    # the views the dashboard exists for
    for metric in (
        "ptu_worker_utilisation_ratio",
        "ptu_worker_upper_threshold_ratio",
        "ptu_worker_lower_threshold_ratio",
        "ptu_worker_concurrency_limit",
        "ptu_worker_global_in_flight",
        "ptu_worker_queue_depth",
        "ptu_worker_queue_lag_seconds_bucket",
        "ptu_ingress_high_latency_seconds_bucket",
        "ptu_ingress_ptu_throttled_total",
        "ptu_tenant_requests_total",
        "ptu_tenant_tokens_total",
    ):
        assert metric in used, metric


def test_dashboard_is_a_well_formed_grafana_dashboard() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] and board["schemaVersion"] >= 36
    variables = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "deployment", "tenant"} <= variables
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["type"] == "timeseries" and panel["datasource"]["uid"] == "${datasource}"
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            for var in re.findall(r"\$(\w+)", target["expr"]):
                assert var in variables or f"${var}" in GRAFANA_VARIABLES, var


def test_alert_rules_name_only_exported_metrics_and_are_complete() -> None:
    rules = alert_rules()
    assert len(rules) >= 8
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert selected(rule["expr"]) - exported() == set(), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert rule["annotations"]["summary"]
        assert DURATION.match(rule.get("for", "0s")), rule["alert"]


def test_the_prometheus_rule_manifest_holds_the_same_groups() -> None:
    docs = [d for d in yaml.safe_load_all(MONITORING.read_text()) if d]
    rules = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert len(rules) == 1
    assert rules[0]["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]


def _kept_labels(expr: str) -> set[str]:
    """Labels an alert's result keeps: those its aggregations group `by`."""
    kept: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            assert str(node.modifier.type).endswith("By"), f"`without` in {expr!r}"
            kept.update(node.modifier.labels)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return kept


def test_alert_annotations_name_only_labels_the_alert_keeps() -> None:
    for rule in alert_rules():
        text = " ".join(rule["annotations"].values())
        used = set(re.findall(r"\$labels\.(\w+)", text))
        assert used <= _kept_labels(rule["expr"]), rule["alert"]
    assert _kept_labels("sum by (deployment) (rate(ptu_worker_results_total[5m]))") == {
        "deployment"
    }
    assert _kept_labels("sum(rate(ptu_worker_results_total[5m]))") == set()


def test_the_data_loss_alert_says_what_a_lost_request_answers() -> None:
    answer = lost("req_1")
    (rule,) = [r for r in alert_rules() if r["alert"] == "PTURedisDataLost"]
    description = rule["annotations"]["description"]
    assert f"{answer.status} {answer.code}" in description
    assert "404" not in description
