"""How `ptu status` shows a snapshot: a compact table, the wide one, or JSON.

The compact view (the default) fits 100 columns: per deployment the utilisation
(with its age), the limit, the requests in flight, queued and by class, throughput,
the circuit and the dead letters. The wide view (`--wide`, about 200 columns) adds the
workers, the waiting lanes, the reading's make-up (model, observed, correction,
unseen) and the result counts. `--json` prints every field of each `Row`, one JSON
document per snapshot.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rich import box
from rich.table import Table

from orchestrator.core import incarnation
from orchestrator.core.schemas import WORK_CLASSES, WorkClass
from orchestrator.utilisation.base import Calibration

if TYPE_CHECKING:
    from orchestrator.cli.status import Row

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
    """The wide table of a snapshot, every column (with the data-loss line as its caption)."""
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
        w = r.workers
        completed, failed, expired, spilled = result_counts(r)
        table.add_row(
            name_cell(r),
            utilisation_cell(r),
            _num(r.reading_age_s, "{:.1f}s"),
            *calibration_cells(r.calibration),
            f"{r.limit}/{r.max_concurrency}",
            str(w.requests),
            str(w.waiting),
            _num(queued(r.queue_depth, w.requests)),
            class_cell(r.class_depth),
            str(w.workers),
            f"{w.throughput_per_s:.1f}",
            str(completed),
            str(failed),
            str(expired),
            str(spilled),
            circuit_cell(r),
            str(r.dead_letters),
        )
    return table


def name_cell(row: Row) -> str:
    """The deployment's name, and its pool's when it is a member of one."""
    return row.deployment if row.pool is None else f"{row.deployment} (pool {row.pool})"


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


COMPACT_LEGEND = "\n".join(
    (
        "utilisation: the reading and its age; limit: low-priority calls allowed now / at most",
        "in flight: requests workers hold; queued: not taken yet; low/batch: the queue by class",
        "--wide: every column (workers, waiting lanes, the reading's make-up, result counts)",
    )
)


def utilisation_cell(row: Row) -> str:
    """The reading, marked when stale."""
    util = _num(row.utilisation, "{:.1%}")
    return f"{util} (stale)" if row.stale else util


def circuit_cell(row: Row) -> str:
    """The breaker's state, with the time it stays open."""
    return row.circuit if row.circuit != "open" else f"open {row.circuit_left_s:.0f}s"


def result_counts(row: Row) -> tuple[int, int, int, int]:
    """Completed, failed, expired and spilled results (Redis's counts, else the workers')."""
    total, w = row.counts or {}, row.workers
    return (
        total.get("completed", w.completed),
        total.get("failed", w.failed),
        total.get("expired", w.expired),
        total.get("spilled", 0),
    )


def render_compact(
    rows: Sequence[Row], source: str, marker: incarnation.Marker | None = None
) -> Table:
    """The default view: one line per deployment within 100 columns."""
    loss = loss_line(marker)
    table = Table(
        title=f"ptu status ({source})",
        caption=COMPACT_LEGEND if loss is None else f"{loss}\n{COMPACT_LEGEND}",
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        pad_edge=False,
        show_edge=False,
    )
    for header in (
        "deployment", "utilisation", "limit", "in flight", "queued", "low/batch", "results/s",
        "circuit", "dlq",
    ):  # fmt: skip
        if header == "deployment":  # a long name folds onto a second line, never cut short
            table.add_column(header, overflow="fold")
        else:
            table.add_column(header, justify="right")
    for r in rows:
        w = r.workers
        age = "" if r.reading_age_s is None or r.stale else f" {r.reading_age_s:.1f}s"
        table.add_row(
            name_cell(r),
            utilisation_cell(r) + age,
            f"{r.limit}/{r.max_concurrency}",
            str(w.requests),
            _num(queued(r.queue_depth, w.requests)),
            class_cell(r.class_depth),
            f"{w.throughput_per_s:.1f}",
            circuit_cell(r),
            str(r.dead_letters),
        )
    return table


def document(
    rows: Sequence[Row], source: str, now: float, marker: incarnation.Marker | None = None
) -> str:
    """One snapshot as one JSON document (one line): every field of every `Row`."""
    deployments: list[dict[str, Any]] = []
    for r in rows:
        fields = dataclasses.asdict(r)
        fields["queued"] = queued(r.queue_depth, r.workers.requests)
        deployments.append(fields)
    lost = None if marker is None or marker.lost_from is None else dataclasses.asdict(marker)
    doc = {"at": now, "source": source, "redis_data_lost": lost, "deployments": deployments}
    return json.dumps(doc, separators=(",", ":"))
