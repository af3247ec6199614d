"""Messages that cross process boundaries: queued requests, results, token events."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

ResultStatus = Literal["completed", "failed", "expired"]


def default_reply_key(request_id: str) -> str:
    """The reply key used when the requester names none (DESIGN.md §5)."""
    return f"ptu:reply:{request_id}"


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
    replay_of: str | None = None
    """Id of the dead-lettered request this one replays (`ptu dlq replay`)."""


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
