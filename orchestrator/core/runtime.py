"""Process plumbing for long-lived verbs: signals become an asyncio.Event, sleeps end on it,
periodic work runs through `every`."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Pacing:
    """Time and chance as a component sees them: injected, so tests drive them."""

    clock: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    rand: Callable[[], float] = field(default_factory=lambda: random.Random().random)


STOP_AFTER_DRAIN_S = 5.0
"""What a stop may take beyond the process's drain (`PTU_DRAIN_TIMEOUT_S`): the bookkeeping
after it (releases, heartbeats, closing clients) waits on Redis at most this long."""
RECANCEL_S = 0.5
FORCE_AFTER_S = 3.0
"""After the stop deadline, how long cancelling may take before the process exits at once."""


class StopDeadline:
    """Ends a stop that takes too long: cancels the main task, then exits the process.

    Armed at the first signal. `stop_within_s` later the task is cancelled, again every
    `RECANCEL_S` (so no cleanup step that waits on a dead or hung Redis holds it),
    logged as `stop_deadline_passed`. `FORCE_AFTER_S` after that a timer thread (it
    needs no event loop: asyncio.run's own clean-up waits for cancelled tasks that may
    still retry) exits the process at once (`stop_forced`, `os._exit(130)`). What is left
    undone is what the orchestrator's SIGKILL at the end of its grace period would leave:
    unacknowledged messages are delivered again, leases and heartbeats expire.
    """

    __slots__ = ("_force", "_handle", "_seconds")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._handle: asyncio.TimerHandle | None = None
        self._force: threading.Timer | None = None

    def arm(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
        """Start counting (the first signal)."""
        self._handle = loop.call_later(self._seconds, self._cut, loop, task, True)
        self._force = threading.Timer(self._seconds + FORCE_AFTER_S, self._exit)
        self._force.daemon = True
        self._force.start()

    def disarm(self) -> None:
        """The stop ended in time (or never began)."""
        if self._handle is not None:
            self._handle.cancel()
        if self._force is not None:
            self._force.cancel()

    def _cut(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], first: bool) -> None:
        if task.done():
            return
        if first:
            log.warning("stop_deadline_passed", seconds=self._seconds)
        task.cancel()
        self._handle = loop.call_later(RECANCEL_S, self._cut, loop, task, False)

    def _exit(self) -> None:
        log.error("stop_forced", seconds=self._seconds, after_s=FORCE_AFTER_S)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)


def run_until_signal(
    main: Callable[[asyncio.Event], Awaitable[int]], *, stop_within_s: float | None = None
) -> int:
    """Run `main(stop)`; SIGTERM and SIGINT set `stop`, a second signal cancels.

    With `stop_within_s`, a stop still running that long after the first signal is cut
    short (`StopDeadline`).
    """
    deadline = StopDeadline(stop_within_s) if stop_within_s is not None else None

    async def runner() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        task = asyncio.current_task()

        def on_signal() -> None:
            if stop.is_set() and task is not None:
                task.cancel()
            elif deadline is not None and task is not None:
                deadline.arm(loop, task)
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
    finally:
        if deadline is not None:
            deadline.disarm()


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
