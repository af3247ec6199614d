"""CPU-heavy batch work off the ingress's event loop: a process of its own.

Validating a 200 MB file or expanding it into 100,000 queued requests is seconds
of JSON parsing. In a thread it would still hold the GIL against the event loop
that serves interactive calls, so it runs in a child process (`spawn`: no state
forked from a running event loop) at a lower CPU priority (`NICENESS`), started at
start-up and kept. `inline=True`
runs the same functions in a thread instead (tests whose components live in this
process). A child that dies takes only its job with it: the pool is replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import resource_tracker
from typing import Any, TypeVar

import structlog

log = structlog.get_logger(__name__)

T = TypeVar("T")


NICENESS = 10
"""How much lower the offload process's CPU priority is: when the machine is busy, the
kernel serves the ingress (interactive calls) first and batch work with what is left."""


PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal the calling process gets when its parent dies."""
PARENT_POLL_S = 1.0
"""Without `PR_SET_PDEATHSIG`: how often the child checks that its parent lives."""


def _start_child(parent: int) -> None:
    """The initializer of an offload child: lower its priority, tie its life to `parent`."""
    os.nice(NICENESS)
    die_with_parent(parent)


def die_with_parent(parent: int) -> None:
    """End this process when `parent` (its parent's pid at start) is gone."""
    if not _death_signal():
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if os.getppid() != parent:  # the parent died before the signal was asked for
        os._exit(1)


def _death_signal() -> bool:
    """Ask Linux for SIGKILL when the parent dies; False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(1)


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """SIGINT blocked in this thread while it starts a child, which inherits the block.

    A terminal's Ctrl-C reaches every process of the foreground group: the child would
    die with a `KeyboardInterrupt` traceback of its own (even while still importing),
    while the ingress stops cleanly and stops it (`Offload.close`, SIGTERM). A SIGINT
    that arrives meanwhile is held, not lost: delivered when the block ends (or to
    another thread of the ingress). The resource tracker, which the first child starts,
    is started before: it unblocks SIGINT once it has spawned its own process.
    """
    resource_tracker.ensure_running()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class Offload:
    """One lazily started worker process (or thread) running blocking functions."""

    def __init__(self, name: str, *, inline: bool = False) -> None:
        self.name = name
        self.inline = inline
        self._executor: Executor | None = None

    def _pool(self) -> Executor:
        if self._executor is None:
            if self.inline:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix=self.name)
            else:
                context = multiprocessing.get_context("spawn")
                self._executor = ProcessPoolExecutor(
                    1, mp_context=context, initializer=_start_child, initargs=(os.getpid(),)
                )
        return self._executor

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in the worker process; its exceptions are raised here."""
        loop = asyncio.get_running_loop()
        starting = contextlib.nullcontext() if self.inline else _sigint_blocked()
        with starting:  # submit() starts the child process when there is none
            future = loop.run_in_executor(self._pool(), fn, *args)
        try:
            return await future
        except BrokenProcessPool:
            log.error("offload_process_died", pool=self.name)
            self._shutdown()
            raise

    async def warm(self, fn: Callable[[], object]) -> None:
        """Start the worker now (it imports what `fn`'s module needs), not at the first job."""
        try:
            await self.run(fn)
        except Exception as exc:  # the first real job starts it again and reports
            log.warning("offload_warm_failed", pool=self.name, error=repr(exc))

    def _shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def close(self) -> None:
        """Stop the worker process now; a job it was running is abandoned (every job is
        safe to run again from what Redis holds)."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        processes = list(getattr(executor, "_processes", {}).values())
        executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
        await asyncio.to_thread(executor.shutdown, True)

    def __repr__(self) -> str:
        return f"<Offload {self.name} inline={self.inline} started={self._executor is not None}>"
