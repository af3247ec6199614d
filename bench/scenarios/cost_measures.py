"""Pure measures of `ptu bench cost`: Redis `INFO` text, deltas between two readings, the
cost of one request, the issue's targets.

A reading is taken before and after each phase; everything that changed in between is
divided by the requests the phase served. Redis counts a command run inside a script
(`redis.call`) as well as the `EVALSHA` that ran it, so a script's commands show by name.
Nothing here does I/O (`tests/unit/test_bench_cost.py`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.scenarios.waiting_measures import ratio, target_row

OWN_COMMANDS: Mapping[str, int] = {"info": 1}
"""What the harness itself runs between two readings: the first reading's `INFO` (Redis
counts a command once it has run, so a reading does not count itself)."""


def parse_commandstats(text: str) -> dict[str, int]:
    """Calls per command name of an `INFO commandstats` text (`cmdstat_hset:calls=3,...`);
    a subcommand keeps its parent's name (`client|setinfo`)."""
    calls: dict[str, int] = {}
    for line in text.splitlines():
        if not line.startswith("cmdstat_"):
            continue
        name, _, fields = line[len("cmdstat_") :].rpartition(":")
        for item in fields.split(","):
            key, _, value = item.partition("=")
            if key == "calls":
                calls[name.lower()] = int(value)
    return calls


def parse_redis_cpu_s(text: str) -> float:
    """`used_cpu_sys` + `used_cpu_user` (seconds, every thread of the server) of an
    `INFO cpu` text."""
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    try:
        return float(fields["used_cpu_sys"]) + float(fields["used_cpu_user"])
    except KeyError as exc:
        raise ValueError(f"INFO cpu text without {exc.args[0]}") from None


FAIL_OPEN_METRIC = "ptu_ingress_redis_fail_open_total"


def parse_fail_opens(text: str) -> int:
    """Redis calls the ingress went on without (`core/fail_open`: an error, its deadline or
    the cool-down after one), summed over `what`, from its /metrics text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(FAIL_OPEN_METRIC + "{") or line.startswith(FAIL_OPEN_METRIC + " "):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


@dataclass(frozen=True, slots=True)
class Reading:
    """Counters at one moment: Redis's calls per command and CPU seconds, and the CPU
    seconds of each measured process."""

    at: float
    commands: Mapping[str, int]
    redis_cpu_s: float
    process_cpu_s: Mapping[str, float]


def command_delta(
    before: Mapping[str, int], after: Mapping[str, int], own: Mapping[str, int] = OWN_COMMANDS
) -> dict[str, int]:
    """Calls per command between two readings, the harness's `own` calls taken out;
    commands that did not run are left out, the most called first."""
    delta = {}
    for name, calls in after.items():
        ran = calls - before.get(name, 0) - own.get(name, 0)
        if ran > 0:
            delta[name] = ran
    return dict(sorted(delta.items(), key=lambda item: (-item[1], item[0])))


def per_request(before: Reading, after: Reading, requests: int, process: str) -> dict[str, Any]:
    """What one request cost between two readings: Redis commands (in all and by name),
    Redis CPU ms and `process`'s CPU ms, each divided by `requests` (None without any)."""
    delta = command_delta(before.commands, after.commands)

    def each(total: float, digits: int) -> float | None:
        value = ratio(total, requests)
        return None if value is None else round(value, digits)

    process_s = after.process_cpu_s[process] - before.process_cpu_s[process]
    return {
        "requests": requests,
        "seconds": round(after.at - before.at, 2),
        "redis_commands": each(sum(delta.values()), 2),
        "redis_cpu_ms": each((after.redis_cpu_s - before.redis_cpu_s) * 1000.0, 4),
        "process": process,
        "process_cpu_ms": each(process_s * 1000.0, 3),
        "commands": {name: each(calls, 2) for name, calls in delta.items()},
    }


def top_commands(rows: Sequence[Mapping[str, Any]], n: int) -> list[str]:
    """The `n` command names with the most calls per request in any of `rows`."""
    most: dict[str, float] = {}
    for row in rows:
        for name, calls in row.get("commands", {}).items():
            most[name] = max(most.get(name, 0.0), calls or 0.0)
    return sorted(most, key=lambda name: (-most[name], name))[:n]


def worst(rows: Sequence[Mapping[str, Any]], key: str) -> float | None:
    """The highest `key` among `rows` that measured it."""
    values = [row[key] for row in rows if row.get(key) is not None]
    return max(values) if values else None


def targets(
    high: Sequence[Mapping[str, Any]],
    low: Mapping[str, Any] | None,
    two_processes: float | None = None,
) -> list[dict[str, Any]]:
    """The issue's targets, measured vs target: `high` one row per concurrency of the
    ingress (the worst of them is what counts), `low` the worker's row, `two_processes` the
    requests/s of `ptu ingress --workers 2` over one process's, at saturation."""
    by_c = {row["concurrency"]: row.get("per_s") for row in high}
    lowest, highest = (min(by_c), max(by_c)) if by_c else (0, 0)
    scaling = ratio(by_c.get(highest), by_c.get(lowest))
    low = low or {}
    return [
        target_row(
            "high-priority request: Redis commands (worst concurrency)",
            worst(high, "redis_commands"),
            20.0,
        ),
        target_row(
            "high-priority request: Redis CPU (worst concurrency)",
            worst(high, "redis_cpu_ms"),
            0.15,
            " ms",
        ),
        target_row(
            "high-priority request: ingress CPU (worst concurrency)",
            worst(high, "process_cpu_ms"),
            1.0,
            " ms",
        ),
        target_row("low-priority call: Redis commands", low.get("redis_commands"), 40.0),
        target_row(
            "one worker process: low-priority calls/s", low.get("per_s"), 400.0, at_least=True
        ),
        target_row(
            f"one ingress: requests/s at {highest} concurrent / at {lowest}",
            None if scaling is None else round(scaling, 3),
            0.8,
            "x",
            at_least=True,
        ),
        target_row(
            "ptu ingress --workers 2 / one process: requests/s at saturation",
            two_processes,
            1.7,
            "x",
            at_least=True,
        ),
    ]
