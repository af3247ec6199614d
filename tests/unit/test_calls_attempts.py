"""`calls.attempts.run_attempts`: the one attempt loop, driven by a scripted gate and clock."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from orchestrator.calls.attempts import Permit, Ungated, run_attempts
from orchestrator.calls.outcome import upstream_error
from orchestrator.calls.signals import Signals
from orchestrator.core.errors import UpstreamError
from orchestrator.core.retry import Decision, RetryPolicy
from orchestrator.core.runtime import Pacing
from tests.support.clock import FakeClock

POLICY = RetryPolicy(max_attempts=3, base_s=1.0, max_s=20.0)


class ScriptedGate:
    """Permits from a script (then `call`); failures listed in `outages` are outages."""

    def __init__(self, permits: list[Permit] | None = None, outages: int = 0) -> None:
        self.permits = list(permits or [])
        self.outages = outages
        self.log: list[str] = []

    async def enter(self, deadline: float | None) -> Permit:
        permit = self.permits.pop(0) if self.permits else "call"
        self.log.append(f"enter:{permit}")
        return permit

    async def answered(self, probe: bool) -> None:
        self.log.append("answered")

    async def failed(self, err: UpstreamError, probe: bool) -> bool:
        self.log.append(f"failed:{err.status_code}")
        if self.outages:
            self.outages -= 1
            return True
        return False

    async def decided(self, err: UpstreamError, decision: Decision) -> None:
        self.log.append(f"decided:{decision.action}")

    async def backoff(
        self, err: UpstreamError, decision: Decision, attempt: int, deadline: float | None
    ) -> bool:
        self.log.append(f"backoff:{decision.delay_s}")
        return True


def _send(script: list[int]) -> Callable[[int], Awaitable[int]]:
    """Answers 200 or raises the scripted status's error, one entry per attempt."""

    async def send(attempt: int) -> int:
        status = script.pop(0)
        if status >= 300:
            raise upstream_error(status, None, Signals(retry_after_s=0.5))
        return attempt

    return send


def _pacing(clock: FakeClock) -> Pacing:
    return Pacing(clock=clock.clock, sleep=clock.sleep, rand=lambda: 0.5)


@pytest.mark.parametrize(
    ("statuses", "ending", "attempts", "reason"),
    [
        ([200], "answered", 1, ""),
        ([429, 200], "answered", 2, ""),
        ([500, 503, 200], "answered", 3, ""),
        ([400], "failed", 1, "status 400 is not retryable"),
        ([404], "failed", 1, "status 404 is not retryable"),
        ([500, 500, 500], "failed", 3, "gave up after 3 attempts"),
    ],
)
async def test_endings(statuses: list[int], ending: str, attempts: int, reason: str) -> None:
    gate = ScriptedGate()
    got = await run_attempts(
        _send(list(statuses)), gate, policy=POLICY, deadline=None, pacing=_pacing(FakeClock(0))
    )
    assert (got.ending, got.attempts, got.reason) == (ending, attempts, reason)
    assert (got.answer == attempts) if ending == "answered" else got.error is not None


async def test_a_429_waits_its_retry_after_and_other_failures_back_off() -> None:
    gate = ScriptedGate()
    await run_attempts(
        _send([429, 500, 200]), gate, policy=POLICY, deadline=None, pacing=_pacing(FakeClock(0))
    )
    # 429: its retry-after (0.5 s); 500 after 2 attempts: equal jitter, ceiling 2 s, draw 0.5
    assert [e for e in gate.log if e.startswith("backoff")] == ["backoff:0.5", "backoff:1.5"]


async def test_an_outage_is_not_an_attempt() -> None:
    gate = ScriptedGate(outages=2)
    got = await run_attempts(
        _send([503, 503, 200]), gate, policy=POLICY, deadline=None, pacing=_pacing(FakeClock(0))
    )
    assert (got.ending, got.attempts) == ("answered", 1)
    assert "decided:retry" not in gate.log  # an outage takes no retry decision


async def test_the_deadline_is_checked_before_every_attempt() -> None:
    clock = FakeClock(100.0)
    got = await run_attempts(
        _send([200]), ScriptedGate(), policy=POLICY, deadline=100.0, pacing=_pacing(clock)
    )
    assert (got.ending, got.attempts) == ("expired", 0)

    class Slow(ScriptedGate):
        async def backoff(self, err, decision, attempt, deadline):  # type: ignore[no-untyped-def]
            clock.advance(10.0)
            return True

    got = await run_attempts(
        _send([500, 200]), Slow(), policy=POLICY, deadline=105.0, pacing=_pacing(clock)
    )
    assert (got.ending, got.attempts) == ("expired", 1)


async def test_late_expires_and_stop_stops() -> None:
    clock = FakeClock(0.0)

    class Late(ScriptedGate):
        async def enter(self, deadline: float | None) -> Permit:
            clock.advance(5.0)
            return "late"

    got = await run_attempts(_send([]), Late(), policy=POLICY, deadline=3.0, pacing=_pacing(clock))
    assert (got.ending, got.attempts) == ("expired", 0)
    got = await run_attempts(
        _send([500]), ScriptedGate(["call", "stop"]), policy=POLICY, deadline=None,
        pacing=_pacing(clock),
    )  # fmt: skip
    assert (got.ending, got.attempts) == ("stopped", 1)


async def test_ungated_sleeps_the_decided_delay() -> None:
    clock = FakeClock(0.0)
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    got = await run_attempts(
        _send([429, 200]), Ungated(sleep), policy=POLICY, deadline=None, pacing=_pacing(clock)
    )
    assert (got.ending, got.attempts, slept) == ("answered", 2, [0.5])
