"""Redis dies under load: with AOF nothing is lost and nothing is doubled; without, it is loud.

A real ingress (thread), a real worker (in-process, real simulator over loopback) and
a real server of our own that the test kills mid-run and starts again on the same
port. No other process is restarted: the clients' retry and the queue's release and
takeover must carry every accepted request to exactly one result. Bounded: 300
requests, a minute or two at most.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from devstack.embedded_redis import EmbeddedRedis
from ingress.server import IngressThread
from orchestrator.cli.status_view import loss_line
from orchestrator.core import incarnation, keys, redis_client
from orchestrator.core.settings import DeploymentConfig, Settings
from orchestrator.utilisation.static import StaticSource
from orchestrator.worker.loop import WorkerTiming
from orchestrator.worker.main import build_worker
from simulator.config import SimConfig
from simulator.server import SimulatorThread
from tests import redis_mode

pytestmark = pytest.mark.skipif(redis_mode.CLUSTER, reason="kills its own single server")

DEP = "ptu"
BODY = {"model": DEP, "messages": [{"role": "user", "content": "one line"}], "max_tokens": 10}
REQUESTS = 300


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    config = SimConfig.from_specs([f"{DEP}=gpt-4o-mini:100"], tbt_ms=0.0, ttft_ms=5.0)
    with SimulatorThread(config) as server:
        yield server


def settings_for(server: EmbeddedRedis, sim: SimulatorThread) -> Settings:
    return Settings(
        redis_url=server.url,
        deployments=[DeploymentConfig(name=DEP, model="gpt-4o-mini", ptus=100)],
        azure_openai_endpoint=sim.url,
        azure_openai_api_key=SecretStr("k"),
        max_concurrency=8,
        backoff_base_s=0.05,
        backoff_max_s=0.5,
        queue_liveness_s=2.0,
        slot_lease_s=3.0,
    )


async def post_all(http: httpx2.AsyncClient, n: int) -> list[str]:
    """POST n low-priority requests, 16 at a time; the ids answered 202 (503s are retried)."""
    accepted: list[str] = []
    sem = asyncio.Semaphore(16)

    async def one() -> None:
        async with sem:
            for _ in range(40):
                resp = await http.post(
                    "/v1/chat/completions", json=BODY, headers={"x-priority": "low"}
                )
                if resp.status_code == 202:
                    accepted.append(resp.json()["id"])
                    return
                assert resp.status_code == 503, resp.text  # only "retry later" is allowed
                await asyncio.sleep(0.25)
            raise AssertionError("never accepted")

    await asyncio.gather(*(one() for _ in range(n)))
    return accepted


async def replies(redis: aioredis.Redis, ids: list[str]) -> dict[str, int]:
    """Result documents on each id's reply key."""
    async with redis.pipeline(transaction=False) as pipe:
        for rid in ids:
            pipe.llen(keys.reply(rid))
        counts = await pipe.execute()
    return dict(zip(ids, (int(c) for c in counts), strict=True))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_redis_restart_with_aof_ends_every_202_in_exactly_one_result(
    sim: SimulatorThread, sig: signal.Signals
) -> None:
    with EmbeddedRedis(aof=True) as server:
        settings = settings_for(server, sim)
        redis = redis_client.connect(server.url)
        built = build_worker(
            settings, redis, settings.deployments, "w-chaos",
            source=StaticSource({DEP: 0.0}),
            timing=WorkerTiming(receive_timeout_s=0.2, heartbeat_s=0.2, renew_s=1.0),
        )  # fmt: skip
        stop = asyncio.Event()
        worker = asyncio.create_task(built.worker.run(stop))
        try:
            with IngressThread(settings) as ingress:
                async with httpx2.AsyncClient(base_url=ingress.url, timeout=60) as http:
                    posting = asyncio.create_task(post_all(http, REQUESTS))
                    for _ in range(2400):  # until a fifth is done, at most two minutes
                        if built.worker.lanes[0].dispatcher.counts["completed"] >= 60:
                            break
                        await asyncio.sleep(0.05)
                    await asyncio.to_thread(server.kill, sig)  # mid-run
                    await asyncio.sleep(1.0)
                    await asyncio.to_thread(server.restart)
                    accepted = await posting
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                counts = await replies(redis, accepted)
                if all(counts.values()):
                    break
                await asyncio.sleep(0.2)
            assert len(accepted) == REQUESTS
            assert sorted(set(counts.values())) == [1], {
                k: v for k, v in counts.items() if v != 1
            }  # every 202: one result, none twice
            assert built.worker.incarnation is not None and built.worker.incarnation.losses == 0
        finally:
            stop.set()
            await worker
            await built.close()
            await redis.aclose()


async def test_redis_wiped_is_reported_and_vanished_ids_answer_410(sim: SimulatorThread) -> None:
    with EmbeddedRedis(aof=False) as server:
        settings = settings_for(server, sim)
        redis = redis_client.connect(server.url)
        try:
            with IngressThread(settings) as ingress:
                async with httpx2.AsyncClient(base_url=ingress.url, timeout=60) as http:
                    for _ in range(100):  # the ingress has read the marker once
                        if await incarnation.read(redis) is not None:
                            break
                        await asyncio.sleep(0.05)
                    ids = await post_all(http, 5)
                    assert (await http.get(f"/v1/requests/{ids[0]}")).status_code == 202
                    await asyncio.to_thread(server.kill, signal.SIGKILL)
                    await asyncio.to_thread(server.restart)  # comes back empty
                    marker: Any = None
                    for _ in range(200):
                        marker = await incarnation.read(redis)
                        if marker is not None and marker.lost_from is not None:
                            break
                        await asyncio.sleep(0.05)
                    lost = await http.get(f"/v1/requests/{ids[0]}")
                    unknown = await http.get("/v1/requests/req_not_an_id")
                    metrics = (await http.get("/metrics")).text
                    for _ in range(100):  # ready again once a feeder has rewritten the estimate
                        ready = await http.get("/readyz")
                        if ready.status_code == 200:
                            break
                        await asyncio.sleep(0.1)
            assert marker is not None and marker.lost_from is not None
            line = loss_line(marker)
            assert line is not None and "Redis lost its data" in line
            assert lost.status_code == 410 and lost.json()["error"]["code"] == "request_lost"
            assert unknown.status_code == 404
            assert "ptu_redis_data_lost_total 1.0" in metrics
            assert ready.status_code == 200 and ready.json()["checks"]["redis"] == "ok"
        finally:
            await redis.aclose()
