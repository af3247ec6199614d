"""`ptu status` and the worker's /metrics against a running worker and a real Redis."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid

import httpx2
import redis.asyncio as aioredis

from orchestrator.cli.status import collect
from orchestrator.cli.status_view import queued
from orchestrator.core import keys
from orchestrator.core.results import ResultStore
from orchestrator.core.schemas import QueuedRequest
from orchestrator.core.settings import DeploymentConfig, Settings
from orchestrator.queues.redis_streams import RedisStreamsQueue
from orchestrator.utilisation.static import StaticSource
from orchestrator.worker.loop import WorkerTiming
from orchestrator.worker.main import build_worker
from orchestrator.worker.metrics import WorkerMetrics
from tests import redis_mode
from tests.unit.worker_fakes import FakeUpstream

DEP = DeploymentConfig(name="dep", model="gpt-4o-mini", ptus=15)
DEPLOYMENTS_JSON = '[{"name": "dep", "model": "gpt-4o-mini", "ptus": 15}]'


async def enqueue(redis: aioredis.Redis, n: int) -> list[str]:
    queue, results = RedisStreamsQueue(redis, DEP.name, "producer"), ResultStore(redis, 600)
    ids = []
    for _ in range(n):
        rid = uuid.uuid4().hex
        msg = QueuedRequest(
            id=rid,
            deployment=DEP.name,
            body={"messages": [{"role": "user", "content": "hi"}]},
            reply_key=keys.reply(rid),
            enqueued_at=time.time(),
            deadline=time.time() + 600,
        )
        await results.register(msg)
        await queue.put(msg)
        ids.append(rid)
    return ids


async def eventually(check: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


async def test_status_and_metrics_show_a_running_worker(
    redis_url: str, redis: aioredis.Redis
) -> None:
    settings = Settings(
        redis_url=redis_url, redis_cluster=redis_mode.CLUSTER, deployments=[DEP], max_concurrency=10
    )
    source = StaticSource({DEP.name: 0.55})  # limit floor(10 - 9 * 0.5) = 5
    gate = asyncio.Event()
    upstream = FakeUpstream(gate=gate)
    metrics = WorkerMetrics()
    port = metrics.serve(0, "127.0.0.1")
    timing = WorkerTiming(receive_timeout_s=0.2, heartbeat_s=0.1, drain_timeout_s=2)
    built = build_worker(
        settings, redis, [DEP], "w-status", upstream=upstream, metrics=metrics,
        source=source, timing=timing,
    )  # fmt: skip
    ids = await enqueue(redis, 12)
    stop = asyncio.Event()
    run = asyncio.create_task(built.worker.run(stop))
    try:

        async def five_in_flight() -> bool:
            rows = await collect(settings, redis, source, time.time())
            return upstream.active == 5 and rows[0].workers.in_flight == 5

        await eventually(five_in_flight)
        (row,) = await collect(settings, redis, source, time.time())
        assert (row.deployment, row.limit, row.max_concurrency) == ("dep", 5, 10)
        assert row.utilisation == 0.55 and not row.stale
        assert row.global_in_flight == 5 and row.queue_depth == 12
        assert row.class_depth == {"low": 12, "batch": 0}
        assert row.workers.workers == 1
        # five requests calling, no lane waiting (the limit is used up), seven still queued
        assert (row.workers.requests, row.workers.waiting) == (5, 0)
        assert queued(row.queue_depth, row.workers.requests) == 7

        async with httpx2.AsyncClient() as http:
            text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
        assert 'ptu_worker_concurrency_limit{deployment="dep"} 5.0' in text
        assert 'ptu_worker_global_in_flight{deployment="dep"} 5.0' in text
        assert "ptu_worker_queue_lag_seconds_count" in text
        assert 'ptu_worker_queue_class_depth{class="low",deployment="dep"} 12.0' in text

        gate.set()

        async def all_done() -> bool:
            rows = await collect(settings, redis, source, time.time())
            return rows[0].workers.completed == 12 and rows[0].queue_depth == 0

        await eventually(all_done)

        # an idle lane keeps the one slot it leased before waiting for the next message:
        # shown as waiting, not as a request in flight
        async def idle() -> bool:
            w = (await collect(settings, redis, source, time.time()))[0].workers
            return (w.requests, w.waiting) == (0, 1)

        await eventually(idle)
        assert (await collect(settings, redis, source, time.time()))[0].global_in_flight <= 1
    finally:
        gate.set()
        stop.set()
        await run
        await built.close()
        metrics.close()
    assert len(ids) == 12
    final = (await collect(settings, redis, source, time.time()))[0]
    assert final.workers.workers == 0 and final.global_in_flight == 0  # released at exit


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PTU_")}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_status_once_prints_a_snapshot(redis_url: str) -> None:
    env = {**redis_mode.env(redis_url), "PTU_DEPLOYMENTS": DEPLOYMENTS_JSON}
    out = _cli(["status", "--once"], env)
    assert out.returncode == 0, out.stderr
    line = next(line for line in out.stdout.splitlines() if line.startswith("dep "))
    assert "(stale)" in line and "0/10" in line  # no estimate feeder is running: fail closed
    assert max(len(x.rstrip()) for x in out.stdout.splitlines()) <= 100
    wide = _cli(["status", "--once", "--wide"], env)
    assert wide.returncode == 0, wide.stderr
    line = next(line for line in wide.stdout.splitlines() if "│ dep " in line)
    assert "(stale)" in line and "0/10" in line and "closed" in line
    as_json = _cli(["status", "--once", "--json"], env)
    assert as_json.returncode == 0, as_json.stderr
    (doc,) = [json.loads(x) for x in as_json.stdout.splitlines()]  # one document, one line
    (row,) = doc["deployments"]
    assert (row["deployment"], row["stale"], row["limit"], row["max_concurrency"]) == (
        "dep", True, 0, 10,
    )  # fmt: skip
    assert row["class_depth"] == {"low": 0, "batch": 0} and row["queue_depth"] == 0


def test_worker_cli_rejects_bad_configuration_with_one_line(redis_url: str) -> None:
    env = {**redis_mode.env(redis_url), "PTU_DEPLOYMENTS": DEPLOYMENTS_JSON}
    unknown = _cli(["worker", "--deployment", "nope"], env)
    assert unknown.returncode == 2
    assert "PTU_DEPLOYMENTS: no deployment or pool named 'nope'" in unknown.stderr
    no_endpoint = _cli(["worker"], env)
    assert no_endpoint.returncode == 2
    assert "PTU_AZURE_OPENAI_ENDPOINT: required by the worker" in no_endpoint.stderr
    nothing = _cli(["worker"], redis_mode.env(redis_url))
    assert nothing.returncode == 2 and "PTU_DEPLOYMENTS" in nothing.stderr
