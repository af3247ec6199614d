"""`calls.outcome`: one status label, one finish reason, one breaker verdict, one access line.

Each table names the three places the worker and the ingress used to disagree: a 408 is
`failed` for both (it is a timeout, not the caller's fault); a queued Responses API call's
access line carries the response's finish reason; a 404 (no such deployment at this
endpoint) is `unreachable` for the shared breaker whoever saw it.
"""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest
from structlog.testing import capture_logs

from ingress.chat.credentials import ApiKeyAuth
from ingress.chat.proxy import Proxy
from ingress.chat.spillover import SpilloverPolicy
from ingress.chat.token_events import TokenEvents
from ingress.metrics import IngressMetrics
from orchestrator.calls.outcome import (
    Outcome,
    breaker_verdict,
    error_verdict,
    finish_reason,
    service_tier,
    status_label,
    upstream_error,
)
from orchestrator.calls.signals import Signals
from orchestrator.core.errors import (
    UpstreamError,
    UpstreamThrottled,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from orchestrator.core.schemas import ResultDocument
from tests.unit.test_ingress_proxy import PTU_ALONE, Sink, _call
from tests.unit.test_upstream import _upstream
from tests.unit.test_worker_dispatch import _run_one
from tests.unit.worker_fakes import T0, FakeUpstream, make_rig, request


@pytest.mark.parametrize(
    ("status_code", "result", "error_code", "label"),
    [
        (200, "completed", None, "completed"),
        (200, None, None, "completed"),
        (429, "failed", None, "throttled"),
        (429, None, None, "throttled"),
        (400, "failed", None, "rejected"),
        (404, None, None, "rejected"),
        (408, "failed", None, "failed"),  # was `rejected` at the worker
        (408, None, None, "failed"),
        (500, "failed", None, "failed"),
        (503, None, None, "failed"),
        (None, "failed", "too_many_deliveries", "failed"),
        (None, "expired", "expired", "expired"),
        (403, "failed", "token_quota_exceeded", "limited"),
    ],
)
def test_one_status_label(
    status_code: int | None, result: Any, error_code: str | None, label: str
) -> None:
    assert status_label(status_code, result, error_code) == label


def test_the_worker_labels_a_408_result_failed() -> None:
    doc = ResultDocument.for_request(
        request("r1"), "failed", completed_at=T0, attempts=3, status_code=408,
        error={"code": "408", "message": "upstream timed out"},
    )  # fmt: skip
    assert Outcome.of_result(doc, priority="low").label == "failed"


RESPONSE_INCOMPLETE = {
    "object": "response",
    "status": "incomplete",
    "incomplete_details": {"reason": "max_output_tokens"},
    "output": [],
}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"choices": [{"finish_reason": "stop"}]}, "stop"),
        ({"choices": [{"finish_reason": "length"}, {"finish_reason": "stop"}]}, "length"),
        ({"choices": []}, None),
        (RESPONSE_INCOMPLETE, "max_output_tokens"),
        ({"object": "response", "status": "completed", "output": []}, "completed"),
        ({"object": "response", "status": "failed", "incomplete_details": None}, "failed"),
        (None, None),
        ({}, None),
    ],
)
def test_one_finish_reason(body: dict[str, Any] | None, reason: str | None) -> None:
    assert finish_reason(body) == reason


async def test_a_queued_responses_call_logs_its_finish_reason_in_the_access_line() -> None:
    upstream = FakeUpstream(script={"r1": [RESPONSE_INCOMPLETE]})
    rig = make_rig(upstream=upstream)
    await rig.put(request("r1"))
    with capture_logs() as logs:
        assert await _run_one(rig) == "completed"
    (access,) = [e for e in logs if e["event"] == "access"]
    assert access["finish_reason"] == "max_output_tokens"  # was None
    assert (access["priority"], access["result"], access["status"]) == ("low", "completed", 200)


@pytest.mark.parametrize(
    ("status", "no_answer", "verdict"),
    [
        (200, None, "ok"),
        (400, None, "ok"),  # the request's own fault
        (413, None, "ok"),
        (401, None, "credentials"),
        (403, None, "credentials"),
        (404, None, "unreachable"),  # was `ok` at the ingress
        (408, None, "error"),
        (429, None, "throttled"),
        (500, None, "error"),
        (503, None, "error"),
        (None, "timeout", "error"),
        (None, "connection", "unreachable"),
    ],
)
def test_one_breaker_verdict(status: int | None, no_answer: Any, verdict: str) -> None:
    assert breaker_verdict(status, no_answer) == verdict
    if status is not None and status >= 400:
        assert error_verdict(upstream_error(status, None)) == verdict


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (429, UpstreamThrottled),
        (408, UpstreamTimeout),
        (401, UpstreamUnreachable),
        (404, UpstreamUnreachable),
        (400, UpstreamError),
        (502, UpstreamError),
    ],
)
def test_one_error_mapping(status: int, kind: type[UpstreamError]) -> None:
    err = upstream_error(status, {"error": {"code": "x"}}, Signals(retry_after_s=2.0))
    assert type(err) is kind and err.status_code == status
    assert err.retry_after_s == (2.0 if status == 429 else None)


class _Breaker:
    """Records what it is told, lets every call through."""

    def __init__(self) -> None:
        self.outcomes: list[str] = []

    async def allow(self) -> str:
        return "call"

    async def record(self, outcome: str, retry_after_s: float | None = None, probe: bool = False):
        self.outcomes.append(outcome)


def _answer(status: int) -> httpx2.Response:
    return httpx2.Response(status, json={"error": {"code": "DeploymentNotFound", "message": "x"}})


async def test_a_404_is_unreachable_for_the_ingress_breaker() -> None:
    client = httpx2.AsyncClient(transport=httpx2.MockTransport(lambda r: _answer(404)))
    breaker = _Breaker()
    proxy = Proxy(
        client, ApiKeyAuth("key"), TokenEvents(Sink()), IngressMetrics(),
        policy=SpilloverPolicy(breakers={(PTU_ALONE.name, "chat"): breaker}),  # type: ignore[dict-item]
    )  # fmt: skip
    resp = await proxy.forward(_call(PTU_ALONE))
    assert resp.status_code == 404
    assert breaker.outcomes == ["unreachable"]


async def test_a_404_is_unreachable_for_the_worker_breaker() -> None:
    up = _upstream(lambda r: _answer(404))
    with pytest.raises(UpstreamError) as caught:
        await up.chat("ptu", {"messages": [{"role": "user", "content": "hi"}]})
    assert error_verdict(caught.value) == "unreachable"
    assert json.loads(json.dumps(caught.value.body))["error"]["code"] == "DeploymentNotFound"


def test_the_applied_service_tier_is_in_the_access_line_and_counted_bounded() -> None:
    doc = ResultDocument(
        id="r1", status="completed", status_code=200, deployment="dep", enqueued_at=T0,
        completed_at=T0 + 1, spillover="paygo",
        response={"choices": [], "service_tier": "priority"},
    )  # fmt: skip
    outcome = Outcome.of_result(doc, priority="low")
    assert (outcome.service_tier, outcome.served_by) == ("priority", "paygo")
    with capture_logs() as logs:
        outcome.log_access()
    assert (logs[0]["service_tier"], logs[0]["spillover"]) == ("priority", "paygo")
    assert service_tier({"service_tier": ""}) is None and service_tier(None) is None
    metrics = IngressMetrics(deployments=["paygo"])
    for tier in ("priority", "default", "some-new-tier", None):
        metrics.tenants.tiered("paygo", "high", tier)
    text = metrics.render().decode()
    for tier in ("priority", "default", "other"):
        labels = f'deployment="paygo",priority="high",service_tier="{tier}"'
        assert f"ptu_service_tier_requests_total{{{labels}}} 1.0" in text
