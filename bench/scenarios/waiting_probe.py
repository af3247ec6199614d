"""The ingress process as `ptu bench waiting` samples it: RSS, CPU and Redis connections
from /proc, and the open-files limit the run needs."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

from bench.scenarios.waiting_measures import local_ports_to, socket_inodes, stat_cpu_s, status_kb

SETTLED_CORES = 0.25
"""CPU below which the ingress counts as done with a burst of arrivals."""


def raise_open_files(waiters: int) -> None:
    """Raise this process's soft open-files limit (the stack's processes inherit it) to
    what `waiters` connections on both ends need; one clear error when the hard limit
    is lower."""
    need = 2 * waiters + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise SystemExit(
                f"ptu bench waiting: {waiters} waiters need {need} open files, "
                f"the hard limit is {hard} (ulimit -Hn)"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def rss_kb(pid: int) -> int:
    """The process's resident set size now."""
    return status_kb(Path(f"/proc/{pid}/status").read_text(), "VmRSS") or 0


def redis_ports(pid: int, redis_port: int) -> set[int]:
    """Local ports of the process's established connections to the Redis port."""
    targets = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed while listed
            targets.append(os.readlink(fd))
    tables = "".join(Path(f"/proc/{pid}/net/{name}").read_text() for name in ("tcp", "tcp6"))
    return local_ports_to(tables, socket_inodes(targets), redis_port)


@dataclass
class Probe:
    """The ingress process as the run samples it."""

    pid: int
    redis_port: int
    t0: float
    samples: list[tuple[float, int, int, int]]
    """(s since start, VmRSS kB, Redis connections, calls held)."""

    async def run(self, held: list[asyncio.Task[tuple[int, str | None]]]) -> None:
        """Sample the RSS every 0.5 s, the Redis connections every 2 s (reading the socket
        table costs more), until cancelled."""
        conns = 0
        for i in itertools.count():
            if i % 4 == 0:
                conns = len(redis_ports(self.pid, self.redis_port))
            waiting = sum(1 for t in held if not t.done())
            self.samples.append((time.time() - self.t0, rss_kb(self.pid), conns, waiting))
            await asyncio.sleep(0.5)


def cpu_s(pid: int) -> float:
    """CPU seconds the process has used (user + system)."""
    return stat_cpu_s(Path(f"/proc/{pid}/stat").read_text(), os.sysconf("SC_CLK_TCK"))


async def settled(pid: int, timeout_s: float) -> float:
    """Until the process used less than `SETTLED_CORES` over one second (or `timeout_s`
    passed); the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        before = cpu_s(pid)
        await asyncio.sleep(1.0)
        if cpu_s(pid) - before < SETTLED_CORES:
            break
    return time.monotonic() - started
