"""Helpers of the worker end-to-end tests: queue requests or a batch input, count results,
kill processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import Callable

import redis
import redis.asyncio as aioredis

from devstack.stack import Stack
from orchestrator.core import keys
from orchestrator.core.results import ResultStore
from orchestrator.core.schemas import QueuedRequest
from orchestrator.queues.redis_streams import RedisStreamsQueue

MESSAGES = [{"role": "user", "content": "Tag this support ticket with a category."}]


async def _enqueue(redis_url: str, deployment: str, n: int, max_tokens: int) -> list[str]:
    client = aioredis.Redis.from_url(redis_url)
    queue, results = RedisStreamsQueue(client, deployment, "test"), ResultStore(client, 3600)
    now, ids = time.time(), []
    for i in range(n):
        rid = f"req-{i:05d}-{uuid.uuid4().hex[:8]}"
        message = QueuedRequest(
            id=rid,
            deployment=deployment,
            body={"messages": MESSAGES, "max_tokens": max_tokens},
            reply_key=keys.reply(rid),
            enqueued_at=now,
            deadline=now + 3600,
        )
        await results.register(message)
        await queue.put(message)
        ids.append(rid)
    await client.aclose()
    return ids


def enqueue(redis_url: str, deployment: str, n: int, max_tokens: int = 10) -> list[str]:
    """Register and queue `n` low-priority requests; their ids."""
    return asyncio.run(_enqueue(redis_url, deployment, n, max_tokens))


def results_written(client: redis.Redis, ids: list[str]) -> int:
    """How many of `ids` have a result."""
    pipe = client.pipeline(transaction=False)
    for rid in ids:
        pipe.exists(keys.result(rid))
    return sum(int(x) for x in pipe.execute())


def reply_counts(client: redis.Redis, ids: list[str]) -> list[int]:
    """Length of each id's reply list (exactly-once means all 1)."""
    pipe = client.pipeline(transaction=False)
    for rid in ids:
        pipe.llen(keys.reply(rid))
    return [int(x) for x in pipe.execute()]


def wait_for(
    condition: Callable[[], bool], stack: Stack, timeout_s: float, interval_s: float = 0.05
) -> None:
    """Poll `condition` while checking the stack's processes are alive."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        stack.check_alive()
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s")


def sigkill(stack: Stack, name: str) -> None:
    """SIGKILL a child's process group (no drain, no cleanup) and forget it."""
    child = stack.children[name]
    os.killpg(child.proc.pid, signal.SIGKILL)
    child.proc.wait(timeout=10)
    stack.stop(name)


def batch_input(deployment: str, n: int, max_tokens: int) -> bytes:
    """A Batch API input file of `n` chat lines `c-0` … for `deployment`."""
    return b"".join(
        json.dumps({
            "custom_id": f"c-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": deployment, "max_tokens": max_tokens,
                     "messages": [{"role": "user", "content": f"question {i}"}]},
        }).encode() + b"\n"
        for i in range(n)
    )  # fmt: skip
