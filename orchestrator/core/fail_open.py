"""Redis calls the interactive path makes but does not need: a small deadline, then go on.

A high-priority call can be answered without Redis: the shared breaker, the tenant's
counters and the token events only refine it. Each such call goes through
`FailOpen.call` with a deadline (`budget_s`, `BUDGET_S` unless the call names its own);
a call that errs or overruns it returns the caller's default instead (the local breaker
decides alone, the tenant is admitted, the event is dropped). Every fail-open is counted
by `what` (`on_fail_open`, the ingress's `ptu_ingress_redis_fail_open_total{what}`) and
logged at most once per `LOG_EVERY_S` per `what`, with how many went unlogged.

One failure opens a cool-down of `cooldown_s` during which every call fails open at once,
without trying Redis. After it, while no call has succeeded since the failure, a call
still fails open at once and runs its work in the background as a trial (one at a time,
under the same deadline): its success ends the failing state, its failure starts another
cool-down. So during an outage or a hang only the call that met the first failure pays
the deadline, and the interactive path keeps its normal latency however long it lasts.
The deadline cancels the command; redis-py drops a connection cancelled mid-reply, so no
later command reads a stale answer. A low-priority call is not made through here: it
needs Redis to store the request and answers 503 with `retry-after` without it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from redis.exceptions import RedisError

from orchestrator.core.errors import StoreUnavailable

log = structlog.get_logger(__name__)

T = TypeVar("T")

BUDGET_S = 0.075
"""The deadline of one Redis call on the interactive path (a healthy round trip is ~1 ms)."""
COOLDOWN_S = 1.0
"""After a failure, how long every call fails open without trying Redis."""
LOG_EVERY_S = 10.0
"""At most one `redis_fail_open` line per `what` in this time."""

FAILURES = (StoreUnavailable, RedisError, OSError, TimeoutError)
"""What a failing Redis call raises: translated at a store's boundary or not, or the deadline."""


class FailOpen:
    """The deadline, cool-down and counting of the Redis calls one process can do without."""

    __slots__ = (
        "_clock",
        "_failing",
        "_logged",
        "_on_fail_open",
        "_skip_until",
        "_trial",
        "budget_s",
        "cooldown_s",
    )

    def __init__(
        self,
        budget_s: float = BUDGET_S,
        *,
        cooldown_s: float = COOLDOWN_S,
        clock: Callable[[], float] = time.monotonic,
        on_fail_open: Callable[[str], None] | None = None,
    ) -> None:
        self.budget_s = budget_s
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._on_fail_open = on_fail_open
        self._skip_until = float("-inf")
        self._failing = False
        """A call failed and none has succeeded since: calls do not wait on Redis."""
        self._trial: asyncio.Task[None] | None = None
        self._logged: dict[str, tuple[float, int]] = {}
        """what -> (when it was last logged, fail-opens since then not logged)."""

    @property
    def cooling(self) -> bool:
        """True while a recent failure makes every call fail open without trying Redis."""
        return self._clock() < self._skip_until

    async def call(
        self,
        what: str,
        work: Callable[[], Awaitable[T]],
        default: T,
        *,
        budget_s: float | None = None,
    ) -> T:
        """`work()`'s result within the deadline, else `default` (counted and logged)."""
        budget = self.budget_s if budget_s is None else budget_s
        if self._failing:
            if not self.cooling and (self._trial is None or self._trial.done()):
                self._trial = asyncio.create_task(self._try(work, budget), name="fail-open-trial")
            self._failed(what, None)
            return default
        try:
            async with asyncio.timeout(budget):
                return await work()
        except FAILURES as exc:
            self._fail()
            self._failed(what, exc)
            return default

    async def settled(self) -> None:
        """Wait for the background trial, if one runs (tests, shutdown)."""
        if self._trial is not None:
            await asyncio.gather(self._trial, return_exceptions=True)

    async def _try(self, work: Callable[[], Awaitable[object]], budget_s: float) -> None:
        try:
            async with asyncio.timeout(budget_s):
                await work()
        except FAILURES:
            self._fail()
            return
        self._failing = False
        log.info("redis_fail_open_ended")

    def _fail(self) -> None:
        self._failing = True
        self._skip_until = self._clock() + self.cooldown_s

    def _failed(self, what: str, exc: BaseException | None) -> None:
        if self._on_fail_open is not None:
            self._on_fail_open(what)
        now = self._clock()
        last, unlogged = self._logged.get(what, (float("-inf"), 0))
        if now - last < LOG_EVERY_S:
            self._logged[what] = (last, unlogged + 1)
            return
        self._logged[what] = (now, 0)
        log.warning(
            "redis_fail_open",
            what=what,
            error=type(exc).__name__ if exc is not None else "cooling_down",
            unlogged=unlogged,
            cooldown_s=self.cooldown_s,
        )

    def __repr__(self) -> str:
        return f"<FailOpen budget_s={self.budget_s} failing={self._failing} cooling={self.cooling}>"
