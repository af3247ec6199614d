"""Process plumbing for long-lived verbs: signals become an asyncio.Event, sleeps end on it,
periodic work runs through `every`."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

import structlog

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Pacing:
    """Time and chance as a component sees them: injected, so tests drive them."""

    clock: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    rand: Callable[[], float] = field(default_factory=lambda: random.Random().random)


def run_until_signal(main: Callable[[asyncio.Event], Awaitable[int]]) -> int:
    """Run `main(stop)`; SIGTERM and SIGINT set `stop`, a second signal cancels."""

    async def runner() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        task = asyncio.current_task()

        def on_signal() -> None:
            if stop.is_set() and task is not None:
                task.cancel()
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        try:
            return await main(stop)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    try:
        return asyncio.run(runner())
    except asyncio.CancelledError:
        return 130


async def pause(
    seconds: float,
    *events: asyncio.Event,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> bool:
    """Sleep `seconds` with `sleep` unless one of `events` is set first.

    True when the sleep ran out with no event set. `sleep` is injected so tests
    drive time; the events (usually the process's stop) cut the wait short, which
    is how every loop here stays responsive to SIGTERM without cancellation.
    """
    if any(e.is_set() for e in events):
        return False
    sleeper = asyncio.ensure_future(sleep(seconds))
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait({sleeper, *waiters}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for fut in (sleeper, *waiters):
            fut.cancel()
        await asyncio.gather(sleeper, *waiters, return_exceptions=True)
    return not any(e.is_set() for e in events)


async def every(
    interval_s: float,
    fn: Callable[[], Awaitable[bool | None]],
    stop: asyncio.Event | None = None,
    *,
    event: str,
    errors: tuple[type[Exception], ...] = (),
    first: Literal["now", "later"] = "later",
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    **context: object,
) -> None:
    """Call `fn` every `interval_s` until `stop` is set (without one, until cancelled).

    The one periodic loop of the project: heartbeats, lease and liveness renewals,
    incarnation checks. An error of `errors` (the backend's, e.g. Redis being away) is
    logged as `event` with `context` and the loop goes on: background work outlives a
    backend restart. Any other error ends the loop. `fn` returning False ends it too
    (nothing left to do); `first="now"` calls it before the first wait.
    """
    events = () if stop is None else (stop,)
    if first == "later" and not await pause(interval_s, *events, sleep=sleep):
        return
    while stop is None or not stop.is_set():
        try:
            if await fn() is False:
                return
        except errors as exc:
            log.warning(event, error=repr(exc), **context)
        if not await pause(interval_s, *events, sleep=sleep):
            return
