"""Token limits of a tenant, as pure decisions: tokens per minute and quota per period.

Tokens per minute is a sliding window estimated from two fixed one-minute counters
(the previous minute weighted by the part of it still inside the trailing 60 s,
plus the current one), as rate limiters at the edge do: no per-request entries to
store, no burst of twice the limit at a minute boundary. A request is admitted
when the window plus its prompt estimate fits; otherwise it gets 429 with the
seconds until it would fit. A request larger than the whole limit is admitted
into an empty window, so it is not refused forever.

The quota counts every token of a calendar period (UTC: hour, day, week from
Monday, month); a request that would take the period past it gets 403
`token_quota_exceeded` until the period ends. Tokens are counted when a call
finishes, with its actual usage, whichever priority it had: a queued request
counts when it runs.
"""

from __future__ import annotations

import calendar
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from orchestrator.tenants.config import QuotaPeriod, TenantConfig

MINUTE_S = 60


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is not admitted, and for how long."""

    status: int
    """429 (tokens per minute) or 403 (quota)."""
    code: str
    message: str
    retry_after_s: float


def period_bounds(period: QuotaPeriod, now: float) -> tuple[int, int]:
    """(start, end) epoch seconds of the UTC calendar period containing `now`."""
    t = datetime.fromtimestamp(now, UTC)
    if period == "hourly":
        start = t.replace(minute=0, second=0, microsecond=0)
        end = start + timedelta(hours=1)
    elif period == "daily":
        start = t.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=1)
    elif period == "weekly":
        start = (t - timedelta(days=t.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=7)
    else:
        start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        days = calendar.monthrange(start.year, start.month)[1]
        end = start + timedelta(days=days)
    return int(start.timestamp()), int(end.timestamp())


def window_tokens(previous: int, current: int, now: float) -> float:
    """Tokens in the trailing minute, estimated from the two fixed minute counters."""
    into = (now % MINUTE_S) / MINUTE_S
    return previous * (1.0 - into) + current


def tpm_wait_s(limit: int, previous: int, current: int, need: int, now: float) -> float:
    """Seconds until a request of `need` tokens fits the per-minute limit (0: it fits now)."""
    need = min(need, limit)
    if window_tokens(previous, current, now) + need <= limit:
        return 0.0
    into = now % MINUTE_S
    if current + need <= limit and previous > 0:
        # the previous minute's share fades linearly: wait until enough of it has gone
        fraction = 1.0 - (limit - current - need) / previous
        return max(0.0, fraction * MINUTE_S - into) + 0.001
    # wait for the next minute, where this minute's tokens fade in turn
    left = MINUTE_S - into
    if current <= 0:
        return left
    fraction = max(0.0, 1.0 - (limit - need) / current)
    return left + fraction * MINUTE_S + 0.001


def decide(
    tenant: TenantConfig,
    *,
    previous_minute: int,
    current_minute: int,
    period_used: int,
    need: int,
    now: float,
) -> Refusal | None:
    """None when `tenant` may send a request of `need` (estimated) tokens now."""
    if tenant.token_quota is not None and period_used + need > tenant.token_quota:
        _, end = period_bounds(tenant.token_quota_period, now)
        return Refusal(
            403,
            "token_quota_exceeded",
            f"tenant {tenant.name!r} has used {period_used} of its "
            f"{tenant.token_quota_period} quota of {tenant.token_quota} tokens; "
            f"it renews at {datetime.fromtimestamp(end, UTC).isoformat()}",
            max(0.0, end - now),
        )
    if tenant.tokens_per_minute is not None:
        wait = tpm_wait_s(tenant.tokens_per_minute, previous_minute, current_minute, need, now)
        if wait > 0:
            return Refusal(
                429,
                "tokens_per_minute_exceeded",
                f"tenant {tenant.name!r} is over its limit of {tenant.tokens_per_minute} "
                f"tokens per minute; retry after {math.ceil(wait)} s",
                wait,
            )
    return None
