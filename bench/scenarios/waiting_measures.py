"""Pure measures of `ptu bench waiting`: latencies, exactly-once tallies, target rows, /proc.

Nothing here does I/O: the scenario reads `/proc` and Redis and passes the text in, so
each measure is tested from tables (`tests/unit/test_bench_waiting.py`).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.report.metrics import percentile

WITHOUT = ("before", "after")
"""The phases without waiters, the reference of the interactive latency."""
ESTABLISHED = "01"
"""The `st` column of /proc/net/tcp for an established connection."""


@dataclass(frozen=True, slots=True)
class WaitRecord:
    """One waiting call: seconds from its submission to its answer (or to the end of the
    measurement when it had none: `answered` False, a lower bound)."""

    latency_s: float
    answered: bool
    first_status: int
    """200: answered while waiting; 202: the wait ran out, followed at its Location."""
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """p50 and max of an arm's waiting calls; `censored` when some had no answer (the
    figures are then lower bounds)."""

    p50_s: float | None
    max_s: float | None
    censored: bool


def summarise(records: Sequence[WaitRecord]) -> LatencySummary:
    """p50 and max latency; a call without an answer counts as its time waited so far."""
    values = [r.latency_s for r in records]
    return LatencySummary(
        percentile(values, 50),
        max(values) if values else None,
        any(not r.answered for r in records),
    )


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def verdict(
    measured: float | None, limit: float, *, lower_bound: bool = False, at_least: bool = False
) -> str:
    """`met` / `missed` against an upper `limit` (a lower one with `at_least`); a lower
    bound above an upper limit is missed, one at or below it cannot tell (`unknown`),
    nothing measured is `not measured`."""
    if measured is None:
        return "not measured"
    if at_least:
        return "met" if measured >= limit else "missed"
    if measured > limit:
        return "missed"
    return "unknown" if lower_bound else "met"


def target_row(
    target: str,
    measured: float | None,
    limit: float,
    unit: str = "",
    *,
    lower_bound: bool = False,
    at_least: bool = False,
) -> dict[str, Any]:
    """One row of the targets table: what, measured value, target (at most `limit`, or at
    least it with `at_least`), met or missed."""
    if measured is None:
        shown = "-"
    else:
        figure = f"{measured:.0f}" if float(measured).is_integer() else f"{measured:.3g}"
        shown = f"{'≥ ' if lower_bound else ''}{figure}{unit}"
    return {
        "target": target,
        "measured": shown,
        "target_value": f"{'≥' if at_least else '≤'} {limit:g}{unit}",
        "result": verdict(measured, limit, lower_bound=lower_bound, at_least=at_least),
    }


@dataclass(frozen=True, slots=True)
class Tally:
    """How N waiting calls were answered, counted by request id."""

    calls: int
    ok_200: int
    fell_back_202: int
    other: int
    distinct_ids: int
    repeated_ids: int
    """Request ids that more than one answer carried."""
    without_id: int

    @property
    def exactly_once(self) -> bool:
        """Every call answered 200, each with its own request id."""
        return (
            self.ok_200 == self.calls
            and self.distinct_ids == self.calls
            and self.repeated_ids == 0
            and self.without_id == 0
        )


def tally(answers: Sequence[tuple[int, str | None]]) -> Tally:
    """Count (status, request id) answers; status 0 stands for no answer (an error)."""
    ids = Counter(rid for _status, rid in answers if rid)
    return Tally(
        calls=len(answers),
        ok_200=sum(1 for status, _ in answers if status == 200),
        fell_back_202=sum(1 for status, _ in answers if status == 202),
        other=sum(1 for status, _ in answers if status not in (200, 202)),
        distinct_ids=len(ids),
        repeated_ids=sum(1 for n in ids.values() if n > 1),
        without_id=sum(1 for status, rid in answers if status in (200, 202) and not rid),
    )


def phase_of(at: float, marks: Mapping[str, float]) -> str:
    """The phase a call that started at `at` belongs to: the last mark at or before it
    (`marks`: phase name to start time; the mark `end` closes the last phase)."""
    name = "warmup"
    for mark, start in sorted(marks.items(), key=lambda item: item[1]):
        if start > at:
            break
        name = mark
    return name


def latency_by_phase(
    calls: Sequence[tuple[str, float, int]], prefix: str, phases: Sequence[str]
) -> dict[str, Any]:
    """Per phase: calls, errors (not 200), p50 and p99 ms of the 200s; the p99 without
    the waiters (`before` and `after` together) and the ratios of `held` and `draining`
    to it. `calls`: (phase, ms, status); keys start with `prefix`."""

    def ok(names: Sequence[str]) -> list[float]:
        return [ms for name, ms, status in calls if name in names and status == 200]

    def rounded(value: float | None, digits: int = 2) -> float | None:
        return None if value is None else round(value, digits)

    row: dict[str, Any] = {f"{prefix}_p99_without_ms": rounded(percentile(ok(WITHOUT), 99))}
    for name in phases:
        row[f"{prefix}_{name}_calls"] = sum(1 for n, _ms, _s in calls if n == name)
        row[f"{prefix}_{name}_errors"] = sum(1 for n, _ms, s in calls if n == name and s != 200)
        row[f"{prefix}_{name}_p50_ms"] = rounded(percentile(ok([name]), 50))
        row[f"{prefix}_{name}_p99_ms"] = rounded(percentile(ok([name]), 99))
    for name in ("held", "draining"):
        value = ratio(row.get(f"{prefix}_{name}_p99_ms"), row[f"{prefix}_p99_without_ms"])
        row[f"{prefix}_p99_ratio_{name}"] = rounded(value, 3)
    return row


def errors_by_status(answers: Sequence[tuple[int, str | None]]) -> dict[str, int]:
    """How many answers had each status other than 200 and 202 (0: no answer at all)."""
    counted = Counter(str(status) for status, _rid in answers if status not in (200, 202))
    return dict(sorted(counted.items()))


def phase_rates(marks: Mapping[str, float], values: Mapping[str, float]) -> dict[str, float]:
    """Per phase, how fast a counter read at each mark grew (CPU seconds per second: cores);
    a phase runs from its mark to the next one."""
    ordered = sorted(marks, key=lambda name: marks[name])
    return {
        name: (values[after] - values[name]) / (marks[after] - marks[name])
        for name, after in itertools.pairwise(ordered)
        if marks[after] > marks[name]
    }


def stat_cpu_s(stat_text: str, ticks_per_s: int) -> float:
    """User + system CPU seconds of a /proc/PID/stat text."""
    fields = stat_text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / ticks_per_s


def reply_counts(lengths: Mapping[str, int]) -> tuple[int, int]:
    """(missing, duplicated): request ids whose reply list holds no result, more than one."""
    return (
        sum(1 for n in lengths.values() if n == 0),
        sum(1 for n in lengths.values() if n > 1),
    )


def status_kb(status_text: str, field: str) -> int | None:
    """A `kB` field (`VmRSS`, `VmHWM`) of a /proc/PID/status text."""
    for line in status_text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def socket_inodes(fd_targets: Iterable[str]) -> set[str]:
    """The inodes of the sockets among a process's fd link targets (`socket:[123]`)."""
    return {t[len("socket:[") : -1] for t in fd_targets if t.startswith("socket:[")}


def local_ports_to(net_tcp_text: str, inodes: set[str], remote_port: int) -> set[int]:
    """Local ports of the established connections in /proc/PID/net/tcp(6) text that belong
    to `inodes` and go to `remote_port`."""
    ports = set()
    for line in net_tcp_text.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 10 or cols[3] != ESTABLISHED or cols[9] not in inodes:
            continue
        local, remote = cols[1], cols[2]
        if int(remote.rsplit(":", 1)[1], 16) == remote_port:
            ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def from_ports(
    client_list: Sequence[Mapping[str, Any]], ports: set[int]
) -> list[Mapping[str, Any]]:
    """The entries of Redis's `CLIENT LIST` that connect from one of `ports`."""
    found = []
    for client in client_list:
        port = str(client.get("addr", "")).rsplit(":", 1)[-1]
        if port.isdigit() and int(port) in ports:
            found.append(client)
    return found


def redis_clients(client_list: Sequence[Mapping[str, Any]], ports: set[int]) -> dict[str, Any]:
    """How many clients connect from `ports`, how many of them ran a command in the last
    second (`idle` 0: in use, not merely pooled) and which commands most, how many are
    subscriptions."""
    ours = from_ports(client_list, ports)
    active = [c for c in ours if int(c.get("idle", 0)) < 1]
    commands = Counter(str(c.get("cmd", "?")) for c in active).most_common(3)
    return {
        "clients": len(ours),
        "active_last_s": len(active),
        "active_commands": " ".join(f"{cmd}:{n}" for cmd, n in commands),
        "subscriptions": sum(1 for c in ours if int(c.get("psub", 0)) or int(c.get("sub", 0))),
    }


def many_targets(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The target rows of part 2."""
    n = row["waiters"]
    not_once = (
        n
        - row["answered_200"]
        + row["repeated_request_ids"]
        + row["reply_missing"]
        + row["reply_duplicated"]
    )
    return [
        target_row(f"{n} waiting calls: calls not answered exactly once with a 200", not_once, 0),
        target_row(f"ingress RSS growth, {n} calls held", row["rss_growth_mb"], 100.0, " MB"),
        target_row(
            "ingress Redis connections (peak) vs its pool size",
            row["redis_conns_peak"],
            float(row["redis_pool_size"]),
        ),
        target_row(
            f"interactive p99 with {n} calls held / without",
            row["ingress_p99_ratio_held"],
            1.2,
            "x",
        ),
    ]
