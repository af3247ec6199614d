"""`ptu status`: a live view per deployment of utilisation, concurrency, queue and throughput.

Everything comes from shared state, so it works from any machine with the Redis
URL: the utilisation from the configured source, the limit from the throttle
curve, the global in-flight count from the slot table, the queue depth from the
queue backend, and throughput and results from the workers' heartbeats
(`keys.WORKERS`; heartbeats older than their `ttl_s` are ignored). Result counts,
the circuit breaker and the dead-letter depth are read from Redis, so they survive
worker restarts. The work columns do not overlap (see `LEGEND`): a worker leases
a slot before it waits for a message, so an idle lane holds one without any work,
shown as "waiting", not "in flight"; and the queue's depth counts messages taken
but not yet acknowledged, so "queued" is the depth less the requests in flight.
With the calibrated estimate, the view also shows what the
reading is made of: the token-event model, the deployment's newest utilisation
header, the correction learnt from the deployment's signals (with its age, and the
time left of a 429's pause) and the unseen share (load the model cannot see: other
applications on the same PTU, or capacity the table over-states).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from rich.console import Console
from rich.live import Live
from rich.table import Table

from orchestrator.breaker.shared import read_view
from orchestrator.cli.status_view import document, render, render_compact
from orchestrator.core import incarnation, redis_client, startup
from orchestrator.core.boundary import redis_boundary
from orchestrator.core.errors import (
    PTUError,
    QueueUnavailable,
    StoreUnavailable,
    UtilisationUnavailable,
)
from orchestrator.core.pools import queue_key
from orchestrator.core.results import result_counts
from orchestrator.core.runtime import pause, run_until_signal
from orchestrator.core.schemas import WorkClass
from orchestrator.core.settings import Settings
from orchestrator.queues.classes import depth_by_class
from orchestrator.queues.dead_letter import DeadLetterStore
from orchestrator.queues.factory import make_queue
from orchestrator.throttle.policy import Curve, limit_for
from orchestrator.throttle.slots import SlotTable
from orchestrator.utilisation.base import Calibration, UtilisationSource
from orchestrator.utilisation.factory import make_source
from orchestrator.worker.heartbeats import Heartbeats


@dataclass(frozen=True, slots=True)
class WorkerSummary:
    """What the live workers report for one deployment."""

    workers: int = 0
    in_flight: int = 0
    throughput_per_s: float = 0.0
    completed: int = 0
    failed: int = 0
    expired: int = 0
    waiting: int = 0
    """Lanes holding a slot while they wait for a message."""
    requests: int = 0
    """Requests taken off the queue and not finished (calling, or waiting to retry)."""


@dataclass(frozen=True, slots=True)
class Row:
    """One deployment's line in the view."""

    deployment: str
    utilisation: float | None
    reading_age_s: float | None
    stale: bool
    limit: int
    max_concurrency: int
    global_in_flight: int | None
    queue_depth: int | None
    workers: WorkerSummary
    circuit: str = "closed"
    circuit_left_s: float = 0.0
    dead_letters: int = 0
    counts: Mapping[str, int] | None = None
    """Results written since the start of time (Redis), by status."""
    calibration: Calibration | None = None
    """Model, observed value and correction behind `utilisation` (calibrated estimate)."""
    class_depth: Mapping[WorkClass, int] | None = None
    """The queue's depth (waiting or in flight) per queued class."""
    pool: str | None = None
    """The PTU pool this deployment is a member of: its queue and dead letters are the pool's."""


_BEAT_FIELDS = {
    "in_flight": "in_flight",
    "throughput_per_s": "throughput_per_s",
    "completed": "completed",
    "failed": "failed",
    "expired": "expired",
    "waiting": "waiting",
    "requests": "requests_in_flight",
}
"""`WorkerSummary` field -> the heartbeat lane's key it sums."""


def summarise(heartbeats: Sequence[Mapping[str, Any]], now: float) -> dict[str, WorkerSummary]:
    """Fold fresh heartbeats into per-deployment sums (stale ones are dead workers)."""
    sums: dict[str, dict[str, float]] = {}
    for beat in heartbeats:
        at, ttl = beat.get("at"), beat.get("ttl_s", 15.0)
        if not isinstance(at, int | float) or now - at > ttl:
            continue
        for name, lane in (beat.get("deployments") or {}).items():
            acc = sums.setdefault(name, dict.fromkeys(WorkerSummary.__slots__, 0.0))
            acc["workers"] += 1
            for field, key in _BEAT_FIELDS.items():
                value = lane.get(key)
                acc[field] += value if isinstance(value, int | float) else 0
    return {
        name: WorkerSummary(
            workers=int(a["workers"]),
            in_flight=int(a["in_flight"]),
            throughput_per_s=a["throughput_per_s"],
            completed=int(a["completed"]),
            failed=int(a["failed"]),
            expired=int(a["expired"]),
            waiting=int(a["waiting"]),
            requests=int(a["requests"]),
        )
        for name, a in sums.items()
    }


async def collect(
    settings: Settings, redis: aioredis.Redis, source: UtilisationSource, now: float
) -> list[Row]:
    """One snapshot of every configured deployment."""
    workers = summarise(await Heartbeats(redis).read(), now)
    rows = []
    for d in settings.deployments:
        curve = Curve(*settings.thresholds(d))
        try:
            reading = await source.read(d.name)
        except UtilisationUnavailable:
            reading = None
        limit, reason = limit_for(reading, now, source.max_age_s, curve)
        queue = make_queue(settings, queue_key(d), redis, "ptu-status")
        try:
            by_class: dict[WorkClass, int] | None = await depth_by_class(queue)
        except QueueUnavailable:
            by_class = None
        finally:
            await queue.close()
        view = await read_view(redis, d.name)
        counts = await result_counts(redis, d.name)
        rows.append(
            Row(
                deployment=d.name,
                utilisation=None if reading is None else reading.value,
                reading_age_s=None if reading is None else reading.age(now),
                stale=reason != "ok",
                limit=limit,
                max_concurrency=curve.maximum,
                global_in_flight=await SlotTable(redis, d.name).count(),
                queue_depth=None if by_class is None else sum(by_class.values()),
                class_depth=by_class,
                workers=workers.get(d.name, WorkerSummary()),
                circuit=view.state,
                circuit_left_s=view.open_left_s,
                dead_letters=await DeadLetterStore(redis, queue_key(d)).depth(),
                counts=counts,
                calibration=None if reading is None else reading.calibration,
                pool=d.pool,
            )
        )
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--once`, `--interval`, and the view: compact (default), `--wide` or `--json`."""
    parser.add_argument("--once", action="store_true", help="print one snapshot and exit")
    view = parser.add_mutually_exclusive_group()
    view.add_argument(
        "--wide",
        action="store_true",
        help="every column: the reading's make-up and each result count (about 200 columns)",
    )
    view.add_argument(
        "--json",
        action="store_true",
        help="one JSON document per snapshot, a line each: every field of every deployment",
    )
    parser.add_argument("--interval", type=float, default=1.0, help="refresh period (s)")


Snapshot = Callable[[], Awaitable[tuple[list[Row], incarnation.Marker | None, float]]]


async def show(
    args: argparse.Namespace, console: Console, snapshot: Snapshot, source: str, stop: asyncio.Event
) -> None:
    """Print the view: JSON documents, or a table (once, or live until `stop`)."""

    async def table() -> Table:
        rows, marker, _ = await snapshot()
        return (render if args.wide else render_compact)(rows, source, marker)

    async def emit_json() -> None:
        rows, marker, now = await snapshot()
        print(document(rows, source, now, marker), flush=True)

    if args.json:
        await emit_json()
        while not args.once and not stop.is_set():
            await pause(args.interval, stop)
            if not stop.is_set():
                await emit_json()
        return
    first = await table()
    if args.once:
        console.print(first)
        return
    with Live(first, console=console, auto_refresh=False) as live:
        while not stop.is_set():
            await pause(args.interval, stop)
            live.update(await table(), refresh=True)


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    """Show the view until SIGINT/SIGTERM (or once)."""
    assert settings is not None
    if not settings.deployments:
        raise PTUError("PTU_DEPLOYMENTS is empty: nothing to show")
    console = Console()
    if not console.is_terminal:
        console = Console(width=240)  # piped output: no cell squeezed onto two lines

    async def main(stop: asyncio.Event) -> int:
        redis = redis_client.connect_view(settings.redis)
        try:
            await startup.check_redis(redis, settings.redis_url)
        except StoreUnavailable:
            await redis.aclose()
            raise
        source = make_source(settings, redis)
        name = settings.utilization_source

        async def snapshot() -> tuple[list[Row], incarnation.Marker | None, float]:
            with redis_boundary("ptu status"):  # the counters and views it reads directly
                now = time.time()
                rows = await collect(settings, redis, source, now)
                return rows, await incarnation.read(redis), now

        try:
            await show(args, console, snapshot, name, stop)
            return 0
        except BrokenPipeError:  # the reader of stdout went away: not Redis (cli.main)
            raise
        except (StoreUnavailable, OSError) as exc:
            cause = type(exc.__cause__ or exc).__name__  # the client's error, not our wrapper
            where = startup.redis_address(settings.redis_url)
            raise PTUError(f"Redis at {where} stopped answering ({cause}; PTU_REDIS_URL)") from exc
        finally:
            await source.close()
            await redis.aclose()

    return run_until_signal(main)
