"""`/readyz`: whether this ingress can accept work now, check by check.

Ready means: Redis takes writes (a short-lived probe key: a read-only replica or an
out-of-memory server refuses it), every deployment's queue answers, and every
provisioned deployment's utilisation estimate is readable. Each check has a time
limit; a failure is named by its type only (its text may carry internal addresses).
`/healthz` stays the liveness probe: it only says the process runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping

import redis.asyncio as aioredis

from orchestrator.core import keys
from orchestrator.queues.base import Queue
from orchestrator.utilisation.estimate.store import EstimateStore

CHECK_TIMEOUT_S = 2.0
"""Each check's time limit: a probe that hangs means not ready."""


async def _probe(work: Awaitable[object]) -> str:
    try:
        await asyncio.wait_for(work, timeout=CHECK_TIMEOUT_S)
    except Exception as exc:  # any failure means "not ready"; the type says which
        return f"unavailable ({type(exc).__name__})"
    return "ok"


async def readiness(
    redis: aioredis.Redis, queues: Mapping[str, Queue], estimate: EstimateStore | None
) -> dict[str, str]:
    """Check name -> "ok" or "unavailable (<error type>)"."""
    checks = {"redis": await _probe(redis.set(keys.READY_PROBE, "1", px=5000))}
    for name, queue in queues.items():
        checks[f"queue:{name}"] = await _probe(queue.depth())
    if estimate is not None:
        for name in estimate.deployments:
            checks[f"utilisation:{name}"] = await _probe(estimate.read(name))
    return checks
