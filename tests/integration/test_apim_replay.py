"""APIM in front of the ingress: the policy's own request shapes, replayed against a real one.

`deploy/apim/ptu-priority-policy.xml` is read, not restated: the low-priority branch's
`set-backend-service` and `set-header` elements are applied, in their order, to what a
client sends APIM (the API's URL suffix `openai` is cut and the backend's base URL put in
front, as APIM forwards), named values `{{...}}` are filled in, and each policy expression
is looked up in `EXPRESSIONS`, what it yields for the replayed call's APIM context (a new
expression fails the test until the replay knows it). The result goes to a real ingress
with `PTU_TRUSTED_FRONT_SECRET` on real Redis. The token event the outbound section
builds is read for its fields and fed to the estimator's parser and the usage ledger.
"""

from __future__ import annotations

import json
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx2
import pytest
import redis.asyncio as aioredis

from ingress.server import IngressThread
from orchestrator.estimator.redis_stream import parse_event
from orchestrator.estimator.usage import record_gateway_usage
from orchestrator.tenants.config import Tenancy
from orchestrator.tenants.ledger import UsageLedger
from simulator.server import SimulatorThread
from tests import redis_mode
from tests.support import stacks

POLICY = Path(__file__).resolve().parents[2] / "deploy" / "apim" / "ptu-priority-policy.xml"
API_SUFFIX = "/openai"
"""The Azure OpenAI API's URL suffix in APIM (what the SDKs' `azure_endpoint` paths start with)."""
SECRET = "front-secret-0123456789"
SUBSCRIPTION = "team-a"
"""The APIM subscription of the replayed caller (its id is the tenant name)."""
EXPRESSIONS = {
    '@(context.Subscription?.Id ?? "default")': lambda sub: sub or "default",
}
DEPLOYMENTS = [{"name": "idle", "model": "gpt-4o-mini", "ptus": 15}]  # no worker: stays queued
TENANTS = [{"name": "team-a"}, {"name": "team-b"}]
KEYS = {"key-b": "team-b"}
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def low_branch() -> ET.Element:
    root = ET.parse(POLICY).getroot()
    (inbound,) = root.iter("inbound")
    for when in inbound.iter("when"):
        if (
            "x-priority" in (when.get("condition") or "")
            and when.find("set-backend-service") is not None
        ):
            return when
    raise AssertionError("the policy has no low-priority branch")


def _value(text: str, named: dict[str, str], subscription: str | None) -> str:
    text = re.sub(r"\{\{([\w-]+)\}\}", lambda m: named[m.group(1)], text.strip())
    if text.startswith("@"):
        assert text in EXPRESSIONS, f"teach the replay what {text} yields"
        return EXPRESSIONS[text](subscription)
    return text


def forwarded(
    path: str, headers: dict[str, str], named: dict[str, str], subscription: str | None
) -> tuple[str, dict[str, str]]:
    """(URL, headers) of what APIM sends the ingress for a client's low-priority call."""
    assert path.startswith(API_SUFFIX + "/")
    url = ""
    out = {k.lower(): v for k, v in headers.items()}
    for element in low_branch():
        if element.tag == "set-backend-service":
            base = _value(element.get("base-url") or "", named, subscription)
            url = base.rstrip("/") + path[len(API_SUFFIX) :]
        elif element.tag == "set-header":
            name = (element.get("name") or "").lower()
            action = element.get("exists-action")
            if action == "delete":
                out.pop(name, None)
            else:
                assert action == "override", element.attrib
                (value,) = element.iter("value")
                out[name] = _value(value.text or "", named, subscription)
    assert url, "the branch sets no backend"
    return url, out


def token_event_fields() -> list[str]:
    root = ET.parse(POLICY).getroot()
    (logger,) = root.iter("log-to-eventhub")
    return re.findall(r'new JProperty\("(\w+)"', logger.text or "")


@pytest.fixture(scope="module", autouse=True)
def _fresh_redis(redis_url: str) -> None:
    stacks.flush(redis_url)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    with stacks.simulator(["idle=gpt-4o-mini:15"], "rk") as server:
        yield server


@pytest.fixture(scope="module")
def ingress(redis_url: str, sim: SimulatorThread) -> Iterator[IngressThread]:
    settings = {
        "deployments": DEPLOYMENTS,
        "tenants": TENANTS,
        "api_keys": KEYS,
        "trusted_front_secret": SECRET,
    }
    with stacks.ingress_on(redis_url, sim, "rk", **settings) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=30) as client:
        yield client


def named(ingress: IngressThread) -> dict[str, str]:
    return {"ptu-ingress-url": ingress.url, "ptu-front-secret": SECRET}


CLIENT = {
    "x-priority": "low",
    "api-key": "the-callers-apim-subscription-key",  # APIM's, not the ingress's
    "x-ptu-tenant": "team-b",  # a caller's attempt to pick a tenant: overridden
    "content-type": "application/json",
}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/openai/deployments/idle/chat/completions?api-version=2024-10-21", CHAT),
        ("/openai/responses?api-version=2025-04-01-preview", {"model": "idle", "input": "hi"}),
        ("/openai/v1/responses", {"model": "idle", "input": "hi"}),
    ],
)
async def test_the_policys_low_priority_calls_are_queued_for_the_subscriptions_tenant(
    ingress: IngressThread, http: httpx2.AsyncClient, path: str, body: dict[str, object]
) -> None:
    url, headers = forwarded(path, CLIENT, named(ingress), SUBSCRIPTION)
    assert "api-key" not in headers and headers["x-ptu-tenant"] == SUBSCRIPTION
    answer = await http.post(url, content=json.dumps(body), headers=headers)
    assert answer.status_code == 202, answer.text
    request_id = answer.json()["id"]
    own = await http.get(f"{ingress.url}/v1/requests/{request_id}", headers=headers)
    assert own.status_code == 202 and own.json()["status"] == "queued"
    other = await http.get(f"{ingress.url}/v1/requests/{request_id}", headers={"api-key": "key-b"})
    assert other.status_code == 404  # team-b's key does not see team-a's request


async def test_the_tenant_header_counts_only_with_the_secret(
    ingress: IngressThread, http: httpx2.AsyncClient
) -> None:
    path = "/openai/deployments/idle/chat/completions?api-version=2024-10-21"
    url, headers = forwarded(path, CLIENT, named(ingress), SUBSCRIPTION)
    wrong = await http.post(url, json=CHAT, headers={**headers, "x-ptu-front-secret": "guess"})
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    bare = {k: v for k, v in headers.items() if k != "x-ptu-front-secret"}
    assert (await http.post(url, json=CHAT, headers=bare)).status_code == 401
    keyed = await http.post(url, json=CHAT, headers={**bare, "api-key": "key-b"})
    assert keyed.status_code == 202  # the key's tenant; x-ptu-tenant: team-a is ignored
    back = await http.get(f"{ingress.url}/v1/requests/{keyed.json()['id']}", headers=headers)
    assert back.status_code == 404  # not team-a's
    url, stranger = forwarded(path, CLIENT, named(ingress), "not-a-tenant")
    refused = await http.post(url, json=CHAT, headers=stranger)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "unknown_tenant"


async def test_the_policys_token_event_reaches_the_tenants_usage(redis_url: str) -> None:
    fields = token_event_fields()
    assert {"id", "deploymentName", "tenant", "promptTokens", "responseTokens"} <= set(fields)
    context = {
        "id": "apim-request-1",
        "timestamp": "2026-12-08T01:00:00.0000000Z",
        "deploymentName": "idle",
        "tenant": EXPRESSIONS['@(context.Subscription?.Id ?? "default")'](SUBSCRIPTION),
        "promptTokens": 120,
        "responseTokens": 30,
        "totalTokens": 150,
    }
    record = json.dumps({name: context[name] for name in fields})
    event = parse_event(record, default_timestamp=time.time())
    assert (event.tenant, event.prompt_tokens, event.completion_tokens) == (SUBSCRIPTION, 120, 30)
    redis: aioredis.Redis = redis_mode.connect(redis_url)
    try:
        ledger = UsageLedger(redis, Tenancy([], {}))
        assert await record_gateway_usage(ledger, event)
        assert not await record_gateway_usage(ledger, event)  # a redelivery counts once
        rows = await ledger.rows(time.time() - 3600, time.time() + 3600)
        mine = [r for r in rows if r.tenant == SUBSCRIPTION and r.deployment == "idle"]
        assert [(r.priority, r.prompt_tokens, r.completion_tokens) for r in mine] == [
            ("high", 120, 30)
        ]
    finally:
        await redis.aclose()
