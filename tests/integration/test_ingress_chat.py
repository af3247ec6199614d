"""The ingress over loopback: unchanged openai SDK clients, the queued path, errors, tenancy."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import openai
import pytest
import redis.asyncio as aioredis

from ingress.server import IngressThread
from orchestrator.core import keys
from orchestrator.core.errors import QueueUnavailable
from orchestrator.core.results import ResultStore
from orchestrator.core.schemas import QueuedRequest, ResultDocument
from orchestrator.core.settings import Settings, load_settings
from orchestrator.queues.redis_streams import RedisStreamsQueue
from simulator.config import SimConfig
from simulator.server import SimulatorThread
from tests import redis_mode

API_VERSION = "2024-10-21"
MESSAGES: Any = [{"role": "user", "content": "Say hello to the provisioned deployment."}]
DEPLOYMENTS = [
    {"name": "ptu", "model": "gpt-4o-mini", "ptus": 15, "spillover": "paygo"},
    {"name": "paygo", "model": "gpt-4o-mini", "kind": "standard", "tpm": 1_000_000},
]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    config = SimConfig.from_specs(
        ["ptu=gpt-4o-mini:15", "paygo=gpt-4o-mini:1000000:standard"],
        tbt_ms=0.0,
        ttft_ms=0.0,
        api_key="resource-key",
    )
    with SimulatorThread(config) as server:
        yield server


def _settings(redis_url: str, sim: SimulatorThread, **extra: Any) -> Settings:
    return load_settings(
        redis_url=redis_url,
        redis_cluster=redis_mode.CLUSTER,
        azure_openai_endpoint=sim.url,
        azure_openai_api_key="resource-key",
        deployments=DEPLOYMENTS,
        **extra,
    )


@pytest.fixture(scope="module")
def ingress(redis_url: str, sim: SimulatorThread) -> Iterator[IngressThread]:
    # nothing an earlier module left (an open breaker of `ptu` would send calls to paygo)
    with redis_mode.connect_sync(redis_url) as client:
        client.flushdb()
    with IngressThread(_settings(redis_url, sim)) as server:
        yield server


@pytest.fixture(scope="module")
def tenants(redis_url: str, sim: SimulatorThread) -> Iterator[IngressThread]:
    settings = _settings(redis_url, sim, api_keys={"key-a": "alpha", "key-b": "beta"})
    with IngressThread(settings) as server:
        yield server


@pytest.fixture
async def http(ingress: IngressThread) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=ingress.url, timeout=30) as client:
        yield client


async def _stand_in_worker(
    redis: aioredis.Redis, deployment: str = "ptu", tenant: str = "default"
) -> QueuedRequest:
    """Takes one message off the tenant's queue and completes it, as the worker would."""
    stream = keys.tenant_queue(deployment, tenant)
    queue = RedisStreamsQueue(redis, deployment, "test-worker", stream=stream)
    try:
        deliveries = await queue.receive(1, 5.0)
        assert len(deliveries) == 1
        msg = deliveries[0].message
        doc = ResultDocument(
            id=msg.id,
            custom_id=msg.custom_id,
            status="completed",
            status_code=200,
            response={"choices": [{"message": {"role": "assistant", "content": "hi"}}]},
            usage={"prompt_tokens": 3, "completion_tokens": 1},
            deployment=deployment,
            attempts=1,
            enqueued_at=msg.enqueued_at,
            completed_at=msg.enqueued_at + 1,
            batch_id=msg.batch_id,
        )
        await ResultStore(redis, 600).complete(doc, msg.reply_key)
        await queue.ack(deliveries[0])
        return msg
    finally:
        await queue.close()


def test_openai_client_non_streaming_and_streaming(ingress: IngressThread) -> None:
    client = openai.OpenAI(base_url=ingress.url + "/v1", api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="ptu", messages=MESSAGES)
    assert raw.http_response.status_code == 200
    assert raw.headers["azure-openai-deployment-utilization"].endswith("%")
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.completion_tokens > 0

    chunks = list(client.chat.completions.create(model="ptu", messages=MESSAGES, stream=True))
    assert any(c.choices and c.choices[0].delta.content for c in chunks)
    # the ingress asked for usage itself; the client did not, so it never sees that chunk
    assert all(c.usage is None for c in chunks)

    asked = list(
        client.chat.completions.create(
            model="ptu", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    assert asked[-1].usage is not None and asked[-1].choices == []


def test_azure_client_through_the_ingress(ingress: IngressThread) -> None:
    client = openai.AzureOpenAI(
        azure_endpoint=ingress.url, api_key="unused", api_version=API_VERSION, max_retries=0
    )
    completion = client.chat.completions.create(model="ptu", messages=MESSAGES, max_tokens=20)
    assert completion.usage is not None and completion.usage.completion_tokens <= 20
    text = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(model="ptu", messages=MESSAGES, stream=True)
        if c.choices
    )
    assert text


async def test_async_azure_client_and_max_tokens_ceiling(ingress: IngressThread) -> None:
    client = openai.AsyncAzureOpenAI(
        azure_endpoint=ingress.url, api_key="unused", api_version=API_VERSION, max_retries=0
    )
    completion = await client.chat.completions.create(
        model="ptu",
        messages=MESSAGES,
        max_tokens=50_000,
        extra_headers={"x-sim-completion-tokens": "3000"},
    )
    # capped at PTU_MAX_TOKENS_CEILING (2,000) by the ingress before the call
    assert completion.usage is not None and completion.usage.completion_tokens == 2000
    await client.close()


async def test_high_priority_feeds_the_estimate(
    ingress: IngressThread, http: httpx2.AsyncClient, redis: aioredis.Redis
) -> None:
    resp = await http.post(
        "/v1/chat/completions",
        json={"model": "ptu", "messages": MESSAGES, "max_tokens": 30},
        headers={"x-priority": "HIGH"},
    )
    assert resp.status_code == 200
    for _ in range(100):
        records = [k async for k in redis.scan_iter(match=keys.estimate_request("ptu", "*"))]
        if records and await redis.hexists(records[0], "complete"):
            break
        await asyncio.sleep(0.02)
    assert len(records) == 1
    assert await redis.hget(records[0], "admit") == b"1"
    assert await redis.hexists(keys.estimate("ptu"), "st")  # the filter state, stepped


async def test_low_priority_is_queued_then_answered(
    ingress: IngressThread, http: httpx2.AsyncClient, redis: aioredis.Redis
) -> None:
    resp = await http.post(
        "/openai/deployments/ptu/chat/completions?api-version=2024-10-21",
        json={"messages": MESSAGES},
        headers={"x-priority": "low", "x-reply-key": keys.tenant_reply("default", "mine")},
    )
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["object"] == "queued_request" and body["status"] == "queued"
    assert body["reply_key"] == keys.tenant_reply("default", "mine")
    assert resp.headers["location"] == f"/v1/requests/{body['id']}"
    assert body["id"].startswith("req_") and len(body["id"]) == 36

    pending = await http.get(resp.headers["location"])
    assert pending.status_code == 202 and pending.json()["status"] == "queued"

    waiter = asyncio.create_task(http.get(resp.headers["location"], params={"wait": "10"}))
    msg = await _stand_in_worker(redis)
    assert msg.id == body["id"]
    assert msg.body["max_tokens"] == 1000  # governance default applied before queueing
    assert msg.deadline - msg.enqueued_at == pytest.approx(86_400)
    done = await waiter
    assert done.status_code == 200
    assert done.json()["status"] == "completed"
    assert json.loads(await redis.lpop(keys.tenant_reply("default", "mine")))["id"] == body["id"]


async def test_openai_shape_low_priority_with_ttl(
    ingress: IngressThread, http: httpx2.AsyncClient, redis: aioredis.Redis
) -> None:
    resp = await http.post(
        "/v1/chat/completions",
        json={"model": "ptu", "messages": MESSAGES, "max_tokens": 9000},
        headers={"x-priority": "low", "x-ptu-ttl-s": "30"},
    )
    assert resp.status_code == 202
    assert resp.json()["reply_key"] == keys.reply(resp.json()["id"])
    msg = await _stand_in_worker(redis)
    assert msg.deadline - msg.enqueued_at == pytest.approx(30)
    assert msg.body["max_tokens"] == 2000


@pytest.mark.parametrize(
    ("path", "kwargs", "headers", "status", "code"),
    [
        ("/v1/chat/completions", {"content": b"{nope"}, {}, 400, "invalid_json"),
        ("/v1/chat/completions", {"content": b"[1]"}, {}, 400, "invalid_request"),
        ("/v1/chat/completions",
         {"content": b'{"model": "ptu", "messages": [{"role": "user", "content": "\\ud800"}]}'},
         {"x-priority": "low"}, 400, "invalid_json"),
        ("/v1/chat/completions", {"json": {"messages": MESSAGES}}, {}, 400, "invalid_request"),
        ("/v1/chat/completions", {"json": {"model": "x", "messages": MESSAGES}}, {}, 404,
         "DeploymentNotFound"),
        ("/openai/deployments/nope/chat/completions", {"json": {"messages": MESSAGES}}, {}, 404,
         "DeploymentNotFound"),
        ("/v1/chat/completions", {"json": {"model": "ptu", "messages": MESSAGES}},
         {"x-priority": "urgent"}, 400, "invalid_priority"),
        ("/v1/chat/completions", {"json": {"model": "ptu", "messages": MESSAGES, "stream": True}},
         {"x-priority": "low"}, 400, "invalid_request"),
        ("/v1/chat/completions", {"json": {"model": "paygo", "messages": MESSAGES}},
         {"x-priority": "low"}, 400, "not_provisioned"),
        ("/v1/chat/completions", {"json": {"model": "ptu", "messages": MESSAGES}},
         {"x-priority": "low", "x-reply-key": keys.tenant_reply("other", "x")}, 400,
         "invalid_reply_key"),
        ("/v1/chat/completions", {"content": b"x" * 2_000_000}, {}, 413, "request_too_large"),
        ("/v1/nothing", {"json": {}}, {}, 404, "not_found"),
    ],
)  # fmt: skip
async def test_bad_input_answers_in_the_envelope(
    http: httpx2.AsyncClient,
    path: str,
    kwargs: dict[str, Any],
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    resp = await http.post(path, headers=headers, **kwargs)
    assert resp.status_code == status
    error = resp.json()["error"]
    assert error["code"] == code
    assert error["message"] and error["type"]


async def test_unknown_request_is_404(http: httpx2.AsyncClient) -> None:
    resp = await http.get("/v1/requests/req_00000000000000000000000000000000")
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "request_not_found"


async def test_health_metrics_and_openapi(http: httpx2.AsyncClient) -> None:
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    metrics = await http.get("/metrics")
    assert "ptu_ingress_chat_requests_total" in metrics.text
    doc = (await http.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    assert "/v1/chat/completions" in doc["paths"]


async def test_tenants_cannot_read_each_other(
    tenants: IngressThread, redis: aioredis.Redis
) -> None:
    async with httpx2.AsyncClient(base_url=tenants.url) as http:
        body = {"model": "ptu", "messages": MESSAGES}
        assert (await http.post("/v1/chat/completions", json=body)).status_code == 401
        resp = await http.post(
            "/v1/chat/completions",
            json=body,
            headers={"x-priority": "low", "api-key": "key-a",
                     "x-reply-key": keys.tenant_reply("alpha", "inbox")},
        )  # fmt: skip
        assert resp.status_code == 202
        location = resp.headers["location"]
        mine = await http.get(location, headers={"authorization": "Bearer key-a"})
        theirs = await http.get(location, headers={"authorization": "Bearer key-b"})
        assert mine.status_code == 202
        assert theirs.status_code == 404
        wrong_namespace = await http.post(
            "/v1/chat/completions",
            json=body,
            headers={"x-priority": "low", "api-key": "key-b",
                     "x-reply-key": keys.tenant_reply("alpha", "inbox")},
        )  # fmt: skip
        assert wrong_namespace.status_code == 400
    msg = await _stand_in_worker(redis, tenant="alpha")
    assert msg.tenant == "alpha"


class DownQueue:
    """A queue whose backend is unreachable."""

    async def put(self, message: QueuedRequest) -> None:
        raise QueueUnavailable("redis queue: put failed: connection refused")

    async def close(self) -> None:
        return None


async def test_queue_unavailable_is_503_and_nothing_half_enqueued(
    redis_url: str, sim: SimulatorThread, redis: aioredis.Redis
) -> None:
    settings = _settings(redis_url, sim)
    with IngressThread(settings, queues={"ptu": DownQueue()}) as down:
        async with httpx2.AsyncClient(base_url=down.url) as http:
            resp = await http.post(
                "/v1/chat/completions",
                json={"model": "ptu", "messages": MESSAGES},
                headers={"x-priority": "low"},
            )
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "2"
    assert resp.json()["error"]["code"] == "queue_unavailable"
    assert [k async for k in redis.scan_iter(match=keys.request("*"))] == []


async def test_redis_unreachable_is_503(sim: SimulatorThread) -> None:
    from orchestrator.core.serving import free_port

    settings = _settings(f"redis://127.0.0.1:{free_port()}/0", sim)
    with IngressThread(settings) as down:
        # the Redis client retries for several seconds before the ingress gives up
        async with httpx2.AsyncClient(base_url=down.url, timeout=60) as http:
            resp = await http.post(
                "/v1/chat/completions",
                json={"model": "ptu", "messages": MESSAGES},
                headers={"x-priority": "low"},
            )
            health = await http.get("/healthz")
            ready = await http.get("/readyz")
    assert resp.status_code == 503
    assert "retry-after" in resp.headers
    assert "127.0.0.1" not in resp.text and str(settings.redis_url) not in resp.text
    assert health.status_code == 200 and health.json() == {"status": "ok"}  # Redis not asked
    assert ready.status_code == 503 and "redis: unavailable" in ready.json()["error"]["message"]


async def test_sdk_low_priority_answered_by_the_real_worker(
    ingress: IngressThread, sim: SimulatorThread, redis_url: str, redis: aioredis.Redis
) -> None:
    from tests.integration.test_ingress_batch import worker_process

    client = openai.AsyncOpenAI(base_url=ingress.url + "/v1", api_key="unused", max_retries=0)
    azure = openai.AsyncAzureOpenAI(
        azure_endpoint=ingress.url, api_key="unused", api_version=API_VERSION, max_retries=0
    )
    queued = []
    for sdk in (client, azure):
        raw = await sdk.chat.completions.with_raw_response.create(
            model="ptu", messages=MESSAGES, max_tokens=20, extra_headers={"x-priority": "low"}
        )
        assert raw.http_response.status_code == 202
        queued.append(raw.http_response.json())
    with worker_process(redis_url, sim.url, DEPLOYMENTS, "ptu", api_key="resource-key"):
        for accepted in queued:
            done = await client.get(
                f"/requests/{accepted['id']}",
                cast_to=httpx2.Response,
                options={"params": {"wait": 20}},
            )
            assert done.status_code == 200
            doc = done.json()
            assert doc["status"] == "completed" and doc["status_code"] == 200, doc
            assert doc["response"]["choices"][0]["message"]["content"]
            assert doc["usage"]["completion_tokens"] <= 20
    state = httpx2.get(sim.url + "/sim/state").json()["deployments"]["ptu"]
    assert state["by_priority"]["low"]["requests"] >= 2
    await client.close()
    await azure.close()


async def test_many_long_polls_do_not_starve_other_requests(
    ingress: IngressThread, http: httpx2.AsyncClient, redis: aioredis.Redis
) -> None:
    # each waiting GET holds a Redis connection: more than redis-py's default pool of 100
    accepted = await http.post(
        "/v1/chat/completions",
        json={"model": "ptu", "messages": MESSAGES},
        headers={"x-priority": "low"},
    )
    location = accepted.headers["location"]
    limits = httpx2.Limits(max_connections=200)
    async with httpx2.AsyncClient(base_url=ingress.url, timeout=30, limits=limits) as polls:
        waiting = [
            asyncio.create_task(polls.get(location, params={"wait": "2"})) for _ in range(150)
        ]
        await asyncio.sleep(0.5)
        during = await http.post(
            "/v1/chat/completions",
            json={"model": "ptu", "messages": MESSAGES},
            headers={"x-priority": "low"},
        )
        answers = await asyncio.gather(*waiting)
    assert during.status_code == 202
    assert {a.status_code for a in answers} == {202}
    await _stand_in_worker(redis)
    await _stand_in_worker(redis)
