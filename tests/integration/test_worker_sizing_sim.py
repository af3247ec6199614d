"""Output-limit sizing end to end: the worker, the real simulator over loopback, a real Redis.

The simulator draws an answer's length from the request's content and its limit (20 to
100 % of `max_tokens`), so "lines that ask for 2,000 tokens and use ~100" need the
simulator's `x-sim-completion-tokens` header, which fixes an answer's length (still cut
at the limit, with `finish_reason: "length"`). A queued body cannot carry a header, so
`KnownLengths` adds it per request id around the real upstream: the stand-in for prompts
whose answers have a known length. What the simulator received is read off the wire
(an httpx request hook on the upstream's client) and from its `/sim/state` counters.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import httpx2
import pytest
import redis.asyncio as aioredis

from orchestrator.calls.outcome import UpstreamResponse
from orchestrator.core import keys
from orchestrator.core.results import ResultStore
from orchestrator.core.schemas import Endpoint, QueuedRequest, ResultDocument
from orchestrator.core.settings import Settings
from orchestrator.queues.redis_streams import RedisStreamsQueue
from orchestrator.worker.lengths import OutputLengths
from orchestrator.worker.upstream import AzureUpstream
from simulator.config import SimConfig
from simulator.server import SimulatorThread
from tests.integration.test_worker_sim import DEP, make_settings, run_worker

FORCED = "x-sim-completion-tokens"
CALLER_LIMIT = 2_000  # a line asking 4,000, after the ingress's PTU_MAX_TOKENS_CEILING


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    config = SimConfig.from_specs([f"{DEP}=gpt-4o-mini:15"], window_s=10.0, tbt_ms=0, ttft_ms=0)
    with SimulatorThread(config) as server:
        yield server


@pytest.fixture
async def http(sim: SimulatorThread) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=sim.url, timeout=10) as client:
        await client.post("/sim/reset")
        yield client


class KnownLengths:
    """The real upstream, asking the simulator for a set answer length per request id, and
    keeping every body it put on the wire."""

    def __init__(self, settings: Settings, lengths: dict[str, int]) -> None:
        self.lengths = lengths
        self.sent: list[tuple[str, dict[str, Any]]] = []
        """(request id, JSON body) of each request as it left for the simulator."""
        self._http = httpx2.AsyncClient(event_hooks={"request": [self._keep]})
        self._inner = AzureUpstream.from_settings(settings, http_client=self._http)

    async def _keep(self, request: httpx2.Request) -> None:
        self.sent.append((request.headers["x-ms-client-request-id"], json.loads(request.content)))

    def _headers(self, headers: Mapping[str, str] | None) -> dict[str, str]:
        out = dict(headers or {})
        out[FORCED] = str(self.lengths[out["x-ms-client-request-id"]])
        return out

    async def chat(
        self, deployment: str, body: Mapping[str, Any], *, headers: Mapping[str, str] | None = None
    ) -> UpstreamResponse:
        return await self._inner.chat(deployment, body, headers=self._headers(headers))

    async def responses(
        self, deployment: str, body: Mapping[str, Any], *, headers: Mapping[str, str] | None = None
    ) -> UpstreamResponse:
        return await self._inner.responses(deployment, body, headers=self._headers(headers))

    async def close(self) -> None:
        await self._inner.close()

    def limits(self, request_id: str) -> list[int]:
        """The output limit of each call of one request, in order."""
        field = ("max_output_tokens", "max_tokens")
        return [next(b[f] for f in field if f in b) for rid, b in self.sent if rid == request_id]


async def _enqueue(
    redis: aioredis.Redis, lengths: dict[str, int], answers: list[int], endpoint: Endpoint
) -> list[str]:
    results = ResultStore(redis, 3600)
    queue = RedisStreamsQueue(redis, DEP, "producer")
    ids, now = [], time.time()
    for i, answer in enumerate(answers):
        rid = uuid.uuid4().hex
        if endpoint == "responses":
            body: dict[str, Any] = {"input": f"line {i}", "max_output_tokens": CALLER_LIMIT}
        else:
            body = {"messages": [{"role": "user", "content": f"line {i}"}]}
            body["max_tokens"] = CALLER_LIMIT
        message = QueuedRequest(
            id=rid,
            deployment=DEP,
            body=body,
            endpoint=endpoint,
            reply_key=keys.reply(rid),
            enqueued_at=now,
            deadline=now + 600,
        )
        await results.register(message)
        await queue.put(message)
        lengths[rid] = answer
        ids.append(rid)
    return ids


async def _run(
    sim: SimulatorThread,
    redis_url: str,
    redis: aioredis.Redis,
    ids: list[str],
    lengths: dict[str, int],
    **settings: Any,
) -> tuple[dict[str, ResultDocument], KnownLengths]:
    config = make_settings(sim, redis_url, **settings)
    upstream = KnownLengths(config, lengths)
    # a bound, not a speed: long answers, one call at a time, on a machine the suite loads
    done = await run_worker(config, redis, ids, upstream=upstream, timeout_s=90.0)
    return done, upstream


def _completion(doc: ResultDocument) -> int:
    assert doc.usage is not None
    return int(doc.usage.get("completion_tokens", doc.usage.get("output_tokens", 0)))


async def test_a_batch_gets_sized_limits_after_the_warm_up_and_a_long_answer_whole(
    sim: SimulatorThread, redis_url: str, redis: aioredis.Redis, http: httpx2.AsyncClient
) -> None:
    known: dict[str, int] = {}
    answers = [90 + i % 21 for i in range(30)]  # 90..110 tokens
    first = await _enqueue(redis, known, answers, "chat/completions")
    done, wire = await _run(sim, redis_url, redis, first, known, max_concurrency=1)

    limits = [wire.limits(rid) for rid in first]
    assert limits[:20] == [[CALLER_LIMIT]] * 20  # warm-up: the caller's limit
    # then p95 x 1.25 of what is known: 20 lengths 90..109 give 108 -> 135, from the 21st
    # (110) on the 95th percentile is 109 -> 136.25 -> 137
    assert limits[20:] == [[135]] + [[137]] * 9
    assert all(_completion(done[rid]) == n for rid, n in zip(first, answers, strict=True))

    # a later worker (another process: its own copy of the lengths) sizes from the start;
    # one answer is much longer than the sized limit
    second = await _enqueue(redis, known, [100] * 5 + [1_500], "chat/completions")
    done, wire = await _run(sim, redis_url, redis, second, known, max_concurrency=1)
    sized = wire.limits(second[0])[0]
    assert sized == 137  # p95 of the 30 lengths above (the 29th: 109) x 1.25 = 136.25
    assert [wire.limits(rid) for rid in second[:5]] == [[sized]] * 5
    long_id = second[5]
    assert wire.limits(long_id) == [sized, CALLER_LIMIT]  # cut short, then the caller's
    doc = done[long_id]
    assert doc.status == "completed" and doc.attempts == 2
    assert _completion(doc) == 1_500  # the usage of the call whose answer the result holds
    assert doc.response is not None
    assert doc.response["choices"][0]["finish_reason"] == "stop"
    assert all(done[rid].attempts == 1 for rid in second[:5])

    # the simulator served the cut call at the sized limit: it generated `sized` tokens
    state = (await http.get("/sim/state")).json()["deployments"][DEP]
    assert state["completion_tokens"] == sum(answers) + 5 * 100 + sized + 1_500
    assert state["requests"] == 30 + 6 + 1
    # what is learnt is what callers got; the cut call says nothing
    learnt = await redis.lrange(keys.output_lengths(DEP, "default"), 0, -1)
    assert sorted(int(v) for v in learnt) == sorted([*answers, *[100] * 5, 1_500])


async def test_a_response_cut_short_by_the_sized_limit_is_run_again(
    sim: SimulatorThread, redis_url: str, redis: aioredis.Redis
) -> None:
    lengths = OutputLengths(redis)
    for _ in range(20):
        await lengths.learn(DEP, "default", 60)
    known: dict[str, int] = {}
    ids = await _enqueue(redis, known, [50, 700], "responses")
    done, wire = await _run(sim, redis_url, redis, ids, known, max_concurrency=1)

    assert wire.limits(ids[0]) == [75]
    assert wire.limits(ids[1]) == [75, CALLER_LIMIT]
    doc = done[ids[1]]
    assert (doc.status, doc.attempts, _completion(doc)) == ("completed", 2, 700)
    assert doc.response is not None and doc.response["status"] == "completed"


async def test_off_sends_the_callers_limit(
    sim: SimulatorThread, redis_url: str, redis: aioredis.Redis
) -> None:
    lengths = OutputLengths(redis)
    for _ in range(20):
        await lengths.learn(DEP, "default", 60)
    known: dict[str, int] = {}
    ids = await _enqueue(redis, known, [50, 700], "chat/completions")
    done, wire = await _run(sim, redis_url, redis, ids, known, size_max_tokens="off")

    assert [wire.limits(rid) for rid in ids] == [[CALLER_LIMIT]] * 2
    assert [done[rid].attempts for rid in ids] == [1, 1]
    assert await redis.llen(keys.output_lengths(DEP, "default")) == 20
