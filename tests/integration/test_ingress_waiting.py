"""Waiting low-priority calls: `Prefer: wait=SECONDS` (and the configured defaults) answer
what a high-priority call would have, with the unchanged openai SDK (OpenAI and Azure)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
import redis.asyncio as aioredis
from openai.types.chat import ChatCompletionMessageParam

from ingress.queued.completions import Completions
from ingress.server import IngressThread
from orchestrator.core import keys
from orchestrator.core.results import ResultStore
from orchestrator.core.schemas import QueuedRequest, ResultDocument
from simulator.server import SimulatorThread
from tests import redis_mode
from tests.integration.test_ingress_batch import worker_process
from tests.support import stacks

AZURE_API_VERSION = "2024-10-21"
DEPLOYMENTS = [
    {"name": "ptu", "model": "gpt-4o-mini", "ptus": 15},
    {"name": "idle", "model": "gpt-4o-mini", "ptus": 15},  # no worker serves it
    {"name": "held", "model": "gpt-4o-mini", "ptus": 15, "wait_s": 60},
]
KEYS = {"key-a": "team-a", "key-w": "waiters", "k": "team-a"}
TENANTS = [{"name": "team-a"}, {"name": "waiters", "wait_s": 60}]
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Summarise the report."}]
WAIT = {"Prefer": "wait=120", "x-priority": "low"}


@pytest.fixture(scope="module", autouse=True)
def _fresh_redis(redis_url: str) -> None:
    stacks.flush(redis_url)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    specs = ["ptu=gpt-4o-mini:15", "idle=gpt-4o-mini:15", "held=gpt-4o-mini:15"]
    with stacks.simulator(specs, "rk") as server:
        yield server


@pytest.fixture(scope="module")
def ingress(redis_url: str, sim: SimulatorThread) -> Iterator[IngressThread]:
    settings = {"deployments": DEPLOYMENTS, "tenants": TENANTS, "api_keys": KEYS}
    with stacks.ingress_on(redis_url, sim, "rk", **settings) as server:
        yield server


@pytest.fixture(scope="module")
def worker(redis_url: str, sim: SimulatorThread) -> Iterator[subprocess.Popen[bytes]]:
    with worker_process(redis_url, sim.url, DEPLOYMENTS, "ptu", "held", api_key="rk") as proc:
        yield proc


@pytest.fixture
async def clients(ingress: IngressThread) -> AsyncIterator[list[openai.AsyncOpenAI]]:
    made = [
        openai.AsyncOpenAI(base_url=ingress.url + "/v1", api_key="key-a", max_retries=0),
        openai.AsyncAzureOpenAI(
            azure_endpoint=ingress.url, api_key="key-a", api_version=AZURE_API_VERSION,
            max_retries=0,
        ),
    ]  # fmt: skip
    yield made
    for client in made:
        await client.close()


def _low_requests(sim: SimulatorThread, deployment: str) -> int:
    state = httpx2.get(sim.url + "/sim/state").json()["deployments"][deployment]
    return int(state["by_priority"].get("low", {}).get("requests", 0))


async def test_a_waiting_call_returns_a_normal_chat_completion(
    clients: list[openai.AsyncOpenAI], worker: subprocess.Popen[bytes], sim: SimulatorThread
) -> None:
    before = _low_requests(sim, "ptu")
    for client in clients:
        raw = await client.chat.completions.with_raw_response.create(
            model="ptu",
            messages=MESSAGES,
            max_tokens=20,
            extra_headers=WAIT,
        )
        assert raw.http_response.status_code == 200
        assert raw.headers["preference-applied"] == "wait=120"
        assert raw.headers["x-ptu-deployment"] == "ptu"
        completion = raw.parse()
        assert completion.object == "chat.completion" and completion.choices
        assert completion.choices[0].message.content
        assert completion.usage is not None and 0 < completion.usage.completion_tokens <= 20
        # the result is also where every queued result is
        rid = raw.headers["x-ptu-request-id"]
        doc = await clients[0].get(f"/requests/{rid}", cast_to=httpx2.Response)  # under /v1
        assert doc.json()["response"]["id"] == completion.id
    # the plain call the README shows: create(...) returns the ChatCompletion itself
    plain = await clients[0].chat.completions.create(
        model="ptu",
        messages=MESSAGES,
        extra_headers=WAIT,
    )
    assert plain.choices[0].message.content
    assert _low_requests(sim, "ptu") - before == len(clients) + 1  # all at low priority


async def test_a_waiting_responses_call_returns_a_normal_response(
    clients: list[openai.AsyncOpenAI], worker: subprocess.Popen[bytes]
) -> None:
    response = await clients[0].responses.create(
        model="ptu", input="hi", max_output_tokens=16, extra_headers=WAIT
    )
    assert response.status == "completed" and response.output_text


async def test_the_wait_running_out_answers_202_and_loses_nothing(
    ingress: IngressThread, redis_url: str
) -> None:
    async with httpx2.AsyncClient(base_url=ingress.url, timeout=30) as http:
        resp = await http.post(
            "/v1/chat/completions",
            json={"model": "idle", "messages": MESSAGES},
            headers={"authorization": "Bearer key-a", "x-priority": "low",
                     "prefer": "respond-async, wait=1"},
        )  # fmt: skip
        assert resp.status_code == 202, resp.text
        assert resp.headers["preference-applied"] == "wait=1"
        rid = resp.json()["id"]
        assert resp.headers["location"] == f"/v1/requests/{rid}"
        status = await http.get(f"/v1/requests/{rid}", headers={"authorization": "Bearer key-a"})
        assert status.status_code == 202 and status.json()["status"] == "queued"


async def test_tenant_and_deployment_defaults_make_a_call_wait(
    ingress: IngressThread, worker: subprocess.Popen[bytes]
) -> None:
    async with httpx2.AsyncClient(base_url=ingress.url, timeout=90) as http:
        body = {"model": "ptu", "messages": MESSAGES, "max_tokens": 8}
        by_tenant = await http.post(
            "/v1/chat/completions", json=body,
            headers={"authorization": "Bearer key-w", "x-priority": "low"},
        )  # fmt: skip
        assert by_tenant.status_code == 200 and by_tenant.json()["object"] == "chat.completion"
        assert by_tenant.headers["preference-applied"] == "wait=60"
        by_deployment = await http.post(
            "/v1/chat/completions", json={**body, "model": "held"},
            headers={"authorization": "Bearer key-a", "x-priority": "low"},
        )  # fmt: skip
        assert by_deployment.status_code == 200, by_deployment.text
        # wait=0 asks for the plain 202
        no_wait = await http.post(
            "/v1/chat/completions", json={**body, "model": "idle"},
            headers={"authorization": "Bearer key-w", "x-priority": "low", "prefer": "wait=0"},
        )  # fmt: skip
        assert no_wait.status_code == 202


def _post_many(http: httpx2.AsyncClient, calls: int, model: str, prefer: str) -> list[Any]:
    body = {"model": model, "messages": MESSAGES, "max_tokens": 4}
    headers = {"authorization": "Bearer key-a", "x-priority": "low", "prefer": prefer}
    return [
        asyncio.create_task(http.post("/v1/chat/completions", json=body, headers=headers))
        for _ in range(calls)
    ]


async def test_many_waiting_calls_are_each_answered_once(
    ingress: IngressThread, worker: subprocess.Popen[bytes], sim: SimulatorThread
) -> None:
    calls = 200
    before = _low_requests(sim, "ptu")
    limits = httpx2.Limits(max_connections=calls)
    async with httpx2.AsyncClient(base_url=ingress.url, timeout=120, limits=limits) as http:
        answers = await asyncio.gather(*_post_many(http, calls, "ptu", "wait=120"))
    assert [a.status_code for a in answers] == [200] * calls
    ids = {a.headers["x-ptu-request-id"] for a in answers}
    assert len(ids) == calls  # each call its own request, answered once
    assert _low_requests(sim, "ptu") - before == calls


@pytest.mark.skipif(redis_mode.CLUSTER, reason="reads the clients of one server")
async def test_waiting_calls_hold_no_redis_connection(
    ingress: IngressThread, redis: aioredis.Redis
) -> None:
    calls = 200
    stream = keys.tenant_queue("idle", "team-a")
    queued = await redis.xlen(stream)
    limits = httpx2.Limits(max_connections=calls)
    async with httpx2.AsyncClient(base_url=ingress.url, timeout=60, limits=limits) as http:
        tasks = _post_many(http, calls, "idle", "wait=3")
        for _ in range(500):  # every call enqueued: all of them are waiting now
            await asyncio.sleep(0.01)
            if await redis.xlen(stream) - queued == calls:
                break
        clients = await redis.client_list()
        answers = await asyncio.gather(*tasks)
    # the worker's own slot-owner channels (throttle.slots) are its, not the waiters'
    owners = await redis.pubsub_channels(keys.slot_owner("*", "*"))
    patterns = [c for c in clients if int(c.get("psub", 0))]
    channels = [c for c in clients if int(c.get("sub", 0))]
    blocked = [c for c in clients if c.get("cmd") in ("blpop", "brpop", "xread")]
    assert len(patterns) == 1 and patterns[0]["cmd"] == "psubscribe"  # one per process
    assert len(channels) == len(owners)
    assert blocked == []
    assert [a.status_code for a in answers] == [202] * calls  # ran out: 202, nothing lost
    assert {a.headers["preference-applied"] for a in answers} == {"wait=3"}


async def test_a_lost_subscription_is_made_again_and_waiters_read_again(
    redis: aioredis.Redis,
) -> None:
    results = ResultStore(redis, reply_ttl_s=60)
    completions = Completions(redis, sleep=lambda _s: asyncio.sleep(0))
    req = QueuedRequest(
        id="req_lost", deployment="d", body={}, tenant="t", reply_key=keys.reply("req_lost"),
        enqueued_at=1.0, deadline=1e12,
    )  # fmt: skip
    await results.register(req)
    runner = asyncio.create_task(completions.run())
    try:
        waiter = asyncio.create_task(completions.wait(req.id, 30, results.get))
        for _ in range(500):  # registered, subscribed
            await asyncio.sleep(0.01)
            if completions.waiting and repr(completions).startswith("<Completions listening=True"):
                break
        if not redis_mode.CLUSTER:  # the subscription's connection dropped: re-made
            await redis.client_kill_filter(_type="pubsub")
        doc = ResultDocument.for_request(req, "completed", completed_at=2.0, attempts=1)
        await results.complete(doc, req.reply_key)  # heard, or read again on resubscribing
        state = await asyncio.wait_for(waiter, 10)
        assert state is not None and state.result == doc
        assert completions.waiting == 0
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


def test_the_readme_shapes_run_as_written(
    ingress: IngressThread, worker: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Low priority in the SDK's own shapes", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert "8080" not in code  # the reader's ingress is wherever PTU_INGRESS_URL says
    monkeypatch.setenv("PTU_INGRESS_URL", ingress.url)
    code = code.replace("gpt-4o-mini-ptu", "ptu")
    scope: dict[str, Any] = {"print": lambda *args: None}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["reply"].choices[0].message.content
    assert scope["response"].status == "completed" and scope["response"].output_text
