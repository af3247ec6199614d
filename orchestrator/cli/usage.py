"""`ptu usage`: token usage per tenant or deployment over a period, with PTU cost shares.

Reads the hourly usage the ingress and the workers record (`UsageLedger`), so it
counts every call answered with usage, high and low priority, PTU and spillover.
Resolution is one UTC hour: a period is widened to whole hours.

With `PTU_PTU_HOURLY_PRICE`, each provisioned deployment costs
`price x ptus x hours` over the period whatever it was used for (that is how
PTUs are billed), and each tenant is charged the part of that cost its tokens
took: its share of the deployment's input-token equivalents (prompt +
completion x the model's output weight, the unit the deployment's capacity is
measured in). Standard (pay-as-you-go) deployments have no PTU cost: with their
`input_price_per_mtok` / `output_price_per_mtok` set in `PTU_DEPLOYMENTS`, their tokens
(among them the calls Azure spilled over to them from a PTU, which are charged to the
standard deployment that served them, never to the PTU) cost `payg_cost`.

PTU pools: usage is recorded on the member that served each call, so `--by deployment`
shows each member (with its `pool` column) and its own PTU cost, at its own price
(`ptu_hourly_price` of its `PTU_DEPLOYMENTS` entry, else `PTU_PTU_HOURLY_PRICE`);
`--by pool` adds the members up (a deployment in no pool is its own line).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from orchestrator.cli.batch_costs import COLUMNS as BATCH_COLUMNS
from orchestrator.cli.batch_costs import batch_rows
from orchestrator.core import redis_client, startup
from orchestrator.core.errors import PTUError
from orchestrator.core.pools import pool_of_names
from orchestrator.core.settings import Settings
from orchestrator.tenants.config import Tenancy
from orchestrator.tenants.ledger import HOUR_S, UsageLedger, UsageRow

_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*([mhdw])")
_UNIT_S = {"m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
COLUMNS = ("requests", "prompt_tokens", "cached_tokens", "completion_tokens", "total_tokens")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--since`, `--until`, `--by`, `--format`."""
    parser.add_argument(
        "--since", default="24h", help="ISO time (UTC unless it says) or an age: 90m, 24h, 7d, 2w"
    )
    parser.add_argument("--until", default="now", help="ISO time, an age, or 'now'")
    parser.add_argument(
        "--by", choices=("tenant", "deployment", "pool", "batch"), default="tenant",
        help="batch: each batch created in the period, its lines per target and its cost",
    )  # fmt: skip
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")


def parse_time(text: str, now: float) -> float:
    """Epoch seconds of an ISO 8601 time (naive = UTC), an age such as `24h`, or `now`."""
    value = text.strip()
    if value == "now":
        return now
    match = _RELATIVE.fullmatch(value)
    if match:
        return now - float(match.group(1)) * _UNIT_S[match.group(2)]
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise PTUError(
            f"not a time: {text!r} (use ISO 8601 such as 2026-03-01T00:00, or 24h)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


@dataclass(frozen=True, slots=True)
class Period:
    """Whole UTC hours from `start` to `end` (epoch seconds)."""

    start: float
    end: float

    @property
    def hours(self) -> float:
        """Length in hours."""
        return (self.end - self.start) / HOUR_S


def period_of(since: float, until: float) -> Period:
    """The period widened to whole hours (usage is kept per hour)."""
    if until <= since:
        raise PTUError("--until must be after --since")
    start = since // HOUR_S * HOUR_S
    end = -(-until // HOUR_S) * HOUR_S
    return Period(start, end)


def summarise(
    rows: Iterable[UsageRow], by: str, settings: Settings, period: Period
) -> list[dict[str, Any]]:
    """One line per tenant or deployment, with cost columns when a PTU price is set."""
    lines: dict[str, dict[str, Any]] = {}
    equivalents: dict[tuple[str, str], float] = {}
    pools = pool_of_names(settings.deployments)
    for row in rows:
        key = _key(row, by, pools)
        line = lines.setdefault(key, {by: key, **dict.fromkeys(COLUMNS, 0)})
        if by == "deployment" and pools:
            line["pool"] = pools.get(row.deployment, "")
        line["requests"] += row.requests
        line["prompt_tokens"] += row.prompt_tokens
        line["cached_tokens"] += row.cached_tokens
        line["completion_tokens"] += row.completion_tokens
        line["total_tokens"] += row.prompt_tokens + row.completion_tokens
        deployment = settings.deployment(row.deployment)
        paid = (
            None
            if deployment is None
            else deployment.payg_cost(row.prompt_tokens, row.completion_tokens)
        )
        if paid is not None and deployment is not None and deployment.kind == "standard":
            line["payg_cost"] = line.get("payg_cost", 0.0) + paid
        if deployment is not None and deployment.kind == "provisioned":
            weight = deployment.weight
            pair = (row.tenant, row.deployment)
            equivalents[pair] = (
                equivalents.get(pair, 0.0) + row.prompt_tokens + row.completion_tokens * weight
            )
    priced = settings.ptu_hourly_price is not None or any(
        d.ptu_hourly_price is not None for d in settings.deployments
    )
    if priced:
        costs = _costs(equivalents, settings, period, by)
        total = sum(costs.values())
        for key, line in lines.items():
            line["ptu_cost"] = round(costs.get(key, 0.0), 2)
            line["ptu_share"] = round(costs.get(key, 0.0) / total, 4) if total else 0.0
    if any(d.payg_cost(0, 0) is not None for d in settings.deployments if d.kind == "standard"):
        for line in lines.values():
            line["payg_cost"] = round(line.get("payg_cost", 0.0), 6)
    return [lines[k] for k in sorted(lines)]


def _costs(
    equivalents: dict[tuple[str, str], float],
    settings: Settings,
    period: Period,
    by: str,
) -> dict[str, float]:
    """Each tenant's (deployment's, pool's) part of the PTU cost of the used deployments,
    each deployment at its own price (else `PTU_PTU_HOURLY_PRICE`)."""
    out: dict[str, float] = {}
    for d in settings.deployments:
        price = d.ptu_hourly_price if d.ptu_hourly_price is not None else settings.ptu_hourly_price
        if d.kind != "provisioned" or d.ptus is None or price is None:
            continue
        cost = price * d.ptus * period.hours
        used = {t: v for (t, name), v in equivalents.items() if name == d.name}
        total = sum(used.values())
        if by in ("deployment", "pool"):
            key = d.pool if by == "pool" and d.pool is not None else d.name
            if total:
                out[key] = out.get(key, 0.0) + cost
            continue
        for tenant, value in used.items():
            if total:
                out[tenant] = out.get(tenant, 0.0) + cost * value / total
    return out


def _key(row: UsageRow, by: str, pools: Mapping[str, str]) -> str:
    if by == "tenant":
        return row.tenant
    if by == "pool":
        return pools.get(row.deployment, row.deployment)
    return row.deployment


def render(lines: Sequence[dict[str, Any]], fmt: str, by: str, period: Period) -> str:
    """The summary as a table, CSV or JSON."""
    columns = [by, *(["pool"] if lines and "pool" in lines[0] else []), *COLUMNS]
    if by == "batch":
        columns = [by, *BATCH_COLUMNS]
    if lines and "ptu_cost" in lines[0]:
        columns += ["ptu_share", "ptu_cost"]
    if lines and "payg_cost" in lines[0]:
        columns += ["payg_cost"]
    if fmt == "json":
        return json.dumps(
            {
                "since": _iso(period.start),
                "until": _iso(period.end),
                "by": by,
                "rows": list(lines),
            },
            indent=2,
        )
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(lines)
        return out.getvalue().rstrip("\n")
    cells = [columns] + [[_cell(line.get(c)) for c in columns] for line in lines]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    text = [f"usage {_iso(period.start)} .. {_iso(period.end)} by {by}"]
    for n, row in enumerate(cells):
        pairs = enumerate(zip(row, widths, strict=True))
        padded = [v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in pairs]
        text.append("  ".join(padded))
        if n == 0:
            text.append("  ".join("-" * w for w in widths))
    if not lines:
        text.append("(no usage recorded in this period)")
    return "\n".join(text)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%MZ")


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    """Print the usage summary."""
    assert settings is not None
    now = time.time()
    period = period_of(parse_time(args.since, now), parse_time(args.until, now))

    async def main() -> list[UsageRow] | list[dict[str, Any]]:
        redis = redis_client.connect_view(settings.redis)
        try:
            await startup.check_redis(redis, settings.redis_url)
            tenancy = Tenancy(settings.tenants, settings.api_keys)
            if args.by == "batch":
                return await batch_rows(redis, tenancy.names(), period.start, period.end)
            return await UsageLedger(redis, tenancy).rows(period.start, period.end)
        finally:
            await redis.aclose()

    rows = asyncio.run(main())
    if args.by == "batch":
        lines: list[dict[str, Any]] = rows  # type: ignore[assignment]
    else:
        lines = summarise(rows, args.by, settings, period)  # type: ignore[arg-type]
    print(render(lines, args.format, args.by, period))
    return 0
