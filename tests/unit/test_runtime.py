from __future__ import annotations

import asyncio

from orchestrator.core.runtime import pause


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
