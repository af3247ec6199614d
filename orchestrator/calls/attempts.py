"""The one attempt loop: call until an answer, a final failure, the deadline or a stop.

The worker's dispatcher and the ingress's high-priority batch runner both call a
deployment through `run_attempts`; what differs is the `Gate` around each attempt:

- the worker's gate holds a throttle slot and the shared circuit breaker's permission
  before each attempt, hands the slot back as soon as the attempt ends (a retry's wait
  never occupies low-priority capacity), records every attempt in the breaker, pauses
  the deployment on a 429, and treats an unreachable deployment as an outage: the
  request waits for the breaker instead of spending its attempts;
- the batch runner's gate (`Ungated`) only sleeps between attempts: its calls go
  through the high-priority proxy, which owns the breakers and spillover.

The loop owns the rest, the same for both: the deadline is checked before every attempt,
`core.retry.decide` says retry or fail from the error's type and status, an outage does
not count as an attempt. Clock and random draw are injected; sleeping is the gate's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

from orchestrator.core.errors import UpstreamError
from orchestrator.core.retry import Decision, RetryPolicy, decide
from orchestrator.core.runtime import Pacing

_R = TypeVar("_R")

Permit = Literal["call", "probe", "stop", "late"]
"""A gate's answer: call (`probe`: as the breaker's half-open probe), or give up because
the process is stopping (`stop`) or the deadline passed while waiting (`late`)."""
Ending = Literal["answered", "failed", "expired", "stopped"]


class Gate(Protocol):
    """What surrounds each attempt of one request: capacity, the breaker, the waits."""

    async def enter(self, deadline: float | None) -> Permit:
        """Wait until an attempt may start; never returns `late` before `deadline`."""

    async def answered(self, probe: bool) -> None:
        """The attempt got its answer: hand back what `enter` took, record the success."""

    async def failed(self, err: UpstreamError, probe: bool) -> bool:
        """The attempt failed: hand back what `enter` took, record the failure.

        True when the failure is the deployment's outage rather than the request's:
        the attempt is then not counted and the loop goes back to `enter`.
        """

    async def decided(self, err: UpstreamError, decision: Decision) -> None:
        """Learn from a counted failure and the retry decision taken on it."""

    async def backoff(
        self, err: UpstreamError, decision: Decision, attempt: int, deadline: float | None
    ) -> bool:
        """Wait `decision.delay_s` (never past `deadline`) before the retry; False on stop."""


@dataclass(frozen=True, slots=True)
class Attempted(Generic[_R]):
    """How the attempts of one request ended."""

    ending: Ending
    attempts: int
    """Attempts counted (outages excluded)."""
    answer: _R | None = None
    """The answer, when `answered`."""
    error: UpstreamError | None = None
    """The last failure, when `failed`; when `expired`, the last failure seen, if any (an
    outage's too, which spends no attempt)."""
    reason: str = ""
    """Why it failed for good (the retry decision's reason)."""
    started_at: float | None = None
    """Clock time the answered attempt started."""


async def run_attempts(
    send: Callable[[int], Awaitable[_R]],
    gate: Gate,
    *,
    policy: RetryPolicy,
    deadline: float | None,
    pacing: Pacing,
    start: int = 0,
) -> Attempted[_R]:
    """Call `send(attempt)` through `gate` until it answers, fails for good, expires or stops.

    `send` raises `UpstreamError` for a failed attempt; anything else it raises (a
    cancellation, a bug) goes to the caller, which gets back what the gate lent.
    `start`: attempts already counted for this request (a run that continues another).
    """
    clock = pacing.clock
    attempt = start
    last: UpstreamError | None = None
    while True:
        if deadline is not None and clock() >= deadline:
            return Attempted("expired", attempt, error=last)
        permit = await gate.enter(deadline)
        if permit == "stop":
            return Attempted("stopped", attempt)
        if permit == "late":
            continue  # the deadline passed while waiting: expire at the top
        probe = permit == "probe"
        attempt += 1
        started = clock()
        try:
            answer = await send(attempt)
        except UpstreamError as err:
            last = err
            if await gate.failed(err, probe):
                attempt -= 1  # the deployment's failure, not the request's: not spent
                continue
            decision = decide(err, attempt, policy, pacing.rand)
            await gate.decided(err, decision)
            if decision.action == "fail":
                return Attempted("failed", attempt, error=err, reason=decision.reason)
            if not await gate.backoff(err, decision, attempt, deadline):
                return Attempted("stopped", attempt)
            continue
        await gate.answered(probe)
        return Attempted("answered", attempt, answer=answer, started_at=started)


class Ungated:
    """No capacity or breaker around the attempts; only the backoff, by `sleep`."""

    def __init__(self, sleep: Callable[[float], Awaitable[None]]) -> None:
        self._sleep = sleep

    async def enter(self, deadline: float | None) -> Permit:
        """Always call."""
        return "call"

    async def answered(self, probe: bool) -> None:
        """Nothing to hand back."""

    async def failed(self, err: UpstreamError, probe: bool) -> bool:
        """Every failure is the request's."""
        return False

    async def decided(self, err: UpstreamError, decision: Decision) -> None:
        """Nothing to learn."""

    async def backoff(
        self, err: UpstreamError, decision: Decision, attempt: int, deadline: float | None
    ) -> bool:
        """Sleep the delay."""
        await self._sleep(decision.delay_s)
        return True

    def __repr__(self) -> str:
        return "<Ungated>"
