"""`PTU_METRICS_API_KEY`: `/metrics`, `/openapi.json` and the worker's metrics port ask for it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from ingress.server import IngressThread
from orchestrator.core.operator_key import OperatorKey
from orchestrator.worker.health import Health
from orchestrator.worker.metrics import WorkerMetrics
from simulator.server import SimulatorThread
from tests.support.stacks import flush, ingress_on, simulator

KEY = "operator-secret"
DEPLOYMENTS = [{"name": "ptu", "model": "gpt-4o-mini", "ptus": 15}]
API_KEYS = {"key-a": "alpha", "key-b": "beta"}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    with simulator(["ptu=gpt-4o-mini:15"], "resource-key") as server:
        yield server


@pytest.fixture(scope="module")
def guarded(redis_url: str, sim: SimulatorThread) -> Iterator[IngressThread]:
    flush(redis_url)
    with ingress_on(
        redis_url, sim, "resource-key", deployments=DEPLOYMENTS, api_keys=API_KEYS,
        metrics_api_key=KEY,
    ) as server:  # fmt: skip
        yield server


@pytest.mark.parametrize("path", ["/metrics", "/openapi.json"])
def test_operator_endpoints_need_the_key(guarded: IngressThread, path: str) -> None:
    with httpx2.Client(base_url=guarded.url, timeout=10) as http:
        for headers in ({}, {"api-key": "key-a"}, {"authorization": "Bearer wrong"}):
            refused = http.get(path, headers=headers)  # a tenant's key is not the operator's
            assert refused.status_code == 401, headers
            assert refused.json()["error"]["code"] == "invalid_api_key"
            assert "PTU_METRICS_API_KEY" in refused.json()["error"]["message"]
        for headers in ({"api-key": KEY}, {"authorization": f"Bearer {KEY}"}):
            assert http.get(path, headers=headers).status_code == 200, headers
        # the probes stay open
        assert http.get("/healthz").status_code == 200
        assert http.get("/readyz").status_code in (200, 503)


def test_an_open_multi_tenant_ingress_warns_at_start(redis_url: str, sim: SimulatorThread) -> None:
    with (
        capture_logs() as logs,
        ingress_on(redis_url, sim, "resource-key", deployments=DEPLOYMENTS, api_keys=API_KEYS)
        as server,
        httpx2.Client(base_url=server.url, timeout=10) as http,
    ):  # fmt: skip
        metrics = http.get("/metrics")
    assert metrics.status_code == 200 and "ptu_tenant_tokens_total" in metrics.text  # open
    warned = [e for e in logs if e["event"] == "metrics_unauthenticated"]
    assert [(e["process"], e["tenants"]) for e in warned] == [("ingress", 2)]


@pytest.mark.parametrize("probes", [False, True])
def test_the_worker_metrics_port_needs_the_key(probes: bool) -> None:
    metrics = WorkerMetrics(tenants=["alpha", "beta"], deployments=["ptu"])
    health = Health() if probes else None
    port = metrics.serve(0, addr="127.0.0.1", health=health, key=OperatorKey(SecretStr(KEY)))
    try:
        with httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            if probes:  # the kubelet sends no key: the probes stay open
                assert http.get("/healthz").status_code == 200
            refused = http.get("/metrics", headers={"authorization": "Bearer nope"})
            assert refused.status_code == 401 and "ptu_" not in refused.text
            assert refused.headers["www-authenticate"].startswith("Bearer")
            assert http.get("/metrics").status_code == 401
            for headers in ({"api-key": KEY}, {"authorization": f"Bearer {KEY}"}):
                answered = http.get("/metrics", headers=headers)
                assert answered.status_code == 200 and "ptu_worker" in answered.text
    finally:
        metrics.close()


def test_without_a_key_the_worker_port_is_open() -> None:
    metrics = WorkerMetrics(tenants=["alpha"], deployments=["ptu"])
    port = metrics.serve(0, addr="127.0.0.1", key=OperatorKey(None))
    try:
        assert httpx2.get(f"http://127.0.0.1:{port}/metrics", timeout=10).status_code == 200
    finally:
        metrics.close()
