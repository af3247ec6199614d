"""Messages that cross process boundaries: queued requests, results, token events."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Self, get_args

from pydantic import BaseModel, Field

ResultStatus = Literal["completed", "failed", "expired"]

Priority = Literal["high", "low"]
"""Which path a request takes: `high` is proxied at once, `low` waits for idle PTU capacity."""
PRIORITIES: tuple[Priority, ...] = get_args(Priority)
PRIORITY_HEADER = "x-priority"
"""The client's request header that chooses the priority (DESIGN.md §5)."""
Endpoint = Literal["chat/completions", "responses"]
"""Which API of the deployment a request calls: chat completions or the Responses API."""
ENDPOINTS: tuple[Endpoint, ...] = get_args(Endpoint)
PRIORITY_LABEL_HEADER = "x-ptu-priority"
"""The label a caller puts on its calls to the deployment so the simulator counts them
apart (`/sim/state` per priority); never read by the ingress and never a routing decision."""

MAX_HELD_S = 600.0
"""Longest the ingress holds a waiting low-priority call (`Prefer: wait`, `wait_s`) open."""

MAX_BODY_DEPTH = 64
"""Deepest JSON nesting a request body may have. The worker reads a message with
pydantic-core, which refuses JSON nested deeper than about 200 levels (and cannot
serialise much deeper values at all): the ingress refuses deeper bodies before the
202, with a wide margin for the envelope around the body. Real chat bodies (tool
schemas included) stay far below it."""


def json_depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0, `[]` and `{}` are 1); iterative."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


WorkClass = Literal["low", "batch"]
WORK_CLASSES: tuple[WorkClass, ...] = ("low", "batch")
"""Queued classes in the order a tenant's work is served (`orchestrator.queues.classes`)."""


class QueuedRequest(BaseModel):
    """A low-priority request (chat completion or response) waiting for idle PTU capacity."""

    id: str
    deployment: str
    body: dict[str, Any]
    endpoint: Endpoint = Field(default="chat/completions", exclude_if=lambda v: v == ENDPOINTS[0])
    """The API the worker calls with `body` (absent from the message: chat completions)."""
    tenant: str = "default"
    custom_id: str | None = None
    reply_key: str
    enqueued_at: float
    deadline: float
    batch_id: str | None = None
    replay_of: str | None = None
    """Id of the dead-lettered request this one replays (`ptu dlq replay`)."""
    traceparent: str | None = Field(default=None, exclude_if=lambda v: v is None)
    """W3C trace context of the ingress's enqueue span, so the worker continues its trace
    (`orchestrator.telemetry`); absent while tracing is off."""

    @property
    def work_class(self) -> WorkClass:
        """`batch` for a Batch API line, `low` for every other queued request."""
        return "low" if self.batch_id is None else "batch"


class ResultDocument(BaseModel):
    """The one result of a request, pushed to its reply key (DESIGN.md §5)."""

    id: str
    custom_id: str | None = None
    status: ResultStatus
    status_code: int | None = None
    response: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    deployment: str
    attempts: int = 0
    enqueued_at: float
    completed_at: float
    batch_id: str | None = Field(default=None, exclude_if=lambda v: v is None)
    replay_of: str | None = Field(default=None, exclude_if=lambda v: v is None)
    started_at: float | None = Field(default=None, exclude_if=lambda v: v is None)
    """When the call that produced a completed result started (service time = completed_at
    - started_at; the rest since enqueued_at was waiting)."""
    tenant: str = "default"
    spillover: str | None = Field(default=None, exclude_if=lambda v: v is None)
    """The deployment that served the call instead of `deployment` (Azure's native
    spillover to a standard deployment): its tokens were billed there."""

    @classmethod
    def for_request(
        cls,
        request: QueuedRequest,
        status: ResultStatus,
        *,
        completed_at: float,
        attempts: int,
        status_code: int | None = None,
        response: dict[str, Any] | None = None,
        usage: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> Self:
        """The result of `request`: its ids, deployment and enqueue time, plus the outcome.

        The one constructor the worker and the ingress's in-process batch lines use,
        so both write the same document for the same outcome.
        """
        return cls(
            id=request.id,
            custom_id=request.custom_id,
            status=status,
            status_code=status_code,
            response=response,
            error=error,
            usage=usage,
            deployment=request.deployment,
            attempts=attempts,
            enqueued_at=request.enqueued_at,
            completed_at=completed_at,
            batch_id=request.batch_id,
            replay_of=request.replay_of,
            tenant=request.tenant,
        )


def error_object(
    status_code: int, body: Mapping[str, Any] | None, message: str | None = None
) -> dict[str, Any]:
    """The result's `error` from an upstream error body: its `error` object when it has one.

    Without one the code is the status; `message` fills in a missing message.
    """
    inner = body.get("error") if body is not None else None
    if isinstance(inner, Mapping):
        error = dict(inner)
    elif inner:
        error = {"code": str(status_code), "message": str(inner)}
    else:
        error = {"code": str(status_code)}
    if message is not None:
        error.setdefault("message", message)
    return error


class TokenEvent(BaseModel):
    """Token accounting for one call to a PTU deployment, fed to the estimate.

    `admit` charges prompt tokens plus `max_tokens` x output weight when the call
    starts; `complete` reconciles with the actual completion tokens. A gateway
    that only reports completions (APIM `log-to-eventhub`) sends `complete`
    without a prior `admit`; the estimator then charges the actual tokens once.

    The deployment's own signals travel with the event so the estimate can calibrate
    itself: `utilisation` is the `azure-openai-deployment-utilization` header of the
    response (a fraction), true `utilisation_age_s` before the event was made;
    `retry_after_ms` marks a 429. An `observe` event carries only those (a stream's
    header, known at its first byte) and charges nothing.
    """

    request_id: str
    deployment: str
    phase: Literal["admit", "complete", "observe"]
    timestamp: float
    prompt_tokens: int = Field(ge=0)
    max_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    cached_tokens: int = Field(default=0, ge=0)
    utilisation: float | None = Field(default=None, ge=0, exclude_if=lambda v: v is None)
    utilisation_age_s: float = Field(default=0.0, ge=0, exclude_if=lambda v: v == 0)
    retry_after_ms: float | None = Field(default=None, ge=0, exclude_if=lambda v: v is None)
    spilled: bool = Field(default=False, exclude_if=lambda v: not v)
    """The call was served by a spillover deployment: the PTU was saturated at `timestamp`."""
    remaining_tokens: int | None = Field(default=None, ge=0, exclude_if=lambda v: v is None)
    """`x-ratelimit-remaining-tokens` of the response, where the upstream sends it."""
    limit_tokens: int | None = Field(default=None, gt=0, exclude_if=lambda v: v is None)
    """`x-ratelimit-limit-tokens`, where sent (else the deployment's capacity is the limit)."""
    tenant: str = "default"
