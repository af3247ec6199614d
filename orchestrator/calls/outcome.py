"""How a call or a request ended, said one way by the worker and the ingress.

- `upstream_error`: an error answer (status, body, headers) as the typed error the retry
  decision and the breaker read: 429 → `UpstreamThrottled` (with its retry-after), 408 →
  `UpstreamTimeout`, 401/403/404 → `UpstreamUnreachable` (no retry can change a wrong
  key, a missing role or a deployment that does not exist at this endpoint), anything
  else → `UpstreamError`.
- `breaker_verdict`: what one attempt tells the deployment's circuit breaker (shared in
  Redis by every worker and ingress, so both must say the same): 2xx and the request's own
  4xx are `ok`, 429 `throttled`, 404 and a refused connection `unreachable`, 408, 5xx and
  timeouts `error`; 401/403 `credentials`: the key or token *this process* sent was
  refused, which the breaker keeps to this process (`breaker/shared`).
- `status_label`: the `status` label of `ptu_tenant_requests_total` (`tenants.metrics`).
- `finish_reason`: a chat completion's first choice's, or a response's (Responses API)
  incomplete reason, else its status; `service_tier`: the tier the deployment applied
  (`priority` may be downgraded to `default`), as the answer says.
- `Outcome` + `Outcome.log_access`: the one access line (`ptu.access`) of a finished
  request, high priority (the ingress) or queued (the worker), and of what the ingress
  answers itself (`ingress/http/access`: refusals, 202s).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog

from orchestrator.breaker.machine import Outcome as BreakerOutcome
from orchestrator.calls.attempts import Attempted
from orchestrator.calls.signals import Signals
from orchestrator.core.errors import (
    UpstreamError,
    UpstreamThrottled,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from orchestrator.core.schemas import QueuedRequest, ResultDocument, ResultStatus, error_object
from orchestrator.core.tokens import usage_counts

access_log = structlog.get_logger("ptu.access")

MISCONFIGURED_STATUSES = frozenset({401, 403, 404})
"""Answers no retry can change: wrong key, no access, no such deployment at this endpoint."""
CREDENTIAL_STATUSES = frozenset({401, 403})
"""The upstream refused this process's own credential (clients' keys are never forwarded)."""
QUOTA_EXCEEDED_CODE = "token_quota_exceeded"
NoAnswer = Literal["timeout", "connection"]
"""Why a call got no response: it timed out, or the upstream could not be reached."""


def upstream_error(
    status: int,
    body: dict[str, object] | None,
    signals: Signals | None = None,
) -> UpstreamError:
    """The typed error of an error answer (see the module docstring)."""
    if status == 429:
        retry_after = signals.retry_after_s if signals is not None else None
        return UpstreamThrottled(
            "upstream throttled", status_code=429, body=body, retry_after_s=retry_after,
            signals=signals,
        )  # fmt: skip
    if status == 408:
        return UpstreamTimeout("upstream timed out", status_code=408, body=body, signals=signals)
    if status in MISCONFIGURED_STATUSES:
        inner = body.get("error") if body is not None else None
        code = inner.get("code") if isinstance(inner, dict) else None
        return UpstreamUnreachable(
            f"upstream answered {status}",
            status_code=status,
            body=body,
            cause=f"HTTP {status} {code or ''}".strip(),
            signals=signals,
        )
    return UpstreamError(
        f"upstream answered {status}", status_code=status, body=body, signals=signals
    )


def breaker_verdict(status: int | None, no_answer: NoAnswer | None = None) -> BreakerOutcome:
    """What an attempt that got `status` (or no answer, and why) tells the breaker."""
    if status is None:
        return "unreachable" if no_answer == "connection" else "error"
    if status < 400:
        return "ok"
    if status == 429:
        return "throttled"
    if status in CREDENTIAL_STATUSES:
        return "credentials"
    if status in MISCONFIGURED_STATUSES:
        return "unreachable"
    if status == 408 or status >= 500:
        return "error"
    return "ok"  # the request's own fault: the deployment is fine


def error_verdict(err: UpstreamError) -> BreakerOutcome:
    """`breaker_verdict` of a failed attempt; an unreachable upstream got no answer at all."""
    if err.status_code in CREDENTIAL_STATUSES:
        return "credentials"
    if isinstance(err, UpstreamUnreachable):
        return "unreachable"
    return breaker_verdict(err.status_code)


def status_label(
    status_code: int | None,
    result: ResultStatus | None = None,
    error_code: str | None = None,
) -> str:
    """The `status` label of a finished request (`tenants.metrics.STATUSES`).

    completed: answered 2xx; throttled: 429; rejected: another 4xx (but 408, a timeout);
    failed: 5xx, timeout, no answer or given up; expired: deadline passed; limited: the
    tenant's own quota refused it.
    """
    if error_code == QUOTA_EXCEEDED_CODE:
        return "limited"
    if result == "expired":
        return "expired"
    if status_code is None:
        return "completed" if result == "completed" else "failed"
    if status_code < 300:
        return "completed"
    if status_code == 429:
        return "throttled"
    return "rejected" if status_code < 500 and status_code != 408 else "failed"


def finish_reason(body: Mapping[str, Any] | None) -> str | None:
    """The finish reason of a chat completion or a response (Responses API) body."""
    if body is None:
        return None
    if "choices" not in body and isinstance(body.get("status"), str):
        details = body.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        return reason if isinstance(reason, str) else str(body["status"])
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        reason = choices[0].get("finish_reason")
        return reason if isinstance(reason, str) else None
    return None


def service_tier(body: Mapping[str, Any] | None) -> str | None:
    """The service tier the deployment applied, as a completion or response body says."""
    tier = body.get("service_tier") if body is not None else None
    return tier if isinstance(tier, str) and tier else None


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    """A successful answer (chat completion or response) and what its headers said."""

    body: dict[str, Any]
    status_code: int = 200
    request_id: str | None = None
    signals: Signals = field(default_factory=Signals)
    """What the response's headers said about the deployment (`calls.signals`)."""

    @property
    def utilisation_hint(self) -> float | None:
        """`azure-openai-deployment-utilization` as a fraction, when the service sent it."""
        return self.signals.utilisation

    @property
    def usage(self) -> dict[str, Any] | None:
        """The `usage` object of the completion."""
        usage = self.body.get("usage")
        return usage if isinstance(usage, dict) else None

    @property
    def finish_reason(self) -> str | None:
        """The first choice's finish reason (a response's incomplete reason, else its status)."""
        return finish_reason(self.body)


def settlement(
    request: QueuedRequest, attempted: Attempted[UpstreamResponse], now: float
) -> tuple[ResultDocument, str | None] | None:
    """The result document the attempts' ending writes, and why to dead-letter the request.

    None when the attempts stopped (shutdown): the request is left for redelivery.
    """
    n = attempted.attempts
    answer, err = attempted.answer, attempted.error
    if attempted.ending == "answered" and answer is not None:
        doc = ResultDocument.for_request(
            request, "completed", completed_at=now, attempts=n, status_code=answer.status_code,
            response=answer.body, usage=answer.usage,
        )  # fmt: skip
        doc.started_at = attempted.started_at
        served = answer.signals.served(request.deployment)
        doc.spillover = served if served != request.deployment else None
        return doc, None
    if attempted.ending == "failed" and err is not None:
        error = error_object(err.status_code, err.body, str(err))
        doc = ResultDocument.for_request(
            request, "failed", completed_at=now, attempts=n, status_code=err.status_code,
            error=error,
        )  # fmt: skip
        return doc, attempted.reason
    permanent = err is not None and err.status_code in MISCONFIGURED_STATUSES
    if attempted.ending == "expired" and err is not None and permanent:
        # the deployment answered, and no retry changes that answer: it is the result
        error = error_object(err.status_code, err.body, str(err))
        doc = ResultDocument.for_request(
            request, "failed", completed_at=now, attempts=max(n, 1), status_code=err.status_code,
            error=error,
        )  # fmt: skip
        return doc, f"status {err.status_code} is permanent"
    if attempted.ending == "expired":
        error = {"code": "expired", "message": "the deadline passed before the call"}
        doc = ResultDocument.for_request(
            request, "expired", completed_at=now, attempts=n, status_code=None, error=error
        )
        return doc, "expired"
    return None


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one request ended: what its counters, access line and usage ledger record."""

    request_id: str
    tenant: str
    deployment: str
    priority: str
    status_code: int | None
    latency_s: float
    ttfb_s: float | None = None
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None
    spillover: str | None = None
    """The deployment that answered instead of `deployment`, if any."""
    status: str | None = None
    """The counters' status label; `status_label(status_code, result)` when None."""
    result: ResultStatus | None = None
    """The result document's status, for a request answered with one."""
    batch_id: str | None = None
    service_tier: str | None = None
    """The service tier the deployment applied, when its answer says."""
    error: str | None = None
    """The error code answered (the result document's, or the ingress's own refusal)."""

    @classmethod
    def of_result(cls, doc: ResultDocument, priority: str) -> Outcome:
        """The outcome of a request answered with a result document (queued, batch lines)."""
        error_code = doc.error.get("code") if doc.error else None
        return cls(
            request_id=doc.id,
            tenant=doc.tenant,
            deployment=doc.deployment or "",
            priority=priority,
            status_code=doc.status_code,
            latency_s=doc.completed_at - doc.enqueued_at,
            usage=doc.usage,
            finish_reason=finish_reason(doc.response),
            status=status_label(doc.status_code, doc.status, _text(error_code)),
            result=doc.status,
            batch_id=doc.batch_id,
            spillover=doc.spillover,
            service_tier=service_tier(doc.response),
            error=_text(error_code),
        )

    @property
    def label(self) -> str:
        """The `status` label of the request counters."""
        return self.status or status_label(self.status_code, self.result)

    @property
    def served_by(self) -> str:
        """The deployment that answered (the spillover target, else the one asked)."""
        return self.spillover or self.deployment

    def log_access(self) -> None:
        """Write the request's access line (`ptu.access`, event `access`)."""
        prompt, completion, cached = usage_counts(self.usage)
        access_log.info(
            "access",
            request_id=self.request_id,
            tenant=self.tenant,
            deployment=self.deployment,
            priority=self.priority,
            status=self.status_code,
            result=self.result,
            latency_ms=round(self.latency_s * 1000, 1),
            ttfb_ms=None if self.ttfb_s is None else round(self.ttfb_s * 1000, 1),
            prompt_tokens=prompt,
            cached_tokens=cached,
            completion_tokens=completion,
            finish_reason=self.finish_reason,
            spillover=self.spillover,
            service_tier=self.service_tier,
            batch_id=self.batch_id,
            error=self.error,
        )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
