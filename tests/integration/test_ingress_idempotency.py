"""`Idempotency-Key` on low-priority POSTs: a retry answers the first attempt's answer and is
never queued twice (chat completions, background responses, waiting calls), per tenant;
without the header nothing changes. A real ingress on real Redis; a real worker for the
waiting calls."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator

import httpx2
import openai
import pytest
import redis.asyncio as aioredis

from ingress.queued import idempotency
from ingress.server import IngressThread
from orchestrator.core import keys
from simulator.server import SimulatorThread
from tests import redis_mode
from tests.integration.test_ingress_batch import worker_process
from tests.support import stacks

DEPLOYMENTS = [
    {"name": "ptu", "model": "gpt-4o-mini", "ptus": 15},
    {"name": "idle", "model": "gpt-4o-mini", "ptus": 15},  # no worker serves it
]
KEYS = {"key-a": "team-a", "key-b": "team-b"}
TENANTS = [{"name": "team-a"}, {"name": "team-b"}]
LOW = {"x-priority": "low", "api-key": "key-a"}
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
URL = "/openai/deployments/idle/chat/completions?api-version=2024-10-21"


@pytest.fixture(scope="module", autouse=True)
def _fresh_redis(redis_url: str) -> None:
    stacks.flush(redis_url)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    with stacks.simulator(["ptu=gpt-4o-mini:15", "idle=gpt-4o-mini:15"], "rk") as server:
        yield server


@pytest.fixture(scope="module")
def ingress(redis_url: str, sim: SimulatorThread) -> Iterator[IngressThread]:
    settings = {"deployments": DEPLOYMENTS, "tenants": TENANTS, "api_keys": KEYS}
    with stacks.ingress_on(redis_url, sim, "rk", **settings) as server:
        yield server


@pytest.fixture
async def http(ingress: IngressThread) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=ingress.url, timeout=60) as client:
        yield client


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = redis_mode.connect(redis_url)
    yield client
    await client.aclose()


async def _queued(redis: aioredis.Redis, tenant: str, deployment: str = "idle") -> int:
    return int(await redis.xlen(keys.tenant_queue(deployment, tenant)))


def _claim(tenant: str, key: str) -> str:
    return keys.idempotency(tenant, hashlib.sha256(key.encode()).hexdigest())


async def test_a_retry_with_the_same_key_answers_the_first_202_and_queues_once(
    http: httpx2.AsyncClient, redis: aioredis.Redis
) -> None:
    before = await _queued(redis, "team-a")
    headers = {**LOW, "Idempotency-Key": "order-1"}
    first = await http.post(URL, json=CHAT, headers=headers)
    again = await http.post(URL, json=CHAT, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert await _queued(redis, "team-a") - before == 1
    # remembered for the request's life: its deadline plus the reply TTL
    ttl = await redis.ttl(_claim("team-a", "order-1"))
    assert ttl > idempotency.PENDING_S
    # another key, or none, is another request
    other = await http.post(URL, json=CHAT, headers={**LOW, "Idempotency-Key": "order-2"})
    plain = [await http.post(URL, json=CHAT, headers=LOW) for _ in range(2)]
    ids = {r.json()["id"] for r in [first, other, *plain]}
    assert len(ids) == 4
    assert await _queued(redis, "team-a") - before == 4


async def test_concurrent_attempts_queue_once_and_the_others_answer_it_or_409(
    http: httpx2.AsyncClient, redis: aioredis.Redis
) -> None:
    before = await _queued(redis, "team-a")
    headers = {**LOW, "Idempotency-Key": "burst"}
    answers = await asyncio.gather(*(http.post(URL, json=CHAT, headers=headers) for _ in range(20)))
    codes = [a.status_code for a in answers]
    assert set(codes) <= {202, 409}, codes
    assert {a.json()["id"] for a in answers if a.status_code == 202} == {
        answers[codes.index(202)].json()["id"]
    }
    for conflict in (a for a in answers if a.status_code == 409):
        assert conflict.json()["error"]["code"] == "idempotency_key_in_use"
        assert conflict.headers["retry-after"] == "1"
    assert await _queued(redis, "team-a") - before == 1


async def test_the_key_is_the_tenants_own(http: httpx2.AsyncClient, redis: aioredis.Redis) -> None:
    a = await http.post(URL, json=CHAT, headers={**LOW, "Idempotency-Key": "shared"})
    b_headers = {**LOW, "api-key": "key-b", "Idempotency-Key": "shared"}
    b = await http.post(URL, json=CHAT, headers=b_headers)
    assert a.status_code == b.status_code == 202
    assert a.json()["id"] != b.json()["id"]
    assert b.json()["reply_key"] == keys.reply(b.json()["id"])


async def test_the_same_key_with_another_body_is_refused(http: httpx2.AsyncClient) -> None:
    headers = {**LOW, "Idempotency-Key": "order-3"}
    assert (await http.post(URL, json=CHAT, headers=headers)).status_code == 202
    other = await http.post(URL, json={**CHAT, "max_tokens": 9}, headers=headers)
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"


async def test_a_bad_key_is_a_400(http: httpx2.AsyncClient) -> None:
    for bad in ("x" * 256, "tab\there"):
        resp = await http.post(URL, json=CHAT, headers={**LOW, "Idempotency-Key": bad})
        assert resp.status_code == 400
        assert resp.json()["error"]["code"] == "invalid_idempotency_key"


async def test_a_failed_enqueue_frees_the_key(
    http: httpx2.AsyncClient, redis: aioredis.Redis
) -> None:
    stream = keys.tenant_queue("idle", "team-b")
    await redis.delete(stream)
    await redis.set(stream, "not a stream")  # the enqueue fails with a Redis error
    headers = {**LOW, "api-key": "key-b", "Idempotency-Key": "order-4"}
    try:
        failed = await http.post(URL, json=CHAT, headers=headers)
        assert failed.status_code == 503
        assert await redis.exists(_claim("team-b", "order-4")) == 0
    finally:
        await redis.delete(stream)
    retried = await http.post(URL, json=CHAT, headers=headers)
    assert retried.status_code == 202
    assert await _queued(redis, "team-b") == 1


async def test_a_key_being_accepted_answers_409(
    http: httpx2.AsyncClient, redis: aioredis.Redis
) -> None:
    await redis.set(_claim("team-a", "order-5"), "pending:req_x", ex=30)
    resp = await http.post(URL, json=CHAT, headers={**LOW, "Idempotency-Key": "order-5"})
    assert resp.status_code == 409
    assert resp.headers["retry-after"] == "1"


async def test_a_retried_background_response_is_the_same_response(
    ingress: IngressThread, redis: aioredis.Redis
) -> None:
    before = await _queued(redis, "team-a")
    async with openai.AsyncOpenAI(
        base_url=ingress.url + "/v1", api_key="key-a", max_retries=0
    ) as client:
        made = [
            await client.responses.create(
                model="idle",
                input="hi",
                background=True,
                extra_headers={"Idempotency-Key": "bg-1"},
            )
            for _ in range(2)
        ]
    assert made[0].id == made[1].id and made[1].status == "queued"
    assert await _queued(redis, "team-a") - before == 1


def _low_requests(sim: SimulatorThread) -> int:
    state = httpx2.get(sim.url + "/sim/state").json()["deployments"]["ptu"]
    return int(state["by_priority"].get("low", {}).get("requests", 0))


async def test_a_retried_waiting_call_waits_for_the_same_request(
    ingress: IngressThread, redis_url: str, sim: SimulatorThread
) -> None:
    before = _low_requests(sim)
    headers = {"x-priority": "low", "Prefer": "wait=60", "Idempotency-Key": "wait-1"}
    async with openai.AsyncOpenAI(
        base_url=ingress.url + "/v1", api_key="key-a", max_retries=0
    ) as client:
        first = client.chat.completions.with_raw_response.create(
            model="ptu", messages=[{"role": "user", "content": "hi"}], extra_headers=headers
        )
        again = client.chat.completions.with_raw_response.create(
            model="ptu", messages=[{"role": "user", "content": "hi"}], extra_headers=headers
        )
        first_task = asyncio.ensure_future(first)
        await asyncio.sleep(0.3)  # the first claims the key, then the retry comes
        again_task = asyncio.ensure_future(again)
        await asyncio.sleep(0.3)  # both wait before any worker runs
        with worker_process(redis_url, sim.url, DEPLOYMENTS, "ptu", api_key="rk"):
            raws = [await first_task, await again_task]
    assert [r.http_response.status_code for r in raws] == [200, 200]
    assert raws[0].headers["x-ptu-request-id"] == raws[1].headers["x-ptu-request-id"]
    assert raws[0].parse().id == raws[1].parse().id
    assert _low_requests(sim) - before == 1


async def test_the_sdks_own_retries_of_a_timed_out_call_queue_it_once(
    ingress: IngressThread, redis: aioredis.Redis
) -> None:
    before = await _queued(redis, "team-a")
    # a waiting call no worker answers: every attempt times out, and the SDK sends it again
    # with the same headers (the key passed once, for the call)
    headers = {"x-priority": "low", "Prefer": "wait=60", "Idempotency-Key": "sdk-retry"}
    async with openai.AsyncOpenAI(
        base_url=ingress.url + "/v1", api_key="key-a", max_retries=2, timeout=1.0
    ) as client:
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(
                model="idle", messages=[{"role": "user", "content": "hi"}], extra_headers=headers
            )
    assert await _queued(redis, "team-a") - before == 1
