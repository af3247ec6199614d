from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from orchestrator.core.runtime import StopDeadline, every, pause


async def test_pause_runs_out_when_no_event_is_set() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    assert await pause(2.5, asyncio.Event(), sleep=sleep) is True
    assert slept == [2.5]


async def test_pause_ends_early_on_any_event() -> None:
    never = asyncio.Event()

    async def sleep(seconds: float) -> None:
        await never.wait()

    stop, wake = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(pause(60, stop, wake, sleep=sleep))
    await asyncio.sleep(0)
    wake.set()
    assert await task is False


async def test_pause_does_not_sleep_once_stopped() -> None:
    stop = asyncio.Event()
    stop.set()

    async def sleep(seconds: float) -> None:
        raise AssertionError("slept")

    assert await pause(1.0, stop, sleep=sleep) is False


class _Ticks:
    """An injected sleep that records waits, and stops the loop after `n` of them."""

    def __init__(self, n: int, stop: asyncio.Event) -> None:
        self.waits: list[float] = []
        self._n, self._stop = n, stop

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        if len(self.waits) >= self._n:
            self._stop.set()


@pytest.mark.parametrize(("first", "calls"), [("now", 3), ("later", 2)])
async def test_every_calls_until_stopped(first: str, calls: int) -> None:
    stop = asyncio.Event()
    ticks = _Ticks(3, stop)
    done: list[int] = []

    async def fn() -> None:
        done.append(1)

    await every(2.0, fn, stop, event="x_failed", first=first, sleep=ticks.sleep)  # type: ignore[arg-type]
    assert len(done) == calls and ticks.waits == [2.0, 2.0, 2.0]


async def test_every_logs_a_backend_error_and_goes_on_but_not_another() -> None:
    stop = asyncio.Event()
    ticks = _Ticks(3, stop)
    seen: list[int] = []

    async def flaky() -> None:
        seen.append(1)
        raise ConnectionError("away")

    with capture_logs() as logs:
        await every(1.0, flaky, stop, event="x_failed", errors=(OSError,), sleep=ticks.sleep, k=1)
    assert len(seen) == 2 and [e["event"] for e in logs] == ["x_failed", "x_failed"]
    assert logs[0]["k"] == 1

    async def broken() -> None:
        raise ValueError("bug")

    with pytest.raises(ValueError):
        await every(1.0, broken, event="x_failed", errors=(OSError,), first="now")


async def test_every_ends_when_fn_says_nothing_is_left() -> None:
    left = [True, True, False]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async def fn() -> bool:
        return left.pop(0)

    await every(1.0, fn, event="x_failed", first="now", sleep=sleep)
    assert left == [] and waits == [1.0, 1.0]


async def test_the_stop_deadline_cancels_the_stop_and_keeps_cancelling() -> None:
    loop = asyncio.get_running_loop()
    caught: list[int] = []

    async def stubborn_stop() -> None:  # a clean-up that swallows one cancellation
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            caught.append(0)
        await asyncio.Event().wait()  # the next cancellation ends it

    stop = asyncio.ensure_future(stubborn_stop())
    await asyncio.sleep(0)
    deadline = StopDeadline(7.0)
    with capture_logs() as logs:
        deadline._cut(loop, stop, True)  # what arm() schedules `seconds` after the signal
        await asyncio.sleep(0)
        assert caught == [0] and not stop.done()
        deadline._cut(loop, stop, False)  # the re-cancel RECANCEL_S later
        with pytest.raises(asyncio.CancelledError):
            await stop
    deadline.disarm()
    assert [e["event"] for e in logs] == ["stop_deadline_passed"]


async def test_a_stop_in_time_disarms_the_deadline() -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(asyncio.Event().wait())
    deadline = StopDeadline(7.0)
    deadline.arm(loop, task)
    deadline.disarm()  # the forced exit's timer thread and the cancel are both off
    assert not task.cancelled()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
