from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

import fakeredis
import pytest
from azure.monitor.querymetrics import MetricsQueryResult

from orchestrator.core.errors import ConfigError, MissingDependencyError, UtilisationUnavailable
from orchestrator.core.settings import load_settings
from orchestrator.estimator.redis_stream import parse_event
from orchestrator.utilisation.azure_monitor import (
    AzureMonitorSource,
    deployment_filter,
    newest_readings,
)
from orchestrator.utilisation.estimate.store import EstimateStore
from orchestrator.utilisation.factory import make_source
from orchestrator.utilisation.static import StaticSource

T0 = datetime(2027, 1, 15, 12, 0, tzinfo=UTC).timestamp()
UTIL = "AzureOpenAIProvisionedManagedUtilizationV2"
DEPLOYMENTS = (
    '[{"name":"ptu-a","model":"gpt-4o","ptus":50},{"name":"ptu-b","model":"gpt-4o","ptus":50}]'
)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def _series(name: str | None, points: list[tuple[float, float | None, float | None]]) -> Any:
    meta = [] if name is None else [{"name": {"value": "modeldeploymentname"}, "value": name}]
    data = [{"timeStamp": _iso(t), "average": a, "maximum": m} for t, a, m in points]
    return {"metadatavalues": meta, "data": data}


def _result(*series: Any, metric: str = UTIL) -> MetricsQueryResult:
    """A result built by the SDK's own deserialiser from the getBatch wire shape."""
    return MetricsQueryResult._from_generated(
        {
            "starttime": _iso(T0),
            "endtime": _iso(T0 + 600),
            "interval": "PT1M",
            "namespace": "Microsoft.CognitiveServices/accounts",
            "resourceregion": "local",
            "value": [
                {
                    "id": "x",
                    "type": "Microsoft.Insights/metrics",
                    "name": {"value": metric},
                    "unit": "Percent",
                    "timeseries": list(series),
                }
            ],
        }
    )


def test_newest_minute_with_a_value_is_used_and_ends_the_minute() -> None:
    results = [
        _result(
            _series("ptu-a", [(T0, 40.0, 45.0), (T0 + 60, 70.5, 71.0), (T0 + 120, None, None)]),
            _series("ptu-b", [(T0, 5.0, None)]),
        )
    ]
    got = newest_readings(results, ["ptu-a", "ptu-b"])
    assert got["ptu-a"].value == pytest.approx(0.71)  # Maximum preferred
    assert got["ptu-a"].observed_at == T0 + 120  # end of the minute that started at T0+60
    assert got["ptu-b"].value == pytest.approx(0.05)  # Average when Maximum is missing
    assert got["ptu-a"].source == "azure_monitor"


@pytest.mark.parametrize(
    ("results", "names", "expected"),
    [
        ([_result(_series("ptu-a", [(T0, None, None)]))], ["ptu-a"], {}),
        ([_result(_series("other", [(T0, 1.0, 1.0)]))], ["ptu-a"], {}),
        ([_result(_series(None, [(T0, 10.0, 20.0)]))], ["ptu-a"], {"ptu-a": 0.2}),
        ([_result(_series(None, [(T0, 10.0, 20.0)]))], ["ptu-a", "ptu-b"], {}),
        ([_result(_series("ptu-a", [(T0, 1.0, 1.0)]), metric="GeneratedTokens")], ["ptu-a"], {}),
        ([_result()], ["ptu-a"], {}),
    ],
)
def test_newest_readings_edge_cases(
    results: list[Any], names: list[str], expected: dict[str, float]
) -> None:
    got = newest_readings(results, names)
    assert {n: r.value for n, r in got.items()} == pytest.approx(expected)


def test_deployment_filter() -> None:
    assert deployment_filter(["a"]) == "ModelDeploymentName eq 'a'"
    assert deployment_filter(["a", "b"]) == (
        "ModelDeploymentName eq 'a' or ModelDeploymentName eq 'b'"
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            '{"request_id":"r","deployment":"d","phase":"admit","timestamp":5,'
            '"prompt_tokens":10,"max_tokens":20}',
            ("r", "d", "admit", 5.0, 10, 20, 0),
        ),
        (
            '{"id":"r","timestamp":"2027-01-15T12:00:00.1234567Z","deploymentName":"d",'
            '"promptTokens":10,"responseTokens":7,"totalTokens":17}',
            ("r", "d", "complete", T0 + 0.123456, 10, 0, 7),
        ),
        (
            '{"id":"r","timestamp":"1/15/2027 12:00:00 PM","deploymentName":"d",'
            '"promptTokens":10,"totalTokens":17}',
            ("r", "d", "complete", T0, 10, 0, 7),
        ),
        (
            '{"id":"r","timestamp":1800000000,"deploymentName":"d","promptTokens":1}',
            ("r", "d", "complete", 1_800_000_000.0, 1, 0, 0),
        ),
        (
            '{"id":"r","timestamp":"garbage","deploymentName":"d","promptTokens":1}',
            ("r", "d", "complete", 42.0, 1, 0, 0),
        ),
    ],
)
def test_parse_event(raw: str, expected: tuple[Any, ...]) -> None:
    e = parse_event(raw, default_timestamp=42.0)
    got = (
        e.request_id,
        e.deployment,
        e.phase,
        e.timestamp,
        e.prompt_tokens,
        e.max_tokens,
        e.completion_tokens,
    )
    assert got[:3] == expected[:3] and got[4:] == expected[4:]
    assert got[3] == pytest.approx(expected[3])


@pytest.mark.parametrize("raw", ["", "[]", "not json", '{"deploymentName":"d"}', '{"a":1}'])
def test_parse_event_rejects_garbage(raw: str) -> None:
    with pytest.raises((ValueError, KeyError)):
        parse_event(raw, default_timestamp=0.0)


@pytest.mark.parametrize(
    ("tenant", "expected"),
    [(None, "default"), ("", "default"), ("team-a", "team-a"), ("a" * 64, "a" * 64)],
)
def test_a_gateway_record_names_its_tenant(tenant: str | None, expected: str) -> None:
    record = {"id": "r", "deploymentName": "d", "promptTokens": 3, "responseTokens": 2}
    if tenant is not None:
        record["tenant"] = tenant
    assert parse_event(json.dumps(record), default_timestamp=0.0).tenant == expected


@pytest.mark.parametrize("tenant", ["a b", "ptu:{x}", "a" * 65, "é"])
def test_a_gateway_record_with_a_malformed_tenant_is_refused(tenant: str) -> None:
    record = {"id": "r", "deploymentName": "d", "promptTokens": 3, "tenant": tenant}
    with pytest.raises(ValueError, match="not a tenant name"):
        parse_event(json.dumps(record), default_timestamp=0.0)


async def test_static_source() -> None:
    source = StaticSource({"a": 0.3}, max_age_s=2.0, clock=lambda: 100.0)
    assert (await source.read("a")).observed_at == 100.0
    source.set("a", 0.5, observed_at=90.0)
    reading = await source.read("a")
    assert (reading.value, reading.age(100.0), source.reads) == (0.5, 10.0, 2)
    source.clear("a")
    with pytest.raises(UtilisationUnavailable):
        await source.read("a")


async def test_factory_estimate_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTU_DEPLOYMENTS", DEPLOYMENTS)
    source = make_source(load_settings(), fakeredis.FakeAsyncRedis())
    assert isinstance(source, EstimateStore)
    assert source.max_age_s == 5.0 and source.deployments == ["ptu-a", "ptu-b"]


async def test_factory_azure_monitor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTU_DEPLOYMENTS", DEPLOYMENTS)
    monkeypatch.setenv("PTU_UTILIZATION_SOURCE", "azure_monitor")
    with pytest.raises(ConfigError, match="PTU_AZURE_MONITOR_ENDPOINT"):
        make_source(load_settings(), fakeredis.FakeAsyncRedis())
    monkeypatch.setenv("PTU_AZURE_MONITOR_ENDPOINT", "https://eastus.metrics.monitor.azure.com")
    with pytest.raises(ConfigError, match="PTU_AZURE_RESOURCE_ID"):
        make_source(load_settings(), fakeredis.FakeAsyncRedis())
    monkeypatch.setenv("PTU_AZURE_RESOURCE_ID", "/subscriptions/s/resourceGroups/g/x")
    source = make_source(load_settings(), fakeredis.FakeAsyncRedis())
    assert isinstance(source, AzureMonitorSource)
    assert source.max_age_s == 300.0
    await source.close()


def test_factory_names_the_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTU_UTILIZATION_SOURCE", "azure_monitor")
    monkeypatch.setenv("PTU_AZURE_MONITOR_ENDPOINT", "https://eastus.metrics.monitor.azure.com")
    monkeypatch.setenv("PTU_AZURE_RESOURCE_ID", "/subscriptions/s/resourceGroups/g/x")
    monkeypatch.setitem(sys.modules, "azure.identity.aio", None)
    with pytest.raises(MissingDependencyError, match=r"\[azure\]"):
        make_source(load_settings(), fakeredis.FakeAsyncRedis())


@pytest.mark.parametrize(
    ("calibration", "monitored", "drift"),
    [("auto", True, True), ("off", True, False), ("auto", False, False)],
)
async def test_factory_estimate_folds_monitor_minutes_when_configured(
    monkeypatch: pytest.MonkeyPatch, calibration: str, monitored: bool, drift: bool
) -> None:
    monkeypatch.setenv("PTU_DEPLOYMENTS", DEPLOYMENTS)
    monkeypatch.setenv("PTU_CALIBRATION", calibration)
    if monitored:
        monkeypatch.setenv("PTU_AZURE_MONITOR_ENDPOINT", "https://eastus.metrics.monitor.azure.com")
        monkeypatch.setenv("PTU_AZURE_RESOURCE_ID", "/subscriptions/s/resourceGroups/g/x")
    source = make_source(load_settings(), fakeredis.FakeAsyncRedis())
    assert isinstance(source, EstimateStore)
    assert (source.drift is not None) is drift
    await source.close()


def test_factory_estimate_without_the_azure_extra_runs_without_the_drift(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PTU_AZURE_MONITOR_ENDPOINT", "https://eastus.metrics.monitor.azure.com")
    monkeypatch.setenv("PTU_AZURE_RESOURCE_ID", "/subscriptions/s/resourceGroups/g/x")
    monkeypatch.setitem(sys.modules, "azure.identity.aio", None)
    source = make_source(load_settings(), fakeredis.FakeAsyncRedis())
    assert isinstance(source, EstimateStore) and source.drift is None
