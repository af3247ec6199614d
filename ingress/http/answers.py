"""The ingress's own answers: the shapes it returns that are not OpenAI's objects.

With `ingress.http.models` (requests and parameters) they are the one definition of the
HTTP contract that `/openapi.json` is generated from (`ingress.http.openapi`).
"""

from __future__ import annotations

from typing import Literal

from openai.types import Batch, FileObject
from pydantic import BaseModel

from orchestrator.core.results import RequestStatus


class QueuedRequestStatus(BaseModel):
    """A low-priority request that has no result yet (the 202 of enqueue and of retrieval)."""

    id: str
    object: Literal["queued_request"] = "queued_request"
    status: RequestStatus
    """`queued` or `in_progress`; the record's last status if its result has expired."""
    reply_key: str


class FileList(BaseModel):
    """A page of files; `has_more`: later pages exist (pass `after=last_id`)."""

    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class BatchList(BaseModel):
    """A page of batches; `has_more`: later pages exist (pass `after=last_id`)."""

    object: Literal["list"] = "list"
    data: list[Batch]
    first_id: str | None
    last_id: str | None
    has_more: bool


class Health(BaseModel):
    """Liveness: the process serves. Redis is not asked (readiness is `/readyz`'s)."""

    status: Literal["ok"]


class Readiness(BaseModel):
    """This ingress can take work: every check "ok" (else 503 `not_ready` naming the rest)."""

    status: Literal["ready"]
    checks: dict[str, str]
