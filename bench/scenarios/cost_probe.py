"""What `ptu bench cost` reads and drives: Redis's `INFO` and the processes' /proc counters
in one `Reading`, closed-loop clients, the simulator's count of low-priority calls."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx2
import redis

from bench.scenarios.cost_measures import (
    Reading,
    parse_commandstats,
    parse_fail_opens,
    parse_redis_cpu_s,
)
from bench.scenarios.waiting_probe import cpu_s

WARM_UP = 20
"""Requests of a closed loop before its clock starts, at least one per client."""


class Meter:
    """Reads the stack's Redis counters and the measured processes' CPU.

    One connection, opened before the first reading, so the harness adds nothing to what a
    phase is charged but the `INFO` of the reading before it (`OWN_COMMANDS`).
    """

    def __init__(self, redis_url: str) -> None:
        self._client = redis.Redis.from_url(redis_url, decode_responses=True)
        # the raw text, parsed by `cost_measures` rather than redis-py's INFO parser
        self._client.set_response_callback("INFO", lambda response, **_: response)
        self._info()  # connect now: the connection's handshake runs before any phase

    def __repr__(self) -> str:
        return f"<Meter {self._client!r}>"

    def _info(self) -> str:
        text: str = self._client.execute_command("INFO", "commandstats", "cpu")  # type: ignore[no-untyped-call]
        return text

    def read(self, pids: Mapping[str, int]) -> Reading:
        """Counters now: Redis calls per command and CPU, each process's CPU seconds."""
        text = self._info()
        return Reading(
            at=time.perf_counter(),
            commands=parse_commandstats(text),
            redis_cpu_s=parse_redis_cpu_s(text),
            process_cpu_s={name: cpu_s(pid) for name, pid in pids.items()},
        )

    def close(self) -> None:
        """Close the connection."""
        self._client.close()


@dataclass(frozen=True, slots=True)
class Load:
    """What a closed loop got: answers by outcome and the seconds it ran."""

    concurrency: int
    ok: int
    errors: int
    elapsed_s: float
    start: Reading | None = None
    """The reading taken as the clock started."""

    @property
    def per_s(self) -> float | None:
        """Successful requests per second."""
        return round(self.ok / self.elapsed_s, 1) if self.elapsed_s > 0 else None


async def closed_loop(
    url: str,
    headers: Mapping[str, str],
    body: Mapping[str, Any],
    concurrency: int,
    duration_s: float,
    read: Callable[[], Reading] | None = None,
) -> Load:
    """`concurrency` clients, each sending its next request when the last is answered, for
    `duration_s` (the requests then in flight finish). Every connection is opened and used
    (`WARM_UP` requests at least) before the clock starts, with a reading (`read()`) if given."""
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    ok = errors = 0

    async def one(client: httpx2.AsyncClient) -> bool:
        try:
            response = await client.post(url, json=dict(body), headers=dict(headers))
        except httpx2.HTTPError:
            return False
        return response.status_code == 200

    async with httpx2.AsyncClient(timeout=30.0, limits=limits) as client:
        # every connection opened, first-call paths (script loads, pools) warmed
        await asyncio.gather(*(one(client) for _ in range(max(concurrency, WARM_UP))))
        start = read() if read is not None else None
        started = time.perf_counter()
        deadline = started + duration_s

        async def lane() -> None:
            nonlocal ok, errors
            while time.perf_counter() < deadline:
                if await one(client):
                    ok += 1
                else:
                    errors += 1

        await asyncio.gather(*(lane() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return Load(concurrency, ok, errors, elapsed, start)


async def fail_opens(ingress_url: str) -> int:
    """Redis calls the ingress has gone on without since it started (its /metrics)."""
    async with httpx2.AsyncClient(timeout=5.0) as client:
        return parse_fail_opens((await client.get(f"{ingress_url}/metrics")).text)


async def low_calls(client: httpx2.AsyncClient, sim_url: str, deployment: str) -> int:
    """Low-priority calls the simulator has answered or refused since its reset."""
    state = (await client.get(f"{sim_url}/sim/state")).json()
    by_priority = state["deployments"][deployment]["by_priority"]
    return int(by_priority.get("low", {}).get("requests", 0))


async def wait_for_calls(
    sim_url: str, deployment: str, calls: int, timeout_s: float
) -> tuple[int, float]:
    """Poll the simulator (not Redis, which is being measured) every 0.05 s until it has
    seen `calls` low-priority calls or `timeout_s` passed: (calls seen, when)."""
    deadline = time.perf_counter() + timeout_s
    async with httpx2.AsyncClient(timeout=5.0) as client:
        while True:
            seen = await low_calls(client, sim_url, deployment)
            now = time.perf_counter()
            if seen >= calls or now >= deadline:
                return seen, now
            await asyncio.sleep(0.05)
