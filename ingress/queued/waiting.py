"""A low-priority call that waits: `Prefer: wait=SECONDS` (RFC 7240) or a configured default.

The request is queued as any low-priority one (it keeps its id, record, reply key and
deadline); the ingress then holds the connection until its result is written
(`queued.completions`, one subscription per process) and answers what a high-priority
call would have answered: the deployment's status and body (the `ChatCompletion` or
`Response` an unchanged SDK parses), `x-ptu-deployment`, and `Preference-Applied:
wait=N`. A failed request answers its error in the OpenAI envelope with the upstream's
status (502 when there was none, 504 when its deadline passed first). When the wait runs
out first the answer is today's 202 with `Location`: nothing is lost, the result is
retrievable there. A client that disconnects leaves the queued request as it is.

How long: the header's `wait` (a `respond-async` beside it is fine), else the tenant's
`wait_s`, else the deployment's `wait_s` (`PTU_TENANTS`, `PTU_DEPLOYMENTS`), else none;
never past the request's deadline nor `MAX_HELD_S`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import structlog
from starlette.responses import JSONResponse, Response

from ingress.http.errors import error_response
from ingress.queued.completions import Completions
from orchestrator.core.deployments import DeploymentConfig
from orchestrator.core.errors import StoreUnavailable
from orchestrator.core.results import ResultStore
from orchestrator.core.schemas import MAX_HELD_S, QueuedRequest, ResultDocument
from orchestrator.tenants.config import Tenancy

log = structlog.get_logger(__name__)

APPLIED_HEADER = "preference-applied"
REQUEST_ID_HEADER = "x-ptu-request-id"


def prefer_wait(values: Iterable[str]) -> float | None:
    """The `wait` preference of the `Prefer` header values, None when absent or malformed
    (RFC 7240: a preference the server cannot read is ignored)."""
    for value in values:
        for preference in value.split(","):
            name, _, raw = preference.split(";", 1)[0].strip().partition("=")
            if name.strip().lower() == "wait":
                seconds = raw.strip().strip('"')
                return float(seconds) if seconds.isdigit() else None
    return None


def answer(doc: ResultDocument, applied_s: int) -> Response:
    """What a high-priority call would have answered for the result `doc`."""
    headers = {
        APPLIED_HEADER: f"wait={applied_s}",
        "x-ptu-deployment": doc.deployment,
        REQUEST_ID_HEADER: doc.id,
    }
    if doc.status == "completed" and doc.response is not None:
        return JSONResponse(doc.response, status_code=doc.status_code or 200, headers=headers)
    error = doc.error or {}
    code = str(error.get("code") or doc.status)
    if doc.status_code is not None and doc.status_code >= 400 and "message" in error:
        return JSONResponse({"error": error}, status_code=doc.status_code, headers=headers)
    status = doc.status_code or (504 if doc.status == "expired" else 502)
    message = str(error.get("message") or f"the request ended {doc.status}")
    return error_response(status, code, message, headers=headers)


class Waiting:
    """Decides how long a low-priority call waits and holds it until its result."""

    def __init__(
        self,
        completions: Completions,
        results: ResultStore,
        tenancy: Tenancy,
        deployments: Iterable[DeploymentConfig],
    ) -> None:
        self.completions = completions
        self._results = results
        self._tenancy = tenancy
        self._defaults: Mapping[str, float | None] = {d.name: d.wait_s for d in deployments}

    def seconds(self, prefer: Iterable[str], tenant: str, deployment: str) -> float:
        """How long to hold a call of `tenant` to `deployment` (0: answer 202 at once)."""
        wait = prefer_wait(prefer)
        if wait is None:
            wait = self._tenancy.config(tenant).wait_s
        if wait is None:
            wait = self._defaults.get(deployment)
        return min(wait or 0.0, MAX_HELD_S)

    async def hold(self, req: QueuedRequest, wait_s: float) -> Response | None:
        """The answer of `req`'s result when it comes within `wait_s` (and before the
        deadline), else None (the caller answers 202)."""
        held = max(0.0, min(wait_s, req.deadline - req.enqueued_at))
        try:
            state = await self.completions.wait(req.id, held, self._results.get)
        except StoreUnavailable as exc:
            # the request is queued: the 202 with its Location loses nothing, an error
            # would make the client send it again
            log.warning("waiting_read_failed", request_id=req.id, error=str(exc))
            return None
        if state is None or state.result is None:
            return None
        return answer(state.result, math.ceil(held))

    def __repr__(self) -> str:
        return f"<Waiting completions={self.completions!r}>"
