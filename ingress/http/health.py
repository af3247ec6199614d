"""`/readyz`: whether this ingress can accept work now, check by check.

Ready means: Redis takes writes (a short-lived probe key: a read-only replica or an
out-of-memory server refuses it), every deployment's queue answers, and every
provisioned deployment's utilisation estimate is readable. The checks run at once, each
with a time limit of `CHECK_TIMEOUT_S`, so the answer comes within about that whatever
Redis does; a failure is named by its type only (its text may carry internal addresses).
`/healthz` stays the liveness probe: it only says the process runs, and never asks Redis
(a Redis outage must not make the orchestrator restart every ingress).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping

import redis.asyncio as aioredis

from orchestrator.core import keys
from orchestrator.queues.base import Queue
from orchestrator.utilisation.estimate.store import EstimateStore

CHECK_TIMEOUT_S = 1.0
"""Each check's time limit: a probe that hangs means not ready (the manifests' readiness
probe waits 2 s)."""


async def _probe(work: Awaitable[object]) -> str:
    try:
        await asyncio.wait_for(work, timeout=CHECK_TIMEOUT_S)
    except Exception as exc:  # any failure means "not ready"; the type says which
        return f"unavailable ({type(exc).__name__})"
    return "ok"


async def readiness(
    redis: aioredis.Redis, queues: Mapping[str, Queue], estimate: EstimateStore | None
) -> dict[str, str]:
    """Check name -> "ok" or "unavailable (<error type>)"; the checks run concurrently."""
    checks: dict[str, Awaitable[object]] = {"redis": redis.set(keys.READY_PROBE, "1", px=5000)}
    for name, queue in queues.items():
        checks[f"queue:{name}"] = queue.depth()
    if estimate is not None:
        for name in estimate.deployments:
            checks[f"utilisation:{name}"] = estimate.read(name)
    states = await asyncio.gather(*(_probe(work) for work in checks.values()))
    return dict(zip(checks, states, strict=True))
