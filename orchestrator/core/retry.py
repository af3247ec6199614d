"""Retry decisions for upstream calls: pure functions of the error, the attempt and a random draw.

DESIGN.md §4: 429, 408, 5xx and timeouts are retried, honouring the service's
`retry-after-ms` when given and otherwise waiting a capped, jittered exponential
backoff; after `max_attempts` calls the request fails for good. Any other 4xx
fails at once. The decision reads the error's type and status code only.

This module is the one place for retry timing: the worker's upstream calls
(`decide`), the ingress's in-process batch lines (`decide` on the status the
proxy got), and the back-off of long-lived loops whose backend is down
(`outage_delay_s`: the worker's queue reads, the estimator's steps).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from orchestrator.core.errors import UpstreamError

Action = Literal["retry", "fail"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to back off between upstream attempts."""

    max_attempts: int
    base_s: float
    max_s: float

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_s <= 0 or self.max_s <= 0:
            raise ValueError("backoff bounds must be positive")


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do after a failed attempt: retry after `delay_s`, or fail."""

    action: Action
    delay_s: float = 0.0
    reason: str = ""


def backoff_s(attempt: int, base_s: float, max_s: float, draw: float) -> float:
    """Equal-jitter exponential backoff after `attempt` (1-based) failed calls.

    The ceiling doubles per attempt from `base_s` and is capped at `max_s`; the
    delay is uniform in [ceiling / 2, ceiling] for `draw` in [0, 1), so waiting
    never collapses to zero and workers that failed together spread out.
    """
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    if not 0.0 <= draw <= 1.0:
        raise ValueError("draw must lie in [0, 1]")
    # cap the exponent so huge attempt numbers cannot overflow the float
    ceiling = min(max_s, base_s * 2.0 ** min(attempt - 1, 62))
    return ceiling / 2.0 + ceiling / 2.0 * draw


def decide(
    error: UpstreamError, attempt: int, policy: RetryPolicy, rand: Callable[[], float]
) -> Decision:
    """Retry or fail after `attempt` (1-based) calls ended in `error`.

    A server-given `retry_after_s` wins over the computed backoff (it is the time
    the deployment needs to drain below 100 %), but is still capped at `max_s`
    so one absurd header cannot park a request for hours.
    """
    if not error.retryable:
        return Decision("fail", reason=f"status {error.status_code} is not retryable")
    if attempt >= policy.max_attempts:
        return Decision("fail", reason=f"gave up after {attempt} attempts")
    if error.retry_after_s is not None and error.retry_after_s >= 0:
        return Decision("retry", min(error.retry_after_s, policy.max_s), "retry-after")
    return Decision("retry", backoff_s(attempt, policy.base_s, policy.max_s, rand()), "backoff")


def outage_delay_s(
    failures: int, draw: float, *, base_s: float = 0.5, max_s: float = 15.0
) -> float:
    """Wait before retrying a backend after `failures` consecutive failures of a loop.

    Processes never give up on their backend (a Redis restart must not need a
    worker restart), so there is no attempt limit: the backoff grows to `max_s`
    and stays there; `draw` spreads replicas that failed together.
    """
    return backoff_s(max(1, failures), base_s, max_s, draw)


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from `retry-after-ms`, else `retry-after` (numeric form only).

    Azure OpenAI sends both on a 429 (AZURE_FACTS.md §1); a negative or
    non-numeric value (e.g. the HTTP-date form of `retry-after`) is ignored.
    """
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            value = float(raw) / scale
        except ValueError:
            continue
        if value >= 0:
            return value
    return None
