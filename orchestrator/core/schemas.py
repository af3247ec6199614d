"""Messages that cross process boundaries: queued requests, results, token events."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from orchestrator.core import keys

ResultStatus = Literal["completed", "failed", "expired"]

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


def default_reply_key(request_id: str) -> str:
    """The reply key used when the requester names none (DESIGN.md §5)."""
    return keys.default_reply(request_id)


class QueuedRequest(BaseModel):
    """A low-priority chat completion waiting for idle PTU capacity."""

    id: str
    deployment: str
    body: dict[str, Any]
    tenant: str = "default"
    custom_id: str | None = None
    reply_key: str
    enqueued_at: float
    deadline: float
    batch_id: str | None = None


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


class TokenEvent(BaseModel):
    """Token accounting for one call to a PTU deployment, fed to the estimate.

    `admit` charges prompt tokens plus `max_tokens` x output weight when the call
    starts; `complete` reconciles with the actual completion tokens. A gateway
    that only reports completions (APIM `log-to-eventhub`) sends `complete`
    without a prior `admit`; the estimator then charges the actual tokens once.
    """

    request_id: str
    deployment: str
    phase: Literal["admit", "complete"]
    timestamp: float
    prompt_tokens: int = Field(ge=0)
    max_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    cached_tokens: int = Field(default=0, ge=0)
