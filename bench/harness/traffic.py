"""Drivers that send a planned workload and record what happened to every call."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx2
import structlog

from bench.harness.workload import PlannedCall

log = structlog.get_logger(__name__)

API_VERSION = "2024-10-21"
RESULT_WAIT_S = 10


@dataclass(frozen=True, slots=True)
class HpRecord:
    """One interactive call: when it started (s from run start), how long, and its status."""

    at: float
    latency_s: float
    status: int


@dataclass(slots=True)
class LpRecord:
    """One low-priority request and its outcome."""

    custom_id: str
    submitted_at: float
    request_id: str | None = None
    completed_at: float | None = None
    status: str = "pending"
    total_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Clock:
    """Run-relative time (seconds since t0) on the wall clock other processes share."""

    t0: float = field(default_factory=time.time)
    now: Callable[[], float] = time.time

    def offset(self, epoch: float | None = None) -> float:
        """Seconds since t0 of `epoch` (default: now)."""
        return (self.now() if epoch is None else epoch) - self.t0

    async def sleep_until(self, offset: float) -> None:
        """Sleep until `offset` seconds after t0."""
        delay = offset - self.offset()
        if delay > 0:
            await asyncio.sleep(delay)


def chat_url(base: str, deployment: str) -> str:
    """Azure-shape chat completions URL on `base` (ingress or simulator)."""
    return f"{base}/openai/deployments/{deployment}/chat/completions?api-version={API_VERSION}"


async def run_interactive(
    client: httpx2.AsyncClient,
    url: str,
    calls: Sequence[PlannedCall],
    clock: Clock,
    headers: dict[str, str],
    records: list[HpRecord],
) -> None:
    """Fire each call at its offset (open loop) and append one HpRecord per call."""

    async def one(call: PlannedCall) -> None:
        await clock.sleep_until(call.at_s)
        started = clock.now()
        try:
            response = await client.post(url, json=call.body, headers=headers)
            status = response.status_code
        except httpx2.HTTPError as exc:
            log.warning("hp_call_failed", error=str(exc), custom_id=call.custom_id)
            status = 599
        records.append(HpRecord(started - clock.t0, clock.now() - started, status))

    async with asyncio.TaskGroup() as tg:
        for call in calls:
            tg.create_task(one(call))


def _usage(doc: dict[str, Any]) -> tuple[int, int]:
    usage = doc.get("usage") or {}
    return int(usage.get("total_tokens", 0)), int(usage.get("completion_tokens", 0))


async def submit_batch(
    client: httpx2.AsyncClient,
    ingress_url: str,
    deployment: str,
    calls: Sequence[PlannedCall],
    clock: Clock,
    records: list[LpRecord],
    concurrency: int = 8,
) -> None:
    """Enqueue every call through the ingress (`x-priority: low`), recording its id."""
    url = chat_url(ingress_url, deployment)
    gate = asyncio.Semaphore(concurrency)

    async def one(call: PlannedCall) -> None:
        record = LpRecord(call.custom_id, clock.offset())
        records.append(record)
        async with gate:
            response = await client.post(url, json=call.body, headers={"x-priority": "low"})
        if response.status_code != 202:
            record.status = f"rejected:{response.status_code}"
            log.warning("lp_enqueue_refused", status=response.status_code, body=response.text[:200])
            return
        record.request_id = str(response.json()["id"])

    await clock.sleep_until(calls[0].at_s if calls else 0.0)
    async with asyncio.TaskGroup() as tg:
        for call in calls:
            tg.create_task(one(call))


async def _fetch(
    client: httpx2.AsyncClient, ingress_url: str, record: LpRecord, clock: Clock, wait_s: float
) -> bool:
    """One `GET /v1/requests/{id}?wait=`; fills `record` and returns True once it has a result."""
    try:
        response = await client.get(
            f"{ingress_url}/v1/requests/{record.request_id}", params={"wait": wait_s}
        )
    except httpx2.HTTPError as exc:
        log.debug("result_poll_failed", error=str(exc))
        await asyncio.sleep(0.2)  # no tight loop against a failing ingress
        return False
    if response.status_code != 200:
        if response.status_code != 202:  # 202 = still queued; anything else is a hiccup
            log.debug("result_poll_refused", status=response.status_code)
            await asyncio.sleep(0.2)
        return False
    doc = response.json()
    record.status = str(doc.get("status", "completed"))
    record.completed_at = clock.offset(float(doc.get("completed_at") or clock.now()))
    record.total_tokens, record.completion_tokens = _usage(doc)
    return True


async def collect_results(
    client: httpx2.AsyncClient,
    ingress_url: str,
    records: Sequence[LpRecord],
    clock: Clock,
    stop: asyncio.Event,
    waiters: int = 64,
) -> None:
    """Long-poll every record's result (until `stop`); `waiters` at a time, in submission order.

    The queue is first in, first out, so the oldest `waiters` requests are the ones about
    to complete: each waiter holds one request until its result arrives.
    """
    pending: asyncio.Queue[LpRecord] = asyncio.Queue()
    for record in records:
        if record.request_id is not None and record.completed_at is None:
            pending.put_nowait(record)

    async def waiter() -> None:
        while not pending.empty() and not stop.is_set():
            record = pending.get_nowait()
            done = False
            while not done and not stop.is_set():
                done = await _fetch(client, ingress_url, record, clock, RESULT_WAIT_S)

    await asyncio.gather(*(waiter() for _ in range(waiters)))


async def sweep_results(
    client: httpx2.AsyncClient, ingress_url: str, records: Sequence[LpRecord], clock: Clock
) -> None:
    """One last look (no waiting) at every record still without a result."""
    gate = asyncio.Semaphore(16)

    async def one(record: LpRecord) -> None:
        async with gate:
            await _fetch(client, ingress_url, record, clock, 0)

    todo = [r for r in records if r.request_id is not None and r.completed_at is None]
    await asyncio.gather(*(one(r) for r in todo))


async def run_direct_batch(
    calls: Sequence[PlannedCall],
    sim_url: str,
    api_key: str,
    deployment: str,
    concurrency: int,
    verify: ssl.SSLContext | bool,
    clock: Clock,
    records: list[LpRecord],
    stop: asyncio.Event,
) -> None:
    """What a team without the orchestrator does: a fixed pool calling the PTU deployment
    with the openai SDK's default retries; a call whose retries run out is tried again later."""
    from openai import (
        APIConnectionError,
        APIStatusError,
        AsyncAzureOpenAI,
        DefaultAsyncHttpxClient,
        RateLimitError,
    )

    sdk = AsyncAzureOpenAI(
        azure_endpoint=sim_url,
        api_key=api_key,
        api_version=API_VERSION,
        default_headers={"x-ptu-priority": "low"},
        http_client=DefaultAsyncHttpxClient(verify=verify),
    )
    await clock.sleep_until(calls[0].at_s if calls else 0.0)
    todo: asyncio.Queue[PlannedCall] = asyncio.Queue()
    by_id: dict[str, LpRecord] = {}
    for call in calls:
        todo.put_nowait(call)
        by_id[call.custom_id] = LpRecord(call.custom_id, clock.offset())
        records.append(by_id[call.custom_id])

    async def lane() -> None:
        while not stop.is_set():
            try:
                call = todo.get_nowait()
            except asyncio.QueueEmpty:
                return
            record = by_id[call.custom_id]
            try:
                completion = await sdk.chat.completions.create(**call.body)
            except (RateLimitError, APIConnectionError):
                todo.put_nowait(call)  # the SDK gave up after its retries; the job tries again
                continue
            except APIStatusError as exc:
                record.status = f"failed:{exc.status_code}"
                record.completed_at = clock.offset()
                continue
            record.status = "completed"
            record.completed_at = clock.offset()
            if completion.usage is not None:
                record.total_tokens = completion.usage.total_tokens
                record.completion_tokens = completion.usage.completion_tokens

    try:
        await asyncio.gather(*(lane() for _ in range(concurrency)))
    finally:
        await sdk.close()
