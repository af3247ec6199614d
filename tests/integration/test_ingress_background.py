"""Background responses through the ingress with the unchanged openai SDK (OpenAI and Azure).

`responses.create(background=True)` → `retrieve` until completed → the output, by a real
`ptu worker` against the simulator; `cancel` of a queued one (a deployment no worker
serves, so it stays queued), `delete`, tenant scoping and the refusals.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Iterator

import httpx2
import openai
import pytest
from openai.types.responses import Response

from ingress.server import IngressThread
from orchestrator.core import keys
from simulator.server import SimulatorThread
from tests import redis_mode
from tests.integration.test_ingress_batch import worker_process
from tests.support import stacks

AZURE_API_VERSION = "2025-04-01-preview"
DEPLOYMENTS = [
    {"name": "ptu", "model": "gpt-4o-mini", "ptus": 15},
    {"name": "idle", "model": "gpt-4o-mini", "ptus": 15},  # no worker serves it
]
KEYS = {"key-a": "team-a", "key-b": "team-b"}
TENANTS = [{"name": "team-a"}, {"name": "team-b"}]


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


@pytest.fixture(scope="module")
def worker(redis_url: str, sim: SimulatorThread) -> Iterator[subprocess.Popen[bytes]]:
    with worker_process(redis_url, sim.url, DEPLOYMENTS, "ptu", api_key="rk") as proc:
        yield proc


def _clients(ingress: IngressThread, key: str = "key-a") -> list[openai.AsyncOpenAI]:
    return [
        openai.AsyncOpenAI(base_url=ingress.url + "/v1", api_key=key, max_retries=0),
        openai.AsyncOpenAI(base_url=ingress.url + "/openai/v1", api_key=key, max_retries=0),
        openai.AsyncAzureOpenAI(
            azure_endpoint=ingress.url, api_key=key, api_version=AZURE_API_VERSION,
            max_retries=0,
        ),
    ]  # fmt: skip


@pytest.fixture
async def clients(ingress: IngressThread) -> AsyncIterator[list[openai.AsyncOpenAI]]:
    made = _clients(ingress)
    yield made
    for client in made:
        await client.close()


async def _until_done(client: openai.AsyncOpenAI, response_id: str) -> tuple[Response, set[str]]:
    seen: set[str] = set()
    for _ in range(1000):
        response = await client.responses.retrieve(response_id)
        assert response.status is not None
        seen.add(response.status)
        if response.status not in ("queued", "in_progress"):
            return response, seen
        await asyncio.sleep(0.02)
    raise AssertionError(f"{response_id} did not finish: {seen}")


async def test_background_response_is_queued_then_retrieved_completed(
    clients: list[openai.AsyncOpenAI], worker: subprocess.Popen[bytes], sim: SimulatorThread
) -> None:
    before = httpx2.get(sim.url + "/sim/state").json()["deployments"]["ptu"]["by_priority"]
    for client in clients:
        created = await client.responses.create(
            model="ptu", input="Summarise the report.", instructions="Be brief.",
            max_output_tokens=30, background=True,
        )  # fmt: skip
        assert created.object == "response" and created.background is True
        assert created.status == "queued" and created.model == "ptu"
        assert created.instructions == "Be brief." and created.max_output_tokens == 30
        assert created.output == [] and created.created_at > 0
        done, seen = await _until_done(client, created.id)
        assert seen <= {"queued", "in_progress", "completed"}
        assert done.status == "completed" and done.id == created.id and done.background
        assert done.output_text
        assert done.usage is not None and 0 < done.usage.output_tokens <= 30
        # still the same answer when read again, and a cancel now changes nothing
        assert (await client.responses.cancel(created.id)).status == "completed"
        # the request's result is where every queued result is
        raw = await clients[0].get(f"/requests/{created.id}", cast_to=httpx2.Response)
        assert raw.status_code == 200 and raw.json()["status"] == "completed"
    after = httpx2.get(sim.url + "/sim/state").json()["deployments"]["ptu"]["by_priority"]
    # called at low priority, without background (the deployment answers it at once)
    assert after["low"]["requests"] - before.get("low", {}).get("requests", 0) == len(clients)


async def test_a_queued_background_response_is_cancelled_and_never_called(
    clients: list[openai.AsyncOpenAI], redis_url: str
) -> None:
    for client in clients:
        created = await client.responses.create(model="idle", input="later", background=True)
        assert (await client.responses.retrieve(created.id)).status == "queued"
        cancelled = await client.responses.cancel(created.id)
        assert cancelled.status == "cancelled" and cancelled.id == created.id
        assert (await client.responses.retrieve(created.id)).status == "cancelled"
        assert (await client.responses.cancel(created.id)).status == "cancelled"  # idempotent
    # a worker that takes the cancelled messages now settles them without a call
    with redis_mode.connect_sync(redis_url) as r:
        assert r.xlen(keys.tenant_queue("idle", "team-a")) >= len(clients)


async def test_the_worker_skips_a_cancelled_request(
    clients: list[openai.AsyncOpenAI], redis_url: str, sim: SimulatorThread
) -> None:
    created = await clients[0].responses.create(model="idle", input="never", background=True)
    await clients[0].responses.cancel(created.id)
    before = httpx2.get(sim.url + "/sim/state").json()["deployments"]["idle"]["requests"]
    with worker_process(redis_url, sim.url, DEPLOYMENTS, "idle", api_key="rk"):
        for _ in range(500):
            with redis_mode.connect_sync(redis_url) as r:
                groups = r.xinfo_groups(keys.tenant_queue("idle", "team-a"))
            if groups and all(g["pending"] == 0 and g["lag"] == 0 for g in groups):
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the worker did not take the cancelled requests")
    after = httpx2.get(sim.url + "/sim/state").json()["deployments"]["idle"]["requests"]
    assert after == before  # no call for any cancelled response
    assert (await clients[0].responses.retrieve(created.id)).status == "cancelled"


async def test_delete_removes_it_and_other_tenants_never_see_it(
    ingress: IngressThread, clients: list[openai.AsyncOpenAI]
) -> None:
    created = await clients[0].responses.create(model="idle", input="x", background=True)
    other = openai.AsyncOpenAI(base_url=ingress.url + "/v1", api_key="key-b", max_retries=0)
    try:
        with pytest.raises(openai.NotFoundError):
            await other.responses.retrieve(created.id)
        with pytest.raises(openai.NotFoundError):
            await other.responses.cancel(created.id)
        with pytest.raises(openai.NotFoundError):
            await other.responses.delete(created.id)
    finally:
        await other.close()
    await clients[2].responses.delete(created.id)  # AzureOpenAI, as the others
    with pytest.raises(openai.NotFoundError) as info:
        await clients[0].responses.retrieve(created.id)
    assert info.value.body["code"] == "response_not_found"  # type: ignore[index]
    async with httpx2.AsyncClient(base_url=ingress.url, timeout=30) as http:
        doc = (await http.get(f"/v1/requests/{created.id}", headers=_auth("key-a"))).json()
    assert doc["status"] == "failed" and doc["error"]["code"] == "deleted"  # no answer kept


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"stream": True}, "stream"), ({"store": False}, "store")],
)
async def test_background_refusals_answer_in_the_envelope(
    ingress: IngressThread, extra: dict[str, object], param: str
) -> None:
    body = {"model": "ptu", "input": "hi", "background": True, **extra}
    async with httpx2.AsyncClient(base_url=ingress.url, timeout=30) as http:
        resp = await http.post("/v1/responses", json=body, headers=_auth("key-a"))
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and "background" in error["message"]


async def test_a_plain_request_is_not_a_background_response(
    ingress: IngressThread, clients: list[openai.AsyncOpenAI]
) -> None:
    raw = await clients[0].responses.with_raw_response.create(
        model="idle", input="q", extra_headers={"x-priority": "low"}
    )
    queued_id = raw.http_response.json()["id"]
    with pytest.raises(openai.NotFoundError):
        await clients[0].responses.retrieve(queued_id)
