"""Accepted requests Redis lost part of: answered 410 `request_lost`, logged and counted,
never 404 and never `queued` for ever. A real ingress on the suite's Redis (one server or
the cluster), a deployment no worker serves, and losses made by deleting what a failover
to a lagging replica would have lost: the record, or the queue entry."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator

import httpx2
import pytest
import redis.asyncio as aioredis

from ingress.server import IngressThread
from orchestrator.core import incarnation, keys
from orchestrator.core.losses import Losses, is_lost
from orchestrator.core.redis_replies import text
from orchestrator.core.replication import Replication
from orchestrator.core.results import ResultStore
from orchestrator.core.schemas import QueuedRequest, ResultDocument
from orchestrator.queues.redis_streams.reconcile import Reconciler
from tests.support import stacks

DEPLOYMENTS = [{"name": "idle", "model": "gpt-4o-mini", "ptus": 15}]  # no worker serves it
KEYS = {"key-a": "team-a", "key-b": "team-b"}
TENANTS = [{"name": "team-a"}, {"name": "team-b"}]
CHAT = {"model": "idle", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
LOW = {"x-priority": "low", "api-key": "key-a"}


@pytest.fixture(scope="module", autouse=True)
def _fresh_redis(redis_url: str) -> None:
    stacks.flush(redis_url)


@pytest.fixture(scope="module")
def ingress(redis_url: str) -> Iterator[IngressThread]:
    settings = {
        "deployments": DEPLOYMENTS, "tenants": TENANTS, "api_keys": KEYS,
        "reconcile_interval_s": 0,  # the test walks the records itself
    }  # fmt: skip
    with (
        stacks.simulator(["idle=gpt-4o-mini:15"], "rk") as sim,
        stacks.ingress_on(redis_url, sim, "rk", **settings) as server,
    ):
        yield server


@pytest.fixture
async def http(ingress: IngressThread, redis: aioredis.Redis) -> AsyncIterator[httpx2.AsyncClient]:
    """A client of the ingress once it signs its ids with the marker of the database the
    `redis` fixture just flushed (the ingress sees the new marker within a second)."""
    async with httpx2.AsyncClient(base_url=ingress.url, timeout=60) as client:
        for _ in range(400):
            marker = await incarnation.read(redis)
            posted = await client.post("/v1/chat/completions", json=CHAT, headers=LOW)
            assert posted.status_code == 202, posted.text
            if marker is not None and posted.json()["id"].startswith("req_" + marker.id):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the ingress never signed ids with the current marker")
        yield client


async def accept(http: httpx2.AsyncClient) -> str:
    resp = await http.post("/v1/chat/completions", json=CHAT, headers=LOW)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


def lost_count(text: str, found: str) -> float:
    match = re.search(rf'ptu_requests_lost_total\{{found="{found}"\}} (\S+)', text)
    return float(match.group(1)) if match else 0.0


async def test_a_request_whose_record_vanished_answers_410_once_and_for_all(
    http: httpx2.AsyncClient, redis: aioredis.Redis
) -> None:
    rid = await accept(http)
    assert (await http.get(f"/v1/requests/{rid}", headers=LOW)).status_code == 202
    before = lost_count((await http.get("/metrics")).text, "poll")
    await redis.delete(keys.request(rid))  # what a failover to a replica behind loses
    first = await http.get(f"/v1/requests/{rid}", headers=LOW)
    again = await http.get(f"/v1/requests/{rid}", headers=LOW)
    other = await http.get(f"/v1/requests/{rid}", headers={"api-key": "key-b"})
    forged = rid[:-1] + ("1" if rid[-1] == "0" else "0")  # the signature no longer holds
    made_up = await http.get(f"/v1/requests/{forged}", headers=LOW)
    metrics = (await http.get("/metrics")).text
    assert first.status_code == 410 and first.json()["error"]["code"] == "request_lost"
    assert again.status_code == 410  # sealed: the same answer every time
    assert other.status_code == 404  # another tenant learns nothing
    assert made_up.status_code == 404
    assert lost_count(metrics, "poll") == before + 1  # counted once
    stored = ResultDocument.model_validate_json(await redis.get(keys.result(rid)) or b"{}")
    assert is_lost(stored) and stored.tenant == "team-a"


async def test_a_request_whose_queue_entry_vanished_is_found_by_the_reconciler(
    http: httpx2.AsyncClient, redis: aioredis.Redis
) -> None:
    kept, gone = await accept(http), await accept(http)
    stream = keys.tenant_queue("idle", "team-a")
    entry = text(await redis.get(keys.queue_put(stream, gone)))
    assert await redis.xdel(stream, entry) == 1  # lost with its master
    await redis.delete(keys.queue_put(stream, gone))
    seen: list[str] = []
    reconciler = Reconciler(
        redis, Losses(ResultStore(redis, 600), on_lost=seen.append), interval_s=1.0,
        grace_s=0.0, clock=lambda: time.time() + 1,
    )  # fmt: skip
    assert await reconciler.pass_once() >= 1
    assert await reconciler.pass_once() == 0  # sealed once
    lost = await http.get(f"/v1/requests/{gone}", headers=LOW)
    queued = await http.get(f"/v1/requests/{kept}", headers=LOW)
    assert lost.status_code == 410 and lost.json()["error"]["code"] == "request_lost"
    assert queued.status_code == 202  # its entry is there: left alone
    assert "reconciler" in seen
    reply = await redis.lrange(keys.reply(gone), 0, -1)
    assert len(reply) == 1 and is_lost(ResultDocument.model_validate_json(reply[0]))


async def test_only_one_process_walks_at_a_time(redis: aioredis.Redis) -> None:
    losses = Losses(ResultStore(redis, 600))
    first = Reconciler(redis, losses, interval_s=5.0, owner="a")
    second = Reconciler(redis, losses, interval_s=5.0, owner="b")
    await redis.delete(keys.RECONCILER)
    await first.pass_once()
    assert (await redis.get(keys.RECONCILER)) == b"a"
    await second.pass_once()  # the lease is a's: b does nothing
    assert (await redis.get(keys.RECONCILER)) == b"a"


async def test_a_result_written_after_a_wipe_is_its_tenants(redis: aioredis.Redis) -> None:
    """Redis without persistence restarted while calls were in flight: their results land
    on an empty data set and the poll answers them, not 404 (the record names no tenant)."""
    results = ResultStore(redis, 600)
    now = time.time()
    req = QueuedRequest(
        id="req_inflight", deployment="idle", body={}, tenant="team-a",
        reply_key=keys.reply("req_inflight"), enqueued_at=now, deadline=now + 600,
    )  # fmt: skip
    await results.register(req)
    await redis.delete(keys.request(req.id))  # the wipe
    doc = ResultDocument.for_request(req, "completed", completed_at=now, attempts=1)
    assert await results.complete(doc, req.reply_key)
    state = await results.get(req.id)
    assert state is not None and state.tenant == "team-a" and state.result is not None


async def test_a_background_response_lost_with_its_record_answers_410(
    http: httpx2.AsyncClient, redis: aioredis.Redis
) -> None:
    body = {"model": "idle", "input": "hi", "background": True}
    created = await http.post("/v1/responses", json=body, headers={"api-key": "key-a"})
    assert created.status_code == 200, created.text
    rid = created.json()["id"]
    await redis.delete(keys.request(rid), keys.background_response(rid))  # lost together
    lost = await http.get(f"/v1/responses/{rid}", headers={"api-key": "key-a"})
    other = await http.get(f"/v1/responses/{rid}", headers={"api-key": "key-b"})
    assert lost.status_code == 410 and lost.json()["error"]["code"] == "request_lost"
    assert other.status_code == 404


async def test_a_server_without_replicas_is_never_waited_for(redis: aioredis.Redis) -> None:
    """The suite's Redis has no replica: `confirm` does not WAIT (a minute-long timeout
    would show), so a local stack pays nothing for the default of one replica."""
    replication = Replication(redis, 1, 60_000)
    await redis.set("ptu:no-replica", "1")
    async with asyncio.timeout(10):
        assert await replication.confirm("ptu:no-replica")
