"""Fakes shared by the worker unit tests: time, upstream, token recorder, wiring."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import fakeredis
import redis.asyncio as aioredis

from orchestrator.breaker.machine import BreakerConfig
from orchestrator.breaker.shared import SharedBreaker, Surface
from orchestrator.calls.outcome import UpstreamResponse
from orchestrator.calls.signals import Signals
from orchestrator.core import keys
from orchestrator.core.errors import UpstreamError
from orchestrator.core.results import ResultStore
from orchestrator.core.retry import RetryPolicy
from orchestrator.core.runtime import Pacing
from orchestrator.core.schemas import QueuedRequest, TokenEvent
from orchestrator.core.settings import DeploymentConfig
from orchestrator.core.views import ThrottleView
from orchestrator.queues.memory import InMemoryQueue
from orchestrator.throttle.limiter import Throttle
from orchestrator.utilisation.static import StaticSource
from orchestrator.worker.dispatch import Delivering, DispatchConfig, Dispatcher, Gates, Reporting
from orchestrator.worker.metrics import WorkerMetrics
from orchestrator.worker.protocols import UsageSink
from tests.support.clock import FakeClock

DEPLOYMENT = DeploymentConfig(name="dep", model="gpt-4o-mini", ptus=15)
T0 = 1_700_000_000.0


class Parked:
    """A sleep that never returns until `wake()` (drain timers, heartbeat pauses)."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.calls: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.calls.append(seconds)
        await self.event.wait()
        await asyncio.sleep(0)  # an awake sleep still yields, as asyncio.sleep does

    def wake(self) -> None:
        self.event.set()


Outcome = UpstreamError | dict[str, Any] | None


@dataclass
class FakeUpstream:
    """Answers from a per-request script of outcomes (None = the default completion)."""

    script: dict[str, list[Outcome]] = field(default_factory=dict)
    gate: asyncio.Event | None = None
    hang: bool = False
    calls: list[tuple[str, dict[str, Any], dict[str, str]]] = field(default_factory=list)
    active: int = 0
    peak: int = 0
    on_call: Callable[[str], None] | None = None
    utilisation: float | None = None
    """The utilisation header every success carries (None: no header)."""
    endpoints: list[str] = field(default_factory=list)
    """`responses` for each call made through `responses` (it then answers as `chat`)."""
    signals: Signals | None = None
    """The signals every success carries instead (e.g. a native spillover's)."""

    async def chat(self, deployment: str, body: Any, *, headers: Any = None) -> UpstreamResponse:
        request_id = (headers or {}).get("x-ms-client-request-id", "")
        self.calls.append((deployment, dict(body), dict(headers or {})))
        if self.on_call is not None:
            self.on_call(request_id)
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            if self.hang:
                await asyncio.Event().wait()
            if self.gate is not None:
                await self.gate.wait()
            else:
                await asyncio.sleep(0)
            outcomes = self.script.get(request_id, [])
            outcome = outcomes.pop(0) if outcomes else None
            if isinstance(outcome, UpstreamError):
                raise outcome
            body_out = outcome or completion(request_id)
            signals = self.signals or Signals(utilisation=self.utilisation)
            return UpstreamResponse(body=body_out, status_code=200, signals=signals)
        finally:
            self.active -= 1

    async def responses(
        self, deployment: str, body: Any, *, headers: Any = None
    ) -> UpstreamResponse:
        self.endpoints.append("responses")
        return await self.chat(deployment, body, headers=headers)

    async def close(self) -> None:
        return None

    def calls_for(self, request_id: str) -> int:
        return sum(1 for _, _, h in self.calls if h.get("x-ms-client-request-id") == request_id)


def completion(request_id: str, prompt: int = 11, completion_tokens: int = 7) -> dict[str, Any]:
    return {
        "id": f"cmpl-{request_id}",
        "object": "chat.completion",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    }


@dataclass
class TokenLog:
    events: list[TokenEvent] = field(default_factory=list)

    async def record(self, event: TokenEvent) -> None:
        self.events.append(event)


def request(request_id: str, *, deadline: float = T0 + 3600, **body: Any) -> QueuedRequest:
    return QueuedRequest(
        id=request_id,
        deployment=DEPLOYMENT.name,
        body={"messages": [{"role": "user", "content": "hello " * 10}], "max_tokens": 50, **body},
        reply_key=keys.reply(request_id),
        enqueued_at=T0 - 5,
        deadline=deadline,
        custom_id=f"c-{request_id}",
    )


@dataclass
class Rig:
    """A dispatcher wired to in-memory / fakeredis twins."""

    redis: aioredis.Redis
    queue: InMemoryQueue
    source: StaticSource
    throttle: Throttle
    results: ResultStore
    upstream: FakeUpstream
    tokens: TokenLog
    time: FakeClock
    throttle_time: FakeClock
    dispatcher: Dispatcher
    paused: list[float] = field(default_factory=list)

    async def put(self, message: QueuedRequest) -> None:
        await self.results.register(message)
        await self.queue.put(message)

    async def replies(self, request_id: str) -> list[str]:
        raw = await self.redis.lrange(keys.reply(request_id), 0, -1)
        return [r.decode() if isinstance(r, bytes) else r for r in raw]

    async def global_slots(self) -> int:
        return await self.throttle.global_in_flight()


def make_rig(
    *,
    utilisation: float = 0.0,
    max_attempts: int = 3,
    max_concurrency: int = 4,
    request_timeout_s: float = 30.0,
    max_deliveries: int = 10,
    upstream: FakeUpstream | None = None,
    low_priority_spill: Literal["keep", "fail"] = "keep",
    usage: UsageSink | None = None,
    metrics: WorkerMetrics | None = None,
    breakers: BreakerConfig | None = None,
    hand_over: bool = False,
) -> Rig:
    redis = fakeredis.FakeAsyncRedis()
    time_ = FakeClock(T0)
    throttle_time = FakeClock(T0)
    queue = InMemoryQueue(DEPLOYMENT.name, visibility_s=3600, clock=time_.clock)
    source = StaticSource({DEPLOYMENT.name: utilisation}, clock=throttle_time.clock)
    throttle = Throttle(
        redis,
        DEPLOYMENT,
        source,
        ThrottleView(lower=0.2, upper=0.9, max_concurrency=max_concurrency, slot_lease_s=30),
        worker_id="w1",
        pacing=Pacing(clock=throttle_time.clock, sleep=throttle_time.sleep),
        poll_s=0.1,
    )
    results = ResultStore(redis, reply_ttl_s=3600)
    upstream = upstream or FakeUpstream()
    tokens = TokenLog()
    config = DispatchConfig(
        retry=RetryPolicy(max_attempts=max_attempts, base_s=1.0, max_s=20.0),
        request_timeout_s=request_timeout_s,
        default_max_tokens=100,
        max_deliveries=max_deliveries,
        low_priority_spill=low_priority_spill,
        hand_over=hand_over,
    )
    dispatcher = Dispatcher(
        DEPLOYMENT.name,
        delivering=Delivering(queue, results),
        upstream=upstream,
        config=config,
        gates=Gates(
            throttle,
            breaker=None if breakers is None else _breaker(redis, breakers, time_, "chat"),
            responses_breaker=(
                None if breakers is None else _breaker(redis, breakers, time_, "responses")
            ),
        ),
        reporting=Reporting(tokens, usage=usage, metrics=metrics, counts=redis),
        pacing=Pacing(clock=time_.clock, sleep=time_.sleep, rand=lambda: 0.5),
    )
    rig = Rig(
        redis, queue, source, throttle, results, upstream, tokens, time_, throttle_time, dispatcher
    )

    async def spy_pause(seconds: float) -> None:
        # recorded only: the pause key expires on the server's real clock, which
        # would make these tests wait; the throttle's own tests cover pausing
        rig.paused.append(seconds)

    throttle.pause_for = spy_pause  # type: ignore[method-assign]
    return rig


def _breaker(
    redis: aioredis.Redis, config: BreakerConfig, time_: FakeClock, surface: Surface
) -> SharedBreaker:
    return SharedBreaker(redis, DEPLOYMENT.name, config, surface=surface, clock=time_.clock)
