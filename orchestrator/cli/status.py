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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from rich.console import Console
from rich.live import Live
from rich.table import Table

from orchestrator.breaker.shared import read_view
from orchestrator.core import incarnation, redis_client, startup
from orchestrator.core.boundary import redis_boundary
from orchestrator.core.errors import (
    PTUError,
    QueueUnavailable,
    StoreUnavailable,
    UtilisationUnavailable,
)
from orchestrator.core.results import result_counts
from orchestrator.core.runtime import pause, run_until_signal
from orchestrator.core.schemas import WORK_CLASSES, WorkClass
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


LEGEND = "\n".join(
    (
        "in flight: requests taken off the queue and not finished (calling, or waiting to retry)",
        "waiting:   worker lanes holding a slot while they wait for a message (ready, no work)",
        "queued:    requests no worker has taken yet",
        "low/batch: the queue (waiting or in flight) by class; a tenant's low work goes first",
        "limit:     low-priority calls the throttle allows now / at most",
        "spilled:   low-priority calls Azure served from a standard deployment (pay-as-you-go)",
    )
)


def queued(depth: int | None, in_flight: int) -> int | None:
    """Requests still waiting in the queue: its depth less those workers hold (never < 0)."""
    return None if depth is None else max(0, depth - in_flight)


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
        queue = make_queue(settings, d.name, redis, "ptu-status")
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
                dead_letters=await DeadLetterStore(redis, d.name).depth(),
                counts=counts,
                calibration=None if reading is None else reading.calibration,
            )
        )
    return rows


def _num(value: float | int | None, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def loss_line(marker: incarnation.Marker | None) -> str | None:
    """The line saying Redis lost its data, when it did (see `orchestrator.core.incarnation`)."""
    if marker is None or marker.lost_from is None:
        return None
    at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(marker.lost_at or 0))
    return (
        f"Redis lost its data at {at} UTC (data set {marker.lost_from} -> {marker.id}): "
        "requests accepted before then are gone; run Redis with AOF (appendfsync everysec)"
    )


def render(rows: Sequence[Row], source: str, marker: incarnation.Marker | None = None) -> Table:
    """The rich table of a snapshot (with the data-loss line as its caption, if any)."""
    loss = loss_line(marker)
    table = Table(
        title=f"ptu status (utilisation source: {source})",
        caption=LEGEND if loss is None else f"{loss}\n{LEGEND}",
        caption_justify="left",
    )
    for header in (
        "deployment", "utilisation", "age", "model", "observed", "correction", "unseen",
        "limit", "in flight", "waiting", "queued", "low/batch", "workers", "results/s",
        "completed", "failed", "expired", "spilled", "circuit", "dead letters",
    ):  # fmt: skip
        table.add_column(header, justify="left" if header == "deployment" else "right")
    for r in rows:
        util = _num(r.utilisation, "{:.1%}")
        if r.stale:
            util += " (stale)"
        w = r.workers
        total = r.counts or {}
        circuit = r.circuit if r.circuit != "open" else f"open {r.circuit_left_s:.0f}s"
        table.add_row(
            r.deployment,
            util,
            _num(r.reading_age_s, "{:.1f}s"),
            *calibration_cells(r.calibration),
            f"{r.limit}/{r.max_concurrency}",
            str(w.requests),
            str(w.waiting),
            _num(queued(r.queue_depth, w.requests)),
            class_cell(r.class_depth),
            str(w.workers),
            f"{w.throughput_per_s:.1f}",
            str(total.get("completed", w.completed)),
            str(total.get("failed", w.failed)),
            str(total.get("expired", w.expired)),
            str(total.get("spilled", 0)),
            circuit,
            str(r.dead_letters),
        )
    return table


def class_cell(by_class: Mapping[WorkClass, int] | None) -> str:
    """The queue's depth per class, `low/batch` (waiting or in flight)."""
    if by_class is None:
        return "-"
    return "/".join(str(by_class.get(c, 0)) for c in WORK_CLASSES)


def calibration_cells(cal: Calibration | None) -> tuple[str, str, str, str]:
    """Model, observed (with its age, the header meaning learnt, the filter's uncertainty and
    whether the header may lower the reading), correction (with its age) and unseen share."""
    if cal is None:
        return "-", "-", "-", "-"
    observed = _num(cal.observed, "{:.1%}")
    if cal.observed_age_s is not None:
        observed += f" ({cal.observed_age_s:.1f}s)"
    correction = f"{cal.correction:+.1%}"
    if cal.correction_age_s is not None:
        correction += f" ({cal.correction_age_s:.1f}s)"
    if cal.throttled_s > 0:
        correction += f" 429 {cal.throttled_s:.1f}s"
    if cal.model_kind != "bucket":  # the header meaning learnt, and how sure the filter is
        observed += f" {cal.model_kind}"
        if cal.uncertainty is not None:
            observed += f" ±{cal.uncertainty:.1%}"
        observed += "" if cal.trusted else " (raise only)"
    return f"{cal.model:.1%}", observed, correction, f"{cal.unseen:.1%}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--once` and `--interval`."""
    parser.add_argument("--once", action="store_true", help="print one snapshot and exit")
    parser.add_argument("--interval", type=float, default=1.0, help="refresh period (s)")


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

        async def snapshot() -> Table:
            with redis_boundary("ptu status"):  # the counters and views it reads directly
                rows = await collect(settings, redis, source, time.time())
                return render(rows, name, await incarnation.read(redis))

        try:
            table = await snapshot()
            if args.once:
                console.print(table)
                return 0
            with Live(table, console=console, auto_refresh=False) as live:
                while not stop.is_set():
                    await pause(args.interval, stop)
                    live.update(await snapshot(), refresh=True)
            return 0
        except (StoreUnavailable, OSError) as exc:
            cause = type(exc.__cause__ or exc).__name__  # the client's error, not our wrapper
            where = startup.redis_address(settings.redis_url)
            raise PTUError(f"Redis at {where} stopped answering ({cause}; PTU_REDIS_URL)") from exc
        finally:
            await source.close()
            await redis.aclose()

    return run_until_signal(main)
