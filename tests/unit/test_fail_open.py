"""`FailOpen`: a Redis call of the interactive path answers in time or gives way to a default."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from orchestrator.core.errors import StoreUnavailable
from orchestrator.core.fail_open import LOG_EVERY_S, FailOpen
from tests.support.clock import FakeClock


def guard_with(clock: FakeClock) -> tuple[FailOpen, list[str]]:
    counted: list[str] = []
    return FailOpen(0.05, cooldown_s=1.0, clock=clock, on_fail_open=counted.append), counted


async def test_an_answer_in_time_is_returned_and_not_counted() -> None:
    guard, counted = guard_with(FakeClock())

    async def read() -> int:
        return 7

    assert await guard.call("limits", read, 0) == 7
    assert counted == []
    assert not guard.cooling


async def test_an_error_fails_open_then_the_cool_down_skips_redis() -> None:
    clock = FakeClock()
    guard, counted = guard_with(clock)
    tried: list[int] = []

    async def failing() -> int:
        tried.append(1)
        raise StoreUnavailable("breaker state: Redis unavailable")

    assert await guard.call("breaker_sync", failing, -1) == -1
    assert guard.cooling
    assert await guard.call("breaker_sync", failing, -2) == -2  # not tried: cooling down
    assert tried == [1]
    clock.advance(1.01)
    assert not guard.cooling
    # after the cool-down the call still fails open at once; its work is tried in the
    # background, and that trial's failure starts another cool-down
    assert await guard.call("limits", failing, -3) == -3
    await guard.settled()
    assert tried == [1, 1]
    assert guard.cooling
    assert counted == ["breaker_sync", "breaker_sync", "limits"]


async def test_after_a_failure_no_call_waits_and_a_good_trial_ends_the_failing_state() -> None:
    clock = FakeClock()
    guard, counted = guard_with(clock)
    redis_back = asyncio.Event()
    calls: list[str] = []

    async def hung_until_back() -> int:
        calls.append("tried")
        if not redis_back.is_set():
            raise StoreUnavailable("estimate: Redis unavailable")
        return 7

    assert await guard.call("limits", hung_until_back, 0) == 0  # the one that pays
    clock.advance(1.01)
    redis_back.set()
    assert await guard.call("limits", hung_until_back, 0) == 0  # fails open, trial behind it
    await guard.settled()
    assert calls == ["tried", "tried"]
    assert await guard.call("limits", hung_until_back, 0) == 7  # back to normal
    assert counted == ["limits", "limits"]


async def test_a_hung_call_is_cut_at_the_deadline() -> None:
    guard, counted = guard_with(FakeClock())
    never = asyncio.Event()

    async def hung() -> str:
        await never.wait()
        return "late"

    assert await guard.call("token_event", hung, "default", budget_s=0.01) == "default"
    assert counted == ["token_event"]


async def test_the_log_line_is_rate_limited_per_what_and_counts_the_unlogged() -> None:
    clock = FakeClock()
    guard, counted = guard_with(clock)

    async def failing() -> None:
        raise ConnectionError("refused")

    with capture_logs() as logs:
        for _ in range(5):
            await guard.call("breaker_sync", failing, None)
        await guard.call("limits", failing, None)
        clock.advance(LOG_EVERY_S)
        await guard.call("breaker_sync", failing, None)
    lines = [(e["what"], e["unlogged"]) for e in logs if e["event"] == "redis_fail_open"]
    assert lines == [("breaker_sync", 0), ("limits", 0), ("breaker_sync", 4)]
    assert len(counted) == 7


async def test_a_programming_error_is_not_swallowed() -> None:
    guard, counted = guard_with(FakeClock())

    async def broken() -> None:
        raise KeyError("bug")

    try:
        await guard.call("limits", broken, None)
    except KeyError:
        pass
    else:
        raise AssertionError("a bug must not fail open")
    assert counted == []
