"""EventHubsEstimator through the real EventHubConsumerClient.receive_batch path.

The partition log is in memory behind the SDK's network seams (`eventhubs_fakes`);
the estimate, checkpoints and partition ownership use the real Redis server. The
estimate runs on a frozen clock so its bucket does not drain during a test and
every level is exact.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from orchestrator.core.errors import UtilisationUnavailable
from orchestrator.core.schemas import TokenEvent
from orchestrator.core.settings import DeploymentConfig
from orchestrator.estimator.eventhubs import EventHubsEstimator
from orchestrator.queues.eventhubs.checkpoint_redis import RedisCheckpointStore
from orchestrator.utilisation.estimate.store import EstimateStore
from tests import redis_mode
from tests.integration.eventhubs_fakes import CG, NS, FakeConsumerClient, FakeHub

TOKEN_HUB = "ptu-token-events"
T0 = 1_800_000_000.0
# 10 PTU x 600 TPM = 100 tokens/s; window 100 s -> 100 % = 10,000 tokens; output weight 2
DEPLOYMENT = DeploymentConfig(
    name="d", model="custom", ptus=10, input_tpm_per_ptu=600, output_weight=2
)


def ours(rid: str, phase: str, prompt: int, **kw: int) -> str:
    event = TokenEvent(
        request_id=rid, deployment="d", phase=phase, timestamp=T0, prompt_tokens=prompt, **kw
    )  # type: ignore[arg-type]
    return event.model_dump_json()


def apim(rid: str, deployment: str, prompt: int, response: int) -> str:
    return json.dumps(
        {"id": rid, "timestamp": "2027-01-15T12:00:00.0000000Z", "deploymentName": deployment,
         "promptTokens": prompt, "responseTokens": response, "totalTokens": prompt + response}
    )  # fmt: skip


class CheckpointFailsOnce(RedisCheckpointStore):
    """The first checkpoint write of each partition fails (Redis blip after applying)."""

    def __init__(self, redis: aioredis.Redis) -> None:
        super().__init__(redis)
        self.failed: set[str] = set()

    async def update_checkpoint(self, checkpoint: dict[str, Any], **kwargs: Any) -> None:
        pid = checkpoint["partition_id"]
        if pid not in self.failed:
            self.failed.add(pid)
            raise RedisConnectionError("connection reset by peer")
        await super().update_checkpoint(checkpoint, **kwargs)


class CheckpointHangs(RedisCheckpointStore):
    """Checkpoint writes never finish: the process dies between applying and checkpointing."""

    def __init__(self, redis: aioredis.Redis) -> None:
        super().__init__(redis)
        self.reached: set[str] = set()

    async def update_checkpoint(self, checkpoint: dict[str, Any], **kwargs: Any) -> None:
        self.reached.add(checkpoint["partition_id"])
        await asyncio.Event().wait()


class Harness:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self.hub = FakeHub(partitions=2)
        self.checkpoint_store = RedisCheckpointStore(redis)
        self.now = T0
        self.store = EstimateStore(
            redis, [DEPLOYMENT], window_s=100.0, max_age_s=2.0,
            clock=lambda: self.now, time_source="clock",
        )  # fmt: skip
        self.running: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    def start(self, checkpoint_store: RedisCheckpointStore | None = None) -> EventHubsEstimator:
        client = FakeConsumerClient(
            self.hub, checkpoint_store or self.checkpoint_store, eventhub=TOKEN_HUB
        )
        est = EventHubsEstimator(client, self.store, max_wait_s=0.1)
        stop = asyncio.Event()
        self.running.append((stop, asyncio.create_task(est.run(stop))))
        return est

    async def stop_all(self) -> None:
        for stop, task in self.running:
            stop.set()
            await asyncio.wait_for(task, timeout=15)
        self.running.clear()

    async def checkpoints(self) -> dict[str, int]:
        listed = await self.checkpoint_store.list_checkpoints(NS, TOKEN_HUB, CG)
        return {c["partition_id"]: c["sequence_number"] for c in listed}

    async def checkpointed(self, expected: dict[str, int]) -> bool:
        return await self.checkpoints() == expected

    async def level(self) -> float:
        """The bucket's level (heartbeating first: freshness has its own test)."""
        await self.store.heartbeat()
        return (await self.store.read("d")).value

    def publish_mixed(self) -> int:
        """Ours and APIM's events on both partitions plus poison; 45 % once applied."""
        p0 = [
            ours("a", "admit", 1000, max_tokens=1000),  # 1,000 + 1,000 x 2 = 3,000
            "not json",
            ours("a", "complete", 1000, completion_tokens=500),  # reconciled: 2,000
        ]
        p1 = [
            apim("b", "d", 1000, 500),  # 1,000 + 500 x 2 = 2,000
            json.dumps({"id": "x", "deploymentName": "d", "promptTokens": -1}),
            apim("z", "not-tracked", 1000, 500),  # parsed and recorded, ignored by the store
            ours("c", "admit", 500),  # 500
        ]
        for body in p0:
            self.hub.append("0", body)
        for body in p1:
            self.hub.append("1", body)
        return len(p0) + len(p1)


@pytest.fixture
async def harness(redis: aioredis.Redis) -> AsyncIterator[Harness]:
    h = Harness(redis)
    yield h
    await h.stop_all()


async def until(condition: Callable[[], bool | Awaitable[bool]], timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def handled(*estimators: EventHubsEstimator) -> int:
    return sum(e.applied + e.skipped for e in estimators)


async def test_events_of_both_partitions_are_applied_once_and_checkpointed(
    harness: Harness,
) -> None:
    n = harness.publish_mixed()
    est = harness.start()
    await until(lambda: harness.checkpointed({"0": 2, "1": 3}))
    assert (est.applied, est.skipped) == (5, 2) and handled(est) == n
    assert await harness.level() == pytest.approx(0.45)
    assert "partitions=2 applied=5 skipped=2" in repr(est)


async def test_batch_redelivered_after_a_crash_before_its_checkpoint_counts_once(
    harness: Harness,
) -> None:
    n = harness.publish_mixed()
    hangs = CheckpointHangs(harness.redis)
    crashed = harness.start(hangs)
    await until(lambda: hangs.reached == {"0", "1"})  # both batches applied, no checkpoint
    assert handled(crashed) == n
    assert await harness.level() == pytest.approx(0.45)
    await harness.stop_all()
    assert await harness.checkpoints() == {}
    restarted = harness.start()
    await until(lambda: harness.checkpointed({"0": 2, "1": 3}))
    assert (restarted.applied, restarted.skipped) == (5, 2)  # the whole backlog again
    assert await harness.level() == pytest.approx(0.45)


async def test_failed_checkpoint_reopens_the_partition_and_counts_once(harness: Harness) -> None:
    n = harness.publish_mixed()
    est = harness.start(CheckpointFailsOnce(harness.redis))
    await until(lambda: harness.checkpointed({"0": 2, "1": 3}))
    assert handled(est) == 2 * n  # every batch came back once
    assert await harness.level() == pytest.approx(0.45)


async def test_restart_resumes_after_the_checkpoint(harness: Harness) -> None:
    n = harness.publish_mixed()
    first = harness.start()
    await until(lambda: harness.checkpointed({"0": 2, "1": 3}))
    assert handled(first) == n
    await harness.stop_all()
    harness.hub.append("0", ours("d", "admit", 1000))  # +1,000
    harness.hub.append("1", apim("e", "d", 250, 0))  # +250
    second = harness.start()
    await until(lambda: harness.checkpointed({"0": 3, "1": 4}))
    assert (second.applied, second.skipped) == (2, 0)
    assert await harness.level() == pytest.approx(0.575)


async def test_events_older_than_the_horizon_are_passed_unapplied(harness: Harness) -> None:
    harness.hub.append("0", ours("old", "admit", 5000), enqueued_at=time.time() - 600)
    harness.hub.append("0", ours("new", "admit", 1000))
    est = harness.start()
    await until(lambda: harness.checkpointed({"0": 1}))
    assert (est.applied, est.skipped) == (1, 1)
    assert await harness.level() == pytest.approx(0.1)


async def test_heartbeats_keep_readings_fresh_while_it_runs(harness: Harness) -> None:
    with pytest.raises(UtilisationUnavailable):
        await harness.store.read("d")  # no feeder yet
    harness.start()
    harness.now = T0 + 30

    async def fresh() -> bool:
        try:
            return (await harness.store.read("d")).age(harness.now) < 1.0
        except UtilisationUnavailable:
            return False

    for _ in range(200):
        if await fresh():
            break
        await asyncio.sleep(0.02)
    assert await fresh()  # idle partitions heartbeat every max_wait_s
    await harness.stop_all()
    harness.now = T0 + 60
    reading = await harness.store.read("d")
    assert reading.age(harness.now) >= 29  # nobody heartbeats: stale, the throttle pauses


async def test_cli_with_eventhubs_backend_and_no_namespace_is_a_config_error(
    redis_url: str,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PTU_")}
    env |= {
        **redis_mode.env(redis_url),
        "PTU_QUEUE_BACKEND": "eventhubs",
        "PTU_DEPLOYMENTS": json.dumps([DEPLOYMENT.model_dump(exclude_none=True)]),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchestrator", "estimator",
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 2
    assert "configuration error: PTU_EVENTHUB_NAMESPACE" in err.decode()
