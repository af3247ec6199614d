"""`ptu bench cost`'s scale-out phases: one ingress process against `ptu ingress --workers 2`
at saturation, and one, two and four `ptu worker` processes draining the same queue.

Ingress: closed-loop clients (the highest concurrency of the run) through one ingress
process, then, on a fresh ingress with `PTU_INGRESS_WORKERS=2`, the same clients: requests/s
of each and the CPU of the whole process tree (the supervisor and its processes) from the
clock's start (after the warm-up) to the end, back to back so the machine's other load is
as alike as it can be; each arm starts once every process of the tree is idle.

Workers: the queue is filled through the ingress, which then stops; for each count the
deployment's low-priority dispatch is held paused (its throttle pause key, refreshed) while
the workers start, so none starts draining before the last one is up; calls/s is what the
simulator counts from the first call after the pause until `calls` more.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import httpx2
import redis

from bench.harness.stack import Stack
from bench.harness.traffic import chat_url
from bench.scenarios.cost_measures import Reading
from bench.scenarios.cost_probe import closed_loop, low_calls
from bench.scenarios.overhead import BODY
from bench.scenarios.waiting_probe import cpu_s, settled
from orchestrator.core import keys

HIGH = {"x-priority": "high"}
SETTLE_TIMEOUT_S = 15.0
PAUSE_MS = 1500
"""The hold on the workers while they start (refreshed every `PAUSE_MS / 3`)."""


def tree(pid: int) -> list[int]:
    """`pid` and every process below it (/proc children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
    return out


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of `pid` and its descendants alive now."""
    total = 0.0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            total += cpu_s(p)
    return total


async def saturation(stack: Stack, concurrency: int, step_s: float) -> dict[str, Any]:
    """Requests/s of the stack's ingress under `concurrency` closed-loop clients, and the CPU
    its process tree used per request."""
    pid = stack.children["ingress"].proc.pid
    url = chat_url(stack.ingress_url, stack.sim.deployment)
    for p in tree(pid):  # every process done starting (one answering /healthz is not all)
        await settled(p, SETTLE_TIMEOUT_S)

    def read() -> Reading:
        return Reading(time.perf_counter(), {}, 0.0, {"tree": tree_cpu_s(pid)})

    load = await closed_loop(url, HIGH, BODY, concurrency, step_s, read)
    assert load.start is not None
    used = tree_cpu_s(pid) - load.start.process_cpu_s["tree"]
    return {
        "per_s": load.per_s,
        "errors": load.errors,
        "requests": load.ok,
        "process_cpu_ms": round(used * 1000 / load.ok, 3) if load.ok else None,
        "processes": len(tree(pid)),
    }


def ingress_scale(
    stack: Stack, env: Mapping[str, str], concurrency: int, step_s: float
) -> dict[str, Any]:
    """One ingress process (the stack's, running) against two on a fresh ingress."""
    one = asyncio.run(saturation(stack, concurrency, step_s))
    stack.stop("ingress")
    stack.start_ingress(stack.base_env(**env, PTU_INGRESS_WORKERS="2"))
    two = asyncio.run(saturation(stack, concurrency, step_s))
    stack.stop("ingress")
    ratio = two["per_s"] / one["per_s"] if one["per_s"] and two["per_s"] else None
    return {
        "concurrency": concurrency,
        "one": one,
        "two": two,
        "ratio": None if ratio is None else round(ratio, 3),
    }


@contextlib.contextmanager
def held(redis_url: str, deployment: str) -> Iterator[None]:
    """The deployment's low-priority dispatch paused (every worker) until the block ends."""
    stop = False

    def refresh() -> None:
        with redis.Redis.from_url(redis_url) as client:
            while not stop:
                client.set(keys.pause(deployment), "1", px=PAUSE_MS)
                time.sleep(PAUSE_MS / 3000)

    thread = threading.Thread(target=refresh, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop = True
        thread.join()


async def _drain_rate(sim_url: str, deployment: str, calls: int, timeout_s: float) -> float | None:
    """Calls/s from the first low-priority call the simulator sees until `calls` more."""
    deadline = time.perf_counter() + timeout_s
    async with httpx2.AsyncClient(timeout=5.0) as client:
        start_count = await low_calls(client, sim_url, deployment)
        while (first := await low_calls(client, sim_url, deployment)) == start_count:
            if time.perf_counter() > deadline:
                return None
            await asyncio.sleep(0.01)
        started = time.perf_counter()
        while await low_calls(client, sim_url, deployment) < first + calls:
            if time.perf_counter() > deadline:
                return None
            await asyncio.sleep(0.02)
        return round(calls / (time.perf_counter() - started), 1)


def worker_scale(
    stack: Stack, env: Mapping[str, str], counts: Sequence[int], calls: int, timeout_s: float
) -> list[dict[str, Any]]:
    """Calls/s of `n` worker processes for each `n` of `counts` (the queue filled before)."""
    rows = []
    for n in counts:
        names = [f"scale-worker-{i}" for i in range(n)]
        with held(stack.redis_url, stack.sim.deployment):
            for name in names:
                stack.start_worker(stack.base_env(**env), name=name)
        rate = asyncio.run(_drain_rate(stack.sim_url, stack.sim.deployment, calls, timeout_s))
        for name in names:
            stack.stop(name)
        rows.append({"workers": n, "calls": calls, "per_s": rate})
    return rows
