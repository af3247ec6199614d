"""The token events that bracket one call to a provisioned deployment: the one builder.

Every call is bracketed by an `admit` (prompt estimate plus `max_tokens` x output weight,
when the call starts) and a `complete` (the actual usage when it ends; zero tokens when it
failed, which takes the admission charge back out). A stream adds an `observe` at its first
byte: the deployment's headers are known then, its usage only at the end.

Whatever the deployment said about itself travels on the event built from its response
(`Signals`, read once in `calls.signals`): the utilisation header, the retry-after of a
429 (`retry_after_ms` marks a 429; 0 when the 429 named no wait), native spillover, and
`x-ratelimit-remaining-tokens` / `-limit-tokens`. The worker and the ingress both build
their events here, so an event means the same whoever recorded it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.calls.signals import Signals
from orchestrator.core.schemas import TokenEvent
from orchestrator.core.tokens import usage_counts

THROTTLED_STATUS = 429


def admit(
    request_id: str,
    deployment: str,
    *,
    prompt_tokens: int,
    max_tokens: int,
    tenant: str,
    now: float,
) -> TokenEvent:
    """The `admit` event of a call about to start."""
    return TokenEvent(
        request_id=request_id,
        deployment=deployment,
        phase="admit",
        timestamp=now,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        tenant=tenant,
    )


def complete(
    request_id: str,
    deployment: str,
    *,
    tenant: str,
    now: float,
    usage: Mapping[str, Any] | None = None,
    max_tokens: int = 0,
    status_code: int | None = None,
    signals: Signals | None = None,
    observed_at: float | None = None,
) -> TokenEvent:
    """The `complete` event of a call that ended: its usage (None: nothing was used).

    `signals` are the response's (None when no response arrived), read at `observed_at`
    (default `now`); `status_code` is the response's status (a 429 sets `retry_after_ms`).
    """
    prompt, completion, cached = usage_counts(dict(usage) if usage is not None else None)
    return TokenEvent(
        request_id=request_id,
        deployment=deployment,
        phase="complete",
        timestamp=now,
        prompt_tokens=prompt,
        max_tokens=max_tokens,
        completion_tokens=completion,
        cached_tokens=cached,
        tenant=tenant,
        **_signal_fields(signals, status_code, now, observed_at),
    )


def observe(
    request_id: str,
    deployment: str,
    *,
    tenant: str,
    now: float,
    signals: Signals,
) -> TokenEvent | None:
    """The `observe` event of a stream's first byte; None when its headers said nothing."""
    fields = _signal_fields(signals, None, now, None)
    if not fields:
        return None
    return TokenEvent(
        request_id=request_id,
        deployment=deployment,
        phase="observe",
        timestamp=now,
        prompt_tokens=0,
        tenant=tenant,
        **fields,
    )


def _signal_fields(
    signals: Signals | None, status_code: int | None, now: float, observed_at: float | None
) -> dict[str, Any]:
    """The event fields `signals` fill; empty when the response said nothing."""
    if signals is None:
        return {}
    fields: dict[str, Any] = {}
    if signals.utilisation is not None:
        fields["utilisation"] = signals.utilisation
        if observed_at is not None:
            fields["utilisation_age_s"] = max(0.0, now - observed_at)
    if status_code == THROTTLED_STATUS:
        fields["retry_after_ms"] = 1000.0 * (signals.retry_after_s or 0.0)
    if signals.spilled:
        fields["spilled"] = True
    if signals.remaining_tokens is not None:
        fields["remaining_tokens"] = signals.remaining_tokens
    if signals.limit_tokens:  # 0 is no limit anyone sends on purpose
        fields["limit_tokens"] = signals.limit_tokens
    return fields
